"""Evaluation of trained models: likelihood estimates, latent-space measures, and an
independent classifier for judging generated images.

The likelihood estimates take a Pyro model and guide the way
:class:`pyro.infer.Importance` does, ``log_likelihood(model, guide, x, *args)``; an object
with ``.model`` and ``.guide`` methods (a :class:`~pyro_vae.models.VAE`) is a shortcut for
its own pair, ``log_likelihood(vae, x, *args)`` (see :func:`model_and_guide`).
"""


# ======================================================================================
# Log-likelihood by importance sampling, IWAE bounds, active units
# ======================================================================================
import math
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import nn
from tqdm.auto import tqdm

from .models import Autoencoder
from .objectives import IWAE_ELBO
from .training import private_param_store


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _model_device(model):
    if isinstance(model, torch.nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
    return torch.device("cpu")


def _is_model_object(obj):
    """A VAE-like object: anything with callable ``.model`` and ``.guide`` attributes."""
    return callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None))


def _owner_module(fn):
    """The :class:`torch.nn.Module` behind a Pyro callable: the module itself (an autoguide,
    a ``PyroModule``), or the object of a bound method (``vae.model``); else None."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class ModelAndGuide:
    """A Pyro model and guide to evaluate, as :func:`model_and_guide` resolved them.

    :ivar model: the model callable, ``model(x, *args)``.
    :ivar guide: the guide callable, ``guide(x, *args)`` (None where only a model is needed).
    :ivar source: the VAE-like object they came from, or None for plain callables.
    """

    def __init__(self, model, guide=None, source=None):
        self.model, self.guide, self.source = model, guide, source
        owners = [source] if isinstance(source, nn.Module) else []
        owners += [m for m in map(_owner_module, (model, guide)) if m is not None]
        self.modules = []  # the modules whose train/eval mode and parameters evaluation touches
        for m in owners:
            if not any(_contains(s, m) for s in self.modules):
                self.modules.append(m)

    def prepare(self, x, args):
        """Check a batch ``x`` ``(N, x_dim)`` and the model arguments after it; return them on
        the evaluation device: the object's device (after its ``likelihood.check(x)``) when a
        VAE-like object was given, else x's own device (args are moved to it)."""
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a tensor of shape (N, x_dim), got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must be a batch of data points of shape (N, x_dim), got shape {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            raise ValueError("x holds no data points (N = 0)")
        for i, a in enumerate(args):
            if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] != n:
                raise ValueError(f"model argument {i + 1} after x has {a.shape[0]} rows, but x has {n} data points")
        if self.source is not None:
            check = getattr(getattr(self.source, "likelihood", None), "check", None)
            if check is not None:
                check(x)
            device = _model_device(self.source)
        else:
            device = x.device
        return x.to(device), tuple(a.to(device) if torch.is_tensor(a) else a for a in args)

    @contextmanager
    def evaluating(self, grad=False, freeze=False):
        """Evaluate the pair as fixed densities: every module behind it (the VAE object, the
        module of a bound method, a guide module) in eval mode, without gradients unless
        ``grad`` (NUTS differentiates with respect to z), its parameters frozen if ``freeze``;
        all restored afterwards, submodule by submodule.

        A VAE object is evaluated in a private param store (its parameters are its own);
        plain callables in the current store, as :class:`pyro.infer.Importance` does, so a
        ``pyro.param`` that a user's model or guide reads has its trained value."""
        modes = [(m, m.training) for owner in self.modules for m in owner.modules()]
        flags = [(p, p.requires_grad) for owner in self.modules for p in owner.parameters()] if freeze else []
        try:
            for owner in self.modules:
                owner.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            with ExitStack() as stack:
                stack.enter_context(private_param_store() if self.source is not None else nullcontext())
                if not grad:
                    stack.enter_context(torch.no_grad())
                yield self
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, mode in modes:
                m.training = mode


def _contains(outer, inner):
    """Whether module ``inner`` is ``outer`` or one of its submodules."""
    return any(m is inner for m in outer.modules())


