r"""The density of a Pyro model on data, by importance sampling with its guide:

    log p̂(x_n) = log (1/S) Σ_s w_s,    w_s = p(x_n, z_s) / q(z_s | x_n),    z_s ~ q(z | x_n),

with its Monte Carlo standard error and effective sample size, the IWAE bounds
L_K(x_n) = E[log (1/K) Σ_k w_k] ≤ log p(x_n) (L_1 the ELBO) from the same draws, and the
active latent units, Cov_x(E_q[z_u | x]) > 10⁻² (Burda et al. 2015).

The functions take a Pyro model and guide the way :class:`pyro.infer.Importance` does,
``log_likelihood(model, guide, x, *args)``, or a VAE for its own pair,
``log_likelihood(vae, x, *args)`` (:mod:`pyro_vae.eval.calls`). Model and guide are called
as ``model(x, *args)`` and ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode.
"""

import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from .. import _compat
from ..objectives import IWAE_ELBO
from .calls import batch_args, model_and_guide, split_args
from .common import MeanStderr, check_int


def importance_sampling(
    model,
    *args,
    num_samples=5000,
    ks=(),
    batch_size=100,
    chunk_size=100,
    max_plate_nesting=1,
    progress=False,
    traced=False,
):
    r"""Importance-sampling estimates for every data point x_n, from S = ``num_samples``
    draws z_1..z_S ~ q(z | x_n) of the guide and their log weights

        log w_s = log p(x_n, z_s) − log q(z_s | x_n)

    computed from Pyro traces (:meth:`~pyro_vae.objectives.IWAE_ELBO.log_weights`: the
    guide traced, the model replayed against it, site log-densities summed per data
    point inside the data plate, the samples vectorized by a particle plate).

    ``importance_sampling(model, guide, x, *args, ...)``, or ``(vae, x, *args, ...)`` (:mod:`~pyro_vae.eval.calls`).

    The S samples are drawn ``chunk_size`` at a time for ``batch_size`` data points at a
    time and reduced on the fly (running log-sum-exp), so memory stays of order
    ``chunk_size × batch_size × x_dim`` whatever S and N.

    :param model: a Pyro model, then its guide; or a VAE-like object alone.
    :param args: ``x``, data ``(N, x_dim)``, then further model arguments (e.g. labels c
        of a conditional VAE); tensors whose first dimension is N are batched with x.
    :param int num_samples: S.
    :param ks: the K of the IWAE bounds L_K to estimate; each must divide S.
    :param int max_plate_nesting: plates of the model and guide (1: the data plate).
    :param bool traced: compute the log weights of each chunk shape from one traced graph,
        compiled by inductor and replayed (:class:`~pyro_vae.ops.compile.TracedFunction`:
        Pyro's traces run once per shape, the draws still come from torch's generator);
        the same values up to float rounding, seconds of compilation per shape. For a
        model and guide whose parameters live in modules and whose Python depends on the
        data's shapes only.
    :returns: a dict of ``(N,)`` float64 CPU tensors:

        - ``log_px``: log p̂(x_n) = log (1/S) Σ_s w_s, the estimate of log p(x_n) (it is
          L̂_S, a lower bound in expectation, with bias ≈ −Var(w)/(2 S E[w]²));
        - ``log_px_stderr``: its Monte Carlo standard error by the delta method,
          sqrt(Var̂(w) / S) / mean(w), computed as sqrt((S Σw² / (Σw)² − 1) / (S − 1));
        - ``ess``: the effective sample size (Σ_s w_s)² / Σ_s w_s²;
        - ``elbo``, ``elbo_stderr``: the ELBO L_1 = E_q[log w], estimated by the mean of
          the S log weights, and its standard error;
        - ``iwae_K``, ``iwae_K_stderr`` for each K in ``ks``: L_K = E[log (1/K) Σ_k w_k],
          estimated by the mean over the S/K disjoint groups of K samples.
    """
    pair, rest = model_and_guide("importance_sampling", model, args)
    x, args = split_args("importance_sampling", rest)
    S = check_int("num_samples (K)", num_samples)
    check_int("batch_size", batch_size)
    chunk = check_int("chunk_size", chunk_size)
    ks = tuple(check_int("K of an IWAE bound", k) for k in ks)
    for k in ks:
        if S % k:
            raise ValueError(
                f"num_samples={S} is not a multiple of K={k}: L_K is estimated from the "
                f"S/K disjoint groups of K of the S samples"
            )
    lcm = math.lcm(*ks) if ks else 1
    if chunk % lcm:  # every chunk must hold whole groups of every K
        chunk = max(lcm, chunk // lcm * lcm)
    x, args = pair.prepare(x, args)
    n = x.shape[0]
    objectives = {}
    out = {
        key: torch.empty(n, dtype=torch.float64) for key in ("log_px", "log_px_stderr", "ess", "elbo", "elbo_stderr")
    }
    for k in ks:
        out[f"iwae_{k}"] = torch.empty(n, dtype=torch.float64)
        out[f"iwae_{k}_stderr"] = torch.empty(n, dtype=torch.float64)
    with pair.evaluating(), tqdm(total=n, desc=f"log p(x), K={S}", unit="x", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            xb, ab = x[start:stop], batch_args(args, n, start, stop)
            b = stop - start
            zeros = torch.zeros(b, dtype=torch.float64, device=x.device)
            lse1, lse2 = zeros - math.inf, zeros - math.inf
            log_w_mean = MeanStderr()  # the ELBO: the mean of the S log weights
            groups = {k: MeanStderr() for k in ks}  # L_K: the mean over the S/K groups
            done = 0
            while done < S:
                c = min(chunk, S - done)
                if c not in objectives:
                    objectives[c] = _log_weights(pair, IWAE_ELBO(c, max_plate_nesting=max_plate_nesting), traced)
                try:
                    log_w = objectives[c](xb, *ab)
                except (RuntimeError, ValueError) as e:
                    if isinstance(e, _compat.UnsupportedVersionError) or (
                        isinstance(e, ValueError) and not any(k in str(e) for k in ("Shape mismatch", "broadcastable"))
                    ):
                        raise
                    first = " ".join(str(e).strip().splitlines()[:2])
                    raise ValueError(
                        f"importance sampling runs model and guide on {stop - start} data points at a time "
                        f"(batch_size={batch_size}) with the samples in a vectorized particle plate at dim "
                        f"{-(max_plate_nesting + 1)}: the model and guide must broadcast over that leading sample "
                        "dimension, and a guide made for a fixed number of points (an autoguide) needs batch_size "
                        f"equal to it; the error was: {first}"
                    ) from e
                lw = log_w.double()
                lse1 = torch.logaddexp(lse1, torch.logsumexp(lw, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
                log_w_mean.add(lw)
                for k, acc in groups.items():
                    acc.add(torch.logsumexp(lw.reshape(c // k, k, b), 1) - math.log(k))
                done += c
                bar.update(b * c / S)
            sl = slice(start, stop)
            out["log_px"][sl] = (lse1 - math.log(S)).cpu()
            rel_var = (S * torch.exp(lse2 - 2 * lse1) - 1).clamp(min=0)
            out["log_px_stderr"][sl] = (rel_var / (S - 1)).sqrt().cpu() if S > 1 else float("nan")
            out["ess"][sl] = torch.exp(2 * lse1 - lse2).cpu()
            for key, acc in [("elbo", log_w_mean)] + [(f"iwae_{k}", acc) for k, acc in groups.items()]:
                mean, stderr = acc.result()
                out[key][sl], out[key + "_stderr"][sl] = mean.cpu(), stderr.cpu()
    return out


def _log_weights(pair, objective, traced):
    """``f(x, *args) -> log_w`` ``(K, B)`` of ``objective`` (an :class:`~pyro_vae.objectives.IWAE_ELBO`
    of K particles) for the pair, traced and compiled if ``traced``."""

    def log_weights(x, *args):
        return objective.log_weights(pair.model, pair.guide, x, *args)[0]

    if not traced:
        return log_weights
    if not pair.modules:
        raise ValueError(
            "traced=True traces the parameters of the modules behind model and guide, and these "
            "are plain functions; evaluate them without traced"
        )
    from ..ops.compile import TracedFunction

    return TracedFunction(pair.modules, log_weights)


def log_likelihood(
    model, *args, num_samples=5000, batch_size=100, chunk_size=100, return_stderr=False, progress=False, traced=False
):
    r"""Importance-sampled log p(x_n | args) per data point (Burda et al. 2015):

        log p̂(x_n) = log (1/K) Σ_{k=1..K} p(x_n, z_k) / q(z_k | x_n),  z_k ~ q(z | x_n),

    K = ``num_samples`` (5000 is the usual choice for reporting a VAE's NLL = −log p̂(x)),
    q the guide given. Unbiased for p(x_n), so its log is a lower bound in expectation;
    exact for every K when q(z | x_n) is the true posterior p(z | x_n) (then every weight
    equals p(x_n)). Vectorized over samples with a particle plate, computed in chunks of
    ``chunk_size`` samples for ``batch_size`` data points at a time (see
    :func:`importance_sampling`).

    ``log_likelihood(model, guide, x, *args, ...)``, or ``(vae, x, *args, ...)`` (:mod:`~pyro_vae.eval.calls`)::

        log_likelihood(model, guide, x, num_samples=5000)   # any Pyro model and guide
        log_likelihood(vae, x, num_samples=5000)            # = (vae.model, vae.guide)

    :param bool traced: replay the log weights from traced, compiled graphs
        (:func:`importance_sampling`).
    :returns: ``(N,)`` float64 CPU tensor; with ``return_stderr`` also the per-point Monte
        Carlo standard errors (delta method), ``(log_px, stderr)``.
    """
    pair, rest = model_and_guide("log_likelihood", model, args)
    stats = importance_sampling(
        pair,
        *rest,
        num_samples=num_samples,
        batch_size=batch_size,
        chunk_size=chunk_size,
        progress=progress,
        traced=traced,
    )
    return (stats["log_px"], stats["log_px_stderr"]) if return_stderr else stats["log_px"]


def iwae_bound(model, *args, K, num_samples=None, batch_size=100, chunk_size=100, return_stderr=False, progress=False):
    r"""The IWAE bound per data point,

        L_K(x_n) = E_{z_1..z_K ~ q(z|x_n)} [ log (1/K) Σ_k p(x_n, z_k) / q(z_k | x_n) ] ≤ log p(x_n),

    estimated by the mean of ``num_samples / K`` independent draws of the K-sample
    estimator (default: one draw, ``num_samples = K``). L_1 is the ELBO.

    ``iwae_bound(model, guide, x, *args, ...)``, or ``(vae, x, *args, ...)`` (:mod:`~pyro_vae.eval.calls`).

    :returns: ``(N,)`` float64 CPU tensor (and the standard errors over the draws, NaN
        for a single draw, if ``return_stderr``).
    """
    pair, rest = model_and_guide("iwae_bound", model, args)
    K = check_int("K", K)
    num_samples = K if num_samples is None else num_samples
    stats = importance_sampling(
        pair, *rest, num_samples=num_samples, ks=(K,), batch_size=batch_size, chunk_size=chunk_size, progress=progress
    )
    est, se = stats[f"iwae_{K}"], stats[f"iwae_{K}_stderr"]
    return (est, se) if return_stderr else est


def elbo(model, *args, num_samples=100, batch_size=100, chunk_size=100, return_stderr=False):
    r"""The ELBO per data point,

        L_1(x_n) = E_{z ~ q(z|x_n)} [ log p(x_n, z) − log q(z | x_n) ] = log p(x_n) − KL(q ‖ p(z|x_n)),

    estimated by the mean over ``num_samples`` draws z ~ q(z | x_n) of the guide given.

    ``elbo(model, guide, x, *args, ...)``, or ``(vae, x, *args, ...)`` (:mod:`~pyro_vae.eval.calls`).

    :returns: ``(N,)`` float64 CPU tensor (and standard errors if ``return_stderr``).
    """
    pair, rest = model_and_guide("elbo", model, args)
    stats = importance_sampling(pair, *rest, num_samples=num_samples, batch_size=batch_size, chunk_size=chunk_size)
    return (stats["elbo"], stats["elbo_stderr"]) if return_stderr else stats["elbo"]


def posterior_means(model, *args, batch_size=1000, num_samples=1000, max_plate_nesting=1):
    r"""E_q[z | x_n] for every latent sample site of the guide, flattened and concatenated:
    ``(N, U)``, U the total number of latent units.

    The mean comes from the guide site's distribution (``fn.mean``, e.g. μ(x) of a
    Gaussian guide); where a distribution has no closed-form mean (a normalizing flow),
    or the site is a ``Delta`` that a joint auxiliary draw feeds (Pyro's pattern in
    ``AutoContinuous`` guides and :class:`~pyro_vae.amortized.AmortizedGuide`: its
    ``mean`` is the one value drawn), it is the average of ``num_samples`` draws, whose
    Monte Carlo noise adds about E[Var_q(z_u)] / num_samples to each unit's variance
    across data points. Auxiliary sites are not latent units of the model and are skipped.

    ``posterior_means(model, guide, x, *args, ...)``, or ``(vae, x, *args, ...)`` (:mod:`~pyro_vae.eval.calls`).

    Only the guide is run; the model is there for the call form."""
    pair, rest = model_and_guide("posterior_means", model, args)
    x, args = split_args("posterior_means", rest)
    x, args = pair.prepare(x, args)
    guide = pair.guide
    n = x.shape[0]
    rows = []
    with pair.evaluating():
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            xb, ab = x[start:stop], batch_args(args, n, start, stop)
            trace = prune_subsample_sites(poutine.trace(guide).get_trace(xb, *ab))
            means, sampled = [], None
            auxiliary = any(
                site["type"] == "sample" and site["infer"].get("is_auxiliary") for site in trace.nodes.values()
            )
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site["is_observed"] or site["infer"].get("is_auxiliary"):
                    continue
                try:
                    if auxiliary and isinstance(site["fn"], dist.Delta):
                        raise NotImplementedError  # a draw, not a mean
                    mean = site["fn"].mean
                except NotImplementedError:
                    if sampled is None:
                        particles = pyro.plate("_means", num_samples, dim=-(max_plate_nesting + 1))
                        sampled = poutine.trace(particles(guide)).get_trace(xb, *ab)
                    mean = sampled.nodes[name]["value"].mean(0)
                means.append(mean.reshape(stop - start, -1))
            if not means:
                raise ValueError("the guide has no latent sample sites")
            rows.append(torch.cat(means, -1).cpu())
    return torch.cat(rows)


def active_units(model, *args, threshold=1e-2, batch_size=1000, return_variances=False):
    r"""Number of active latent units (Burda et al. 2015, §5.2): unit u is active when

        A_u = Cov_x( E_{q(z|x)}[z_u] ) > threshold   (10⁻² in the paper),

    the variance over the data points x_n of the posterior mean of z_u under the guide
    (:func:`posterior_means`). An inactive unit's posterior ignores x (it has collapsed
    to the prior).

    ``active_units(model, guide, x, *args, ...)``, or ``(vae, x, *args, ...)`` (:mod:`~pyro_vae.eval.calls`).

    :param threshold: keyword only, because ``*args`` are model arguments.
    :returns: the count (int); with ``return_variances`` also A, ``(U,)``.
    """
    pair, rest = model_and_guide("active_units", model, args)
    if not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
    means = posterior_means(pair, *rest, batch_size=batch_size)
    if means.shape[0] < 2:
        raise ValueError("active units need at least two data points (a variance across x)")
    variances = means.double().var(0)
    count = int((variances > threshold).sum())
    return (count, variances) if return_variances else count


def likelihood_report(
    model, *args, num_samples=5000, ks=(5, 50), batch_size=100, chunk_size=100, progress=False, traced=False
):
    r"""Everything a paper reports about a VAE's density on a data set, in nats per data
    point, as a dict of plain numbers (JSON-ready):

    - ``nll``: −(1/N) Σ_n log p̂(x_n) with S = ``num_samples`` importance samples;
      ``nll_stderr``: its standard error over the data points (std/√N), and
      ``nll_mc_stderr``: the Monte Carlo part alone, sqrt(Σ_n se_n²)/N;
    - ``neg_elbo`` (−L_1) and ``neg_iwae[K]`` (−L_K for each K in ``ks``), each with
      ``..._stderr`` over the data points, all from the same S samples;
    - ``active_units`` (threshold 10⁻²) and the number of latent units;
    - ``min_ess``, ``median_ess``: effective sample sizes (diagnostics of the weights);
    - ``n``, ``num_samples``, ``seconds``.

    ``likelihood_report(model, guide, x, *args, ...)``, or ``(vae, x, *args, ...)``
    (:mod:`~pyro_vae.eval.calls`). ``traced``: as for :func:`importance_sampling`.
    """
    pair, rest = model_and_guide("likelihood_report", model, args)
    x = split_args("likelihood_report", rest)[0]
    ks = tuple(k for k in ks if k != 1)
    t0 = time.perf_counter()
    stats = importance_sampling(
        pair,
        *rest,
        num_samples=num_samples,
        ks=ks,
        batch_size=batch_size,
        chunk_size=chunk_size,
        progress=progress,
        traced=traced,
    )
    seconds = time.perf_counter() - t0
    au, variances = active_units(pair, *rest, return_variances=True)
    nll, nll_se = MeanStderr(-stats["log_px"]).floats()
    neg_elbo, neg_elbo_se = MeanStderr(-stats["elbo"]).floats()
    report = dict(
        n=int(x.shape[0]),
        num_samples=int(num_samples),
        nll=nll,
        nll_stderr=nll_se,
        nll_mc_stderr=stats["log_px_stderr"].pow(2).sum().sqrt().item() / x.shape[0],
        neg_elbo=neg_elbo,
        neg_elbo_stderr=neg_elbo_se,
        neg_iwae={},
        neg_iwae_stderr={},
        active_units=au,
        latent_units=int(variances.numel()),
        min_ess=stats["ess"].min().item(),
        median_ess=stats["ess"].median().item(),
        seconds=seconds,
    )
    for k in ks:
        report["neg_iwae"][str(k)], report["neg_iwae_stderr"][str(k)] = MeanStderr(-stats[f"iwae_{k}"]).floats()
    return report