def model_and_guide(fn, model, rest, need_guide=True):
    r"""Resolve the two call forms of the evaluation functions (one place for all of them):

    - ``fn(model, guide, x, *args, ...)``: Pyro callables, taken as
      :class:`pyro.infer.Importance` takes them (functions, methods such as ``vae.model``,
      autoguides); the guide passed is the guide used;
    - ``fn(vae, x, *args, ...)``: an object with callable ``.model`` and ``.guide``
      attributes (a :class:`~pyro_vae.models.VAE`, a :class:`~pyro_vae.amortized.ModelGuide`)
      stands for ``(vae.model, vae.guide)``, and brings its device, eval mode and
      ``likelihood.check(x)``.

    With ``need_guide=False`` (NUTS, log p(x, z)) the forms are ``fn(model, x, ...)`` and
    ``fn(vae, x, ...)``.

    :param str fn: the public function's name, for errors.
    :param model: the first positional argument.
    :param tuple rest: the positional arguments after it.
    :returns: ``(pair, rest)``: a :class:`ModelAndGuide` and the arguments after the
        model (and guide), i.e. ``(x, *args)``.
    """
    if isinstance(model, ModelAndGuide):
        return model, tuple(rest)
    rest = tuple(rest)
    if _is_model_object(model):
        if need_guide and rest and callable(rest[0]) and not torch.is_tensor(rest[0]):
            raise TypeError(f"{fn}: got a {type(model).__name__} (which brings its own guide) and then another "
                            f"guide; to evaluate with your guide pass the model callable: "
                            f"{fn}({type(model).__name__.lower()}.model, guide, x, ...)")
        return ModelAndGuide(model.model, model.guide if need_guide else None, source=model), rest
    if not callable(model) or torch.is_tensor(model):
        form = "(model, guide, x, ...)" if need_guide else "(model, x, ...)"
        raise TypeError(f"{fn}{form} takes a Pyro model callable, or an object with .model and .guide methods "
                        f"such as a VAE, got {type(model).__name__}")
    if not need_guide:
        return ModelAndGuide(model), rest
    if not rest or not callable(rest[0]) or torch.is_tensor(rest[0]):
        got = "nothing" if not rest else type(rest[0]).__name__
        raise TypeError(f"{fn}(model, guide, x, ...): the argument after the model must be the guide, a Pyro "
                        f"callable, got {got}; to use a VAE's own guide pass the VAE: {fn}(vae, x, ...)")
    return ModelAndGuide(model, rest[0]), rest[1:]


def _split_x(fn, rest):
    if not rest:
        raise TypeError(f"{fn}: the data x is missing (a tensor of shape (N, x_dim) after the model and guide)")
    return rest[0], tuple(rest[1:])


def _batch_args(args, n, start, stop):
    return tuple(a[start:stop] if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == n else a for a in args)


def _stderr(sum_, sum_sq, count):
    """Standard error of a mean from running sums: sqrt(s² / n), s² the unbiased variance."""
    if count < 2:
        return torch.full_like(sum_, float("nan"))
    mean = sum_ / count
    var = ((sum_sq - count * mean ** 2) / (count - 1)).clamp(min=0)
    return (var / count).sqrt()


def importance_sampling(model, *args, num_samples=5000, ks=(), batch_size=100, chunk_size=100,
                        max_plate_nesting=1, progress=False):
    r"""Importance-sampling estimates for every data point x_n, from S = ``num_samples``
    draws z_1..z_S ~ q(z | x_n) of the guide and their log weights

        log w_s = log p(x_n, z_s) − log q(z_s | x_n)

    computed from Pyro traces (:meth:`~pyro_vae.objectives.IWAE_ELBO.log_weights`: the
    guide traced, the model replayed against it, site log-densities summed per data
    point inside the data plate, the samples vectorized by a particle plate).

    Two call forms (:func:`model_and_guide`): ``importance_sampling(model, guide, x, *args, ...)`` with
    Pyro callables, as :class:`pyro.infer.Importance` takes them (the guide passed is the
    guide used), or ``importance_sampling(vae, x, *args, ...)`` for a VAE's own pair
    ``(vae.model, vae.guide)``. Model and guide are called as ``model(x, *args)`` and
    ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode.

    The S samples are drawn ``chunk_size`` at a time for ``batch_size`` data points at a
    time and reduced on the fly (running log-sum-exp), so memory stays of order
    ``chunk_size × batch_size × x_dim`` whatever S and N.

    :param model: a Pyro model, then its guide; or a VAE-like object alone.
    :param args: ``x``, data ``(N, x_dim)``, then further model arguments (e.g. labels c
        of a conditional VAE); tensors whose first dimension is N are batched with x.
    :param int num_samples: S.
    :param ks: the K of the IWAE bounds L_K to estimate; each must divide S.
    :param int max_plate_nesting: plates of the model and guide (1: the data plate).
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
    x, args = _split_x("importance_sampling", rest)
    S = _positive_int("num_samples (K)", num_samples)
    _positive_int("batch_size", batch_size)
    chunk = _positive_int("chunk_size", chunk_size)
    ks = tuple(_positive_int("K of an IWAE bound", k) for k in ks)
    for k in ks:
        if S % k:
            raise ValueError(f"num_samples={S} is not a multiple of K={k}: L_K is estimated from the "
                             f"S/K disjoint groups of K of the S samples")
    lcm = math.lcm(*ks) if ks else 1
    if chunk % lcm:  # every chunk must hold whole groups of every K
        chunk = max(lcm, chunk // lcm * lcm)
    x, args = pair.prepare(x, args)
    n = x.shape[0]
    objectives = {}
    out = {key: torch.empty(n, dtype=torch.float64) for key in ("log_px", "log_px_stderr", "ess", "elbo",
                                                                "elbo_stderr")}
    for k in ks:
        out[f"iwae_{k}"] = torch.empty(n, dtype=torch.float64)
        out[f"iwae_{k}_stderr"] = torch.empty(n, dtype=torch.float64)
    with pair.evaluating(), tqdm(total=n, desc=f"log p(x), K={S}", unit="x", disable=not progress,
                                 leave=False) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            xb, ab = x[start:stop], _batch_args(args, n, start, stop)
            b = stop - start
            zeros = torch.zeros(b, dtype=torch.float64, device=x.device)
            lse1, lse2 = zeros - math.inf, zeros - math.inf
            sum_lw, sum_lw2 = zeros.clone(), zeros.clone()
            groups = {k: [zeros.clone(), zeros.clone()] for k in ks}
            done = 0
            while done < S:
                c = min(chunk, S - done)
                if c not in objectives:
                    objectives[c] = IWAE_ELBO(c, max_plate_nesting=max_plate_nesting)
                try:
                    log_w, _, _ = objectives[c].log_weights(pair.model, pair.guide, xb, *ab)
                except (RuntimeError, ValueError) as e:
                    if isinstance(e, ValueError) and not any(k in str(e) for k in ("Shape mismatch", "broadcastable")):
                        raise
                    first = " ".join(str(e).strip().splitlines()[:2])
                    raise ValueError(
                        f"importance sampling runs model and guide on {stop - start} data points at a time "
                        f"(batch_size={batch_size}) with the samples in a vectorized particle plate at dim "
                        f"{-(max_plate_nesting + 1)}: the model and guide must broadcast over that leading sample "
                        "dimension, and a guide made for a fixed number of points (an autoguide) needs batch_size "
                        f"equal to it; the error was: {first}") from e
                lw = log_w.double()
                lse1 = torch.logaddexp(lse1, torch.logsumexp(lw, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
                sum_lw += lw.sum(0)
                sum_lw2 += lw.pow(2).sum(0)
                for k, acc in groups.items():
                    lk = torch.logsumexp(lw.reshape(c // k, k, b), 1) - math.log(k)
                    acc[0] += lk.sum(0)
                    acc[1] += lk.pow(2).sum(0)
                done += c
                bar.update(b * c / S)
            sl = slice(start, stop)
            out["log_px"][sl] = (lse1 - math.log(S)).cpu()
            rel_var = (S * torch.exp(lse2 - 2 * lse1) - 1).clamp(min=0)
            out["log_px_stderr"][sl] = (rel_var / (S - 1)).sqrt().cpu() if S > 1 else float("nan")
            out["ess"][sl] = torch.exp(2 * lse1 - lse2).cpu()
            out["elbo"][sl] = (sum_lw / S).cpu()
            out["elbo_stderr"][sl] = _stderr(sum_lw, sum_lw2, S).cpu()
            for k, (s1, s2) in groups.items():
                out[f"iwae_{k}"][sl] = (s1 / (S // k)).cpu()
                out[f"iwae_{k}_stderr"][sl] = _stderr(s1, s2, S // k).cpu()
    return out


def log_likelihood(model, *args, num_samples=5000, batch_size=100, chunk_size=100, return_stderr=False,
                   progress=False):
    r"""Importance-sampled log p(x_n | args) per data point (Burda et al. 2015):

        log p̂(x_n) = log (1/K) Σ_{k=1..K} p(x_n, z_k) / q(z_k | x_n),  z_k ~ q(z | x_n),

    K = ``num_samples`` (5000 is the usual choice for reporting a VAE's NLL = −log p̂(x)),
    q the guide given. Unbiased for p(x_n), so its log is a lower bound in expectation;
    exact for every K when q(z | x_n) is the true posterior p(z | x_n) (then every weight
    equals p(x_n)). Vectorized over samples with a particle plate, computed in chunks of
    ``chunk_size`` samples for ``batch_size`` data points at a time (see
    :func:`importance_sampling`).

    Two call forms (:func:`model_and_guide`): ``log_likelihood(model, guide, x, *args, ...)`` with
    Pyro callables, as :class:`pyro.infer.Importance` takes them (the guide passed is the
    guide used), or ``log_likelihood(vae, x, *args, ...)`` for a VAE's own pair
    ``(vae.model, vae.guide)``. Model and guide are called as ``model(x, *args)`` and
    ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode::

        log_likelihood(model, guide, x, num_samples=5000)   # any Pyro model and guide
        log_likelihood(vae, x, num_samples=5000)            # = (vae.model, vae.guide)

    :returns: ``(N,)`` float64 CPU tensor; with ``return_stderr`` also the per-point Monte
        Carlo standard errors (delta method), ``(log_px, stderr)``.
    """
    pair, rest = model_and_guide("log_likelihood", model, args)
    stats = importance_sampling(pair, *rest, num_samples=num_samples, batch_size=batch_size,
                                chunk_size=chunk_size, progress=progress)
    return (stats["log_px"], stats["log_px_stderr"]) if return_stderr else stats["log_px"]


def iwae_bound(model, *args, K, num_samples=None, batch_size=100, chunk_size=100, return_stderr=False,
               progress=False):
    r"""The IWAE bound per data point,

        L_K(x_n) = E_{z_1..z_K ~ q(z|x_n)} [ log (1/K) Σ_k p(x_n, z_k) / q(z_k | x_n) ] ≤ log p(x_n),

    estimated by the mean of ``num_samples / K`` independent draws of the K-sample
    estimator (default: one draw, ``num_samples = K``). L_1 is the ELBO.

    Two call forms (:func:`model_and_guide`): ``iwae_bound(model, guide, x, *args, ...)`` with
    Pyro callables, as :class:`pyro.infer.Importance` takes them (the guide passed is the
    guide used), or ``iwae_bound(vae, x, *args, ...)`` for a VAE's own pair
    ``(vae.model, vae.guide)``. Model and guide are called as ``model(x, *args)`` and
    ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode.

    :returns: ``(N,)`` float64 CPU tensor (and the standard errors over the draws, NaN
        for a single draw, if ``return_stderr``).
    """
    pair, rest = model_and_guide("iwae_bound", model, args)
    K = _positive_int("K", K)
    num_samples = K if num_samples is None else num_samples
    stats = importance_sampling(pair, *rest, num_samples=num_samples, ks=(K,), batch_size=batch_size,
                                chunk_size=chunk_size, progress=progress)
    est, se = stats[f"iwae_{K}"], stats[f"iwae_{K}_stderr"]
    return (est, se) if return_stderr else est


def elbo(model, *args, num_samples=100, batch_size=100, chunk_size=100, return_stderr=False):
    r"""The ELBO per data point,

        L_1(x_n) = E_{z ~ q(z|x_n)} [ log p(x_n, z) − log q(z | x_n) ] = log p(x_n) − KL(q ‖ p(z|x_n)),

    estimated by the mean over ``num_samples`` draws z ~ q(z | x_n) of the guide given.

    Two call forms (:func:`model_and_guide`): ``elbo(model, guide, x, *args, ...)`` with
    Pyro callables, as :class:`pyro.infer.Importance` takes them (the guide passed is the
    guide used), or ``elbo(vae, x, *args, ...)`` for a VAE's own pair
    ``(vae.model, vae.guide)``. Model and guide are called as ``model(x, *args)`` and
    ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode.

    :returns: ``(N,)`` float64 CPU tensor (and standard errors if ``return_stderr``).
    """
    pair, rest = model_and_guide("elbo", model, args)
    stats = importance_sampling(pair, *rest, num_samples=num_samples, batch_size=batch_size,
                                chunk_size=chunk_size)
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

    Two call forms (:func:`model_and_guide`): ``posterior_means(model, guide, x, *args, ...)`` with
    Pyro callables, as :class:`pyro.infer.Importance` takes them (the guide passed is the
    guide used), or ``posterior_means(vae, x, *args, ...)`` for a VAE's own pair
    ``(vae.model, vae.guide)``. Model and guide are called as ``model(x, *args)`` and
    ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode.

    Only the guide is run; the model is there for the call form."""
    pair, rest = model_and_guide("posterior_means", model, args)
    x, args = _split_x("posterior_means", rest)
    x, args = pair.prepare(x, args)
    guide = pair.guide
    n = x.shape[0]
    rows = []
    with pair.evaluating():
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            xb, ab = x[start:stop], _batch_args(args, n, start, stop)
            trace = prune_subsample_sites(poutine.trace(guide).get_trace(xb, *ab))
            means, sampled = [], None
            auxiliary = any(site["type"] == "sample" and site["infer"].get("is_auxiliary")
                            for site in trace.nodes.values())
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

    Two call forms (:func:`model_and_guide`): ``active_units(model, guide, x, *args, ...)`` with
    Pyro callables, as :class:`pyro.infer.Importance` takes them (the guide passed is the
    guide used), or ``active_units(vae, x, *args, ...)`` for a VAE's own pair
    ``(vae.model, vae.guide)``. Model and guide are called as ``model(x, *args)`` and
    ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode.

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


def _mean_se(values):
    """The mean of ``values`` and its standard error s/√n (NaN for a single value), as floats."""
    values = values.double()
    n = values.numel()
    se = (values.std() / math.sqrt(n)).item() if n > 1 else float("nan")
    return values.mean().item(), se


def likelihood_report(model, *args, num_samples=5000, ks=(5, 50), batch_size=100, chunk_size=100,
                      progress=False):
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

    Two call forms (:func:`model_and_guide`): ``likelihood_report(model, guide, x, *args, ...)`` with
    Pyro callables, as :class:`pyro.infer.Importance` takes them (the guide passed is the
    guide used), or ``likelihood_report(vae, x, *args, ...)`` for a VAE's own pair
    ``(vae.model, vae.guide)``. Model and guide are called as ``model(x, *args)`` and
    ``guide(x, *args)``, at scale 1 (no ``num_data``), in eval mode.
    """
    pair, rest = model_and_guide("likelihood_report", model, args)
    x = _split_x("likelihood_report", rest)[0]
    ks = tuple(k for k in ks if k != 1)
    t0 = time.perf_counter()
    stats = importance_sampling(pair, *rest, num_samples=num_samples, ks=ks, batch_size=batch_size,
                                chunk_size=chunk_size, progress=progress)
    seconds = time.perf_counter() - t0
    au, variances = active_units(pair, *rest, return_variances=True)
    nll, nll_se = _mean_se(-stats["log_px"])
    neg_elbo, neg_elbo_se = _mean_se(-stats["elbo"])
    report = dict(n=int(x.shape[0]), num_samples=int(num_samples),
                  nll=nll, nll_stderr=nll_se,
                  nll_mc_stderr=stats["log_px_stderr"].pow(2).sum().sqrt().item() / x.shape[0],
                  neg_elbo=neg_elbo, neg_elbo_stderr=neg_elbo_se, neg_iwae={}, neg_iwae_stderr={},
                  active_units=au, latent_units=int(variances.numel()),
                  min_ess=stats["ess"].min().item(), median_ess=stats["ess"].median().item(),
                  seconds=seconds)
    for k in ks:
        report["neg_iwae"][str(k)], report["neg_iwae_stderr"][str(k)] = _mean_se(-stats[f"iwae_{k}"])
    return report


# ======================================================================================
# An independent classifier, and the latent space measured
# ======================================================================================


class DigitClassifier(nn.Module):
    r"""A small CNN p(y | x) = softmax(f(x)) over K classes, for flat images.

    f: two blocks of (3×3 convolution, ReLU, 2×2 max-pool), then a hidden linear layer
    and a linear layer to K logits. It works on any ``image_shape`` whose sides are at
    least 4 (8×8 digits, 28×28 MNIST).

    :param image_shape: ``(C, H, W)``; inputs arrive flat, ``(batch, C*H*W)``.
    :param int num_classes: K.
    :param channels: output channels of the two convolutions.
    :param int hidden_dim: width of the hidden linear layer.

    ``forward(x_flat) -> logits`` of shape ``(batch, K)``.
    """

    def __init__(self, image_shape, num_classes=10, channels=(16, 32), hidden_dim=64, dropout=0.25):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        if min(h, w) < 4:
            raise ValueError(f"the classifier needs images at least 4×4, got image shape {tuple(image_shape)}")
        self.image_shape, self.num_classes = (c, h, w), int(num_classes)
        self.net = nn.Sequential(
            nn.Unflatten(-1, self.image_shape),
            nn.Conv2d(c, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(channels[1] * (h // 4) * (w // 4), hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, self.num_classes),
        )

    def forward(self, x):
        return self.net(x)


def _check_images(clf, images, what="images"):
    dim = math.prod(clf.image_shape)
    if images.dim() != 2 or images.shape[1] != dim:
        raise ValueError(f"the classifier takes flat {what} of shape (N, {dim}) for image shape "
                         f"{clf.image_shape}, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"no {what} given (N = 0)")


def train_classifier(data, epochs=10, seed=0, device="cpu", valid=None, batch_size=64, lr=2e-3,
                     weight_decay=1e-4, progress=False):
    r"""Train a :class:`DigitClassifier` on labelled real images by cross-entropy,

        min_f  −(1/N) Σ_n log softmax(f(x_n))_{y_n},

    with Adam. The classifier is *independent* of every generative model: it judges
    decoded images (:func:`classifier_confidence`) and labels them (conditional models).

    :param data: :class:`~pyro_vae.data.ImageData` with labels ``y`` (e.g. ``digits``
        or ``mnist10k``, train split). Grey levels in [0, 1].
    :param int epochs: passes over ``data``.
    :param int seed: seeds the initial weights and the batch order.
    :param valid: optional labelled data; its accuracy is shown on the progress bar.
    :returns: the trained classifier, in eval mode; ``clf(x_flat)`` gives logits.
    """
    if data.y is None:
        raise ValueError(f"{data.name or 'the data'} has no labels; the classifier needs labelled images "
                         "(e.g. 'digits' or 'mnist10k')")
    if epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs}")
    if len(data.y) != len(data):
        raise ValueError(f"{len(data)} images but {len(data.y)} labels")
    num_classes = data.num_classes or int(data.y.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = DigitClassifier(data.image_shape, num_classes).to(device)
    x, y = data.x.to(device), data.y.to(device)
    optimizer = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="classifier", disable=not progress, leave=False)
    for _ in bar:
        clf.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        if valid is not None:
            bar.set_postfix(valid_acc=f"{classifier_accuracy(clf, valid.x, valid.y):.3f}")
    return clf.eval()


@torch.no_grad()
def classifier_probs(clf, images, batch_size=2000):
    """softmax(f(x)): class probabilities ``(N, K)`` for flat ``images`` ``(N, C*H*W)``."""
    _check_images(clf, images)
    clf.eval()
    device = next(clf.parameters()).device
    return torch.cat([clf(images[i:i + batch_size].to(device)).softmax(-1).cpu()
                       for i in range(0, images.shape[0], batch_size)])


def classifier_confidence(clf, images):
    r"""Mean max-softmax confidence (1/N) Σ_n max_k p(y=k | x_n), in [1/K, 1].

    Near 1 when every image looks like some class to the classifier; decoded images
    from the "dead zones" of a latent space look like none and score lower."""
    return float(classifier_probs(clf, images).max(-1).values.mean())


def classifier_accuracy(clf, images, labels):
    """Share of ``images`` whose most probable class is ``labels`` (``(N,)`` int)."""
    if labels is None or labels.shape != (images.shape[0],):
        raise ValueError(f"need one label per image: {images.shape[0]} images, labels of shape "
                         f"{None if labels is None else tuple(labels.shape)}")
    pred = classifier_probs(clf, images).argmax(-1)
    return float((pred == labels.cpu()).float().mean())


# ---- the latent space: codes, a common frame, dead zones ---------------------------------


@torch.no_grad()
def latent_codes(model, x, batch_size=1000, sample=False, seed=0):
    """Codes of ``x`` (``(N, x_dim)``), ``(N, z_dim)``, on the CPU: the guide's mean
    E_q[z|x] (the encoder mean of a VAE, the code f(x) of an autoencoder), or with
    ``sample`` one draw z_n ~ q(z|x_n) each (seeded with ``seed``; the code itself for
    an autoencoder's point mass)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = []
        for i in range(0, x.shape[0], batch_size):
            q = model.encode(x[i:i + batch_size].to(device))
            out.append((q.sample() if sample else q.mean).cpu())
    return torch.cat(out)


@dataclass
class LatentFrame:
    r"""An affine chart of the latent space, per dimension j:

        u_j = (z_j − shift_j) / scale_j,      z_j = shift_j + scale_j u_j.

    A VAE's prior N(0, I) fixes its latent scale, so its frame is the identity. An
    autoencoder's codes have an arbitrary location and scale, so before comparing them
    with N(0, I) they are standardized with the test codes' own mean and standard
    deviation (:meth:`fit`): the autoencoder gets the best diagonal Gaussian fit, and a
    draw u ~ N(0, I) in its frame is decoded at z = shift + scale ⊙ u.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def identity(cls, z_dim):
        return cls(torch.zeros(z_dim), torch.ones(z_dim))

    @classmethod
    def fit(cls, codes):
        """The z-score frame of ``codes`` ``(N, d)``: their mean and standard deviation."""
        if codes.dim() != 2 or codes.shape[0] < 2:
            raise ValueError(f"need at least two codes of shape (N, z_dim) to standardize, got {tuple(codes.shape)}")
        scale = codes.std(0)
        if not (scale > 0).all():
            dims = (scale <= 0).nonzero().flatten().tolist()
            raise ValueError(f"cannot standardize codes: latent dimension(s) {dims} have zero spread")
        return cls(codes.mean(0), scale)

    def to_frame(self, z):
        return (z - self.shift.to(z)) / self.scale.to(z)

    def to_latent(self, u):
        return self.shift.to(u) + self.scale.to(u) * u


def latent_frame(model, codes, standardize="auto"):
    """The frame in which ``model``'s codes are compared with N(0, I).

    :param standardize: True (z-score with ``codes``), False (identity) or ``"auto"``:
        True for an :class:`~pyro_vae.models.Autoencoder`, False otherwise."""
    if standardize == "auto":
        standardize = isinstance(model, Autoencoder)
    return LatentFrame.fit(codes) if standardize else LatentFrame.identity(codes.shape[-1])


def nearest_distances(queries, reference, exclude_self=False, chunk_size=1024):
    r"""Euclidean distance from each query to its nearest reference point,
    d_m = min_n ‖q_m − r_n‖, ``(M,)``.

    :param bool exclude_self: ``queries`` *are* ``reference``: skip each point itself
        (its nearest *other* point)."""
    if queries.dim() != 2 or reference.dim() != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and reference {tuple(reference.shape)} must be "
                         "(M, d) and (N, d) with the same d")
    if reference.shape[0] < (2 if exclude_self else 1):
        raise ValueError(f"need {'two' if exclude_self else 'one'} or more reference points, got {reference.shape[0]}")
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        d = torch.cdist(queries[start:start + chunk_size].double(), reference.double())
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out).to(queries.dtype)


def dead_zone_threshold(codes, quantile=0.99):
    """The ``quantile`` of the codes' nearest-neighbour distances (each code to its
    nearest other code): how far from its neighbours a code may lie in the data."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return float(torch.quantile(nearest_distances(codes, codes, exclude_self=True).double(), quantile))


def dead_zone_share(draws, codes, quantile=0.99):
    r"""Share of ``draws`` that fall in a dead zone of ``codes``:

        s = (1/M) Σ_m 1[ min_n ‖u_m − c_n‖ > t ],   t = ``quantile`` of {min_{k≠n} ‖c_n − c_k‖},

    the share of draws whose nearest code is farther than all but (1 − quantile) of the
    codes are from theirs. If the draws come from the distribution of the codes,
    s ≈ 1 − quantile (0.01 by default); draws that land in empty space push s to 1.

    :param draws: ``(M, d)``, e.g. u ~ N(0, I) in the codes' frame.
    :param codes: ``(N, d)``, the test codes in the same frame.
    :returns: ``(s, t)``.
    """
    t = dead_zone_threshold(codes, quantile)
    return float((nearest_distances(draws, codes) > t).double().mean()), t


@torch.no_grad()
def dead_zone_report(model, x, classifier=None, n_draws=2000, quantile=0.99, standardize="auto", seed=0,
                     batch_size=1000, codes="sample"):
    r"""Dead zones of a trained model's latent space, as numbers.

    Test codes c_n of the images ``x`` are put in the model's :class:`LatentFrame`
    (identity for a VAE, z-score for an autoencoder, fitted on the encoder means), M
    draws u_m ~ N(0, I) are taken in that frame and decoded at z_m = frame⁻¹(u_m) to
    E[x|z_m]. Reported:

    - ``share`` (a): :func:`dead_zone_share` of the draws against the codes, with its
      binomial standard error ``share_se`` = √(s(1−s)/M) (the threshold's own
      sampling noise, from N codes, comes on top). With ``codes="sample"`` (default)
      the test codes are one draw c_n ~ q(z|x_n) each: the region the decoder was
      trained on, and where a VAE's inactive latent units (q = p there, encoder mean 0)
      are no dead zone; ``share_means`` is then the same measure with the encoder means
      c_n = E_q[z|x_n] (what the latent map shows). An autoencoder's two coincide;
      for a standardized model ``share_raw`` (threshold ``threshold_raw``, standard
      error ``share_raw_se``) is the same measure for the same draws taken as
      z ~ N(0, I) against the codes *without* the frame, where ``model.sample`` draws;
    - ``confidence`` (b): :func:`classifier_confidence` on the decoded draws, with its
      standard error over draws; ``confidence_data`` is the same on the real images,
      the ceiling to compare with; for a standardized model ``confidence_raw`` is the
      confidence on decoding z ~ N(0, I) *without* the frame (what ``model.sample`` does),
      and ``confidence_recon`` on the decoded test codes (reconstructions): what this
      decoder reaches where the data are, so a drop from it to ``confidence`` is the
      price of the prior draws' locations rather than of a blurry decoder;
    - ``class_entropy`` (and ``_raw``, ``_data``): :func:`predicted_class_entropy` of the
      same images, whether the draws cover all classes or collapse onto a few.

    :param x: test images ``(N, x_dim)``.
    :param classifier: from :func:`train_classifier`; without it (b) is skipped.
    :param int n_draws: M.
    :returns: a dict of plain numbers.
    """
    if codes not in ("sample", "mean"):
        raise ValueError(f"codes must be 'sample' (z ~ q(z|x)) or 'mean' (E_q[z|x]), got {codes!r}")
    means = latent_codes(model, x, batch_size)
    frame = latent_frame(model, means, standardize)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n_draws, means.shape[1], generator=g)
    test_codes = latent_codes(model, x, batch_size, sample=True, seed=seed) if codes == "sample" else means
    share, threshold = dead_zone_share(u, frame.to_frame(test_codes), quantile)
    standardized = not (bool((frame.shift == 0).all()) and bool((frame.scale == 1).all()))
    report = dict(model=getattr(model, "config", None) and model.config.get("model") or type(model).__name__,
                  z_dim=int(means.shape[1]), n_codes=int(means.shape[0]), n_draws=int(n_draws),
                  quantile=quantile, standardized=standardized, codes=codes, threshold=threshold, share=share,
                  share_se=math.sqrt(share * (1 - share) / n_draws))
    if codes == "sample":
        report["share_means"], report["threshold_means"] = dead_zone_share(u, frame.to_frame(means), quantile)
    if standardized:  # the same draws taken as z ~ N(0, I) in the model's own coordinates (model.sample)
        report["share_raw"], report["threshold_raw"] = dead_zone_share(u, test_codes, quantile)
        report["share_raw_se"] = math.sqrt(report["share_raw"] * (1 - report["share_raw"]) / n_draws)
    if classifier is not None:
        device = next(model.parameters()).device

        def judge(key, z=None):
            images = x if z is None else torch.cat([model.decode(z[i:i + batch_size].to(device)).cpu().clamp(0, 1)
                                                     for i in range(0, z.shape[0], batch_size)])
            probs = classifier_probs(classifier, images)
            report[key], report[key + "_se"] = _mean_se(probs.max(-1).values)
            return probs

        probs = judge("confidence", frame.to_latent(u))
        report["class_entropy"] = predicted_class_entropy(probs)
        if standardized:
            report["class_entropy_raw"] = predicted_class_entropy(judge("confidence_raw", u))
        judge("confidence_recon", means)
        report["class_entropy_data"] = predicted_class_entropy(judge("confidence_data"))
    return report


def predicted_class_entropy(probs):
    r"""Entropy (nats) of the classes the classifier picks for a set of images,
    H = −Σ_k f_k log f_k with f_k the share of images whose most probable class is k.

    log K (2.30 for ten digits) when every class is picked equally often, 0 when one class
    is picked for all: decoded draws that look like one blob score low even when the
    classifier is confident about that blob (``confidence`` alone misses it).

    :param probs: ``(N, K)`` class probabilities (:func:`classifier_probs`).
    """
    f = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1]).double() / probs.shape[0]
    f = f[f > 0]
    return float(-(f * f.log()).sum())


def dead_zone_table(reports, names=None):
    """A Markdown table of :func:`dead_zone_report` results, one row per model."""
    names = names or [r["model"] for r in reports]
    lines = ["| model | z_dim | frame | (a) dead-zone share, codes z ~ q(z|x) | (a) with encoder means | "
             "(b) classifier confidence on decoded draws | on reconstructions | on real test images |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in zip(names, reports):
        conf = f"{r['confidence']:.3f} ± {r['confidence_se']:.3f}" if "confidence" in r else "–"
        if "confidence_raw" in r:
            conf += f" (raw z ~ N(0, I): {r['confidence_raw']:.3f} ± {r['confidence_raw_se']:.3f})"
        if "class_entropy" in r:
            conf += f"; class entropy {r['class_entropy']:.2f}"
            if "class_entropy_raw" in r:
                conf += f" (raw {r['class_entropy_raw']:.2f})"
        recon = f"{r['confidence_recon']:.3f}" if "confidence_recon" in r else "–"
        data = (f"{r['confidence_data']:.3f}; class entropy {r['class_entropy_data']:.2f}"
                if "confidence_data" in r else "–")
        frame = "standardized codes" if r["standardized"] else "prior N(0, I)"
        share = f"{r['share']:.3f} ± {r['share_se']:.3f}"
        if "share_raw" in r:
            share += f" (raw z ~ N(0, I): {r['share_raw']:.3f} ± {r['share_raw_se']:.3f})"
        if r.get("codes") == "mean":
            sampled, means = "–", share
        else:
            sampled, means = share, f"{r['share_means']:.3f}"
        lines.append(f"| {name} | {r['z_dim']} | {frame} | {sampled} | {means} | {conf} | {recon} | {data} |")
    return "\n".join(lines)
