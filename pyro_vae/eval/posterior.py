r"""How good is q(z|x)? The guide against the true posterior of a trained decoder.

For one data point x the true posterior of the model,

    p(z|x) = p(z) p(x|z) / p(x),

is sampled by NUTS (Pyro's :class:`~pyro.infer.MCMC`) on the model as it stands, its
decoder fixed (:func:`nuts_posterior`), and kept as ArviZ ``InferenceData`` (several
chains, so that R-hat and the effective sample size say whether to trust it). The guide
q(z|x) is then compared with it (:func:`compare_to_nuts`):

- the **Pareto k̂** of the importance weights w_s = p(x, z_s) / q(z_s|x), z_s ~ q(z|x)
  (PSIS, ``arviz.psislw``): the estimated shape of the weights' right tail. For k̂ < 0.7
  the importance-sampled log p̂(x) (the NLL a VAE reports) is trustworthy; above it the
  weights have (nearly) infinite variance and q misses mass of p(z|x)
  (Vehtari et al. 2015/2024);
- two divergences, with log p(x) estimated by importance sampling from a defensive
  mixture of q and a Gaussian fitted to the NUTS draws (:func:`log_evidence`):
  KL(q ‖ p) = log p(x) − ELBO(x) (exclusive: the ELBO's gap) and
  KL(p ‖ q) = E_{p(z|x)}[log p(x, z) − log q(z|x)] − log p(x) (inclusive, averaged over
  the NUTS draws: large when q misses mass);
- pair plots of NUTS draws and guide draws (``arviz.plot_pair``,
  :func:`pyro_vae.plots.plot_posterior_pairs`).

:func:`khat_share` gives the share of data points with k̂ < 0.7;
:func:`pyro_vae.eval.gap.amortization_gap` measures what the encoder loses against the same
family fitted to each point alone.

Call forms (:mod:`~pyro_vae.eval.calls`): the functions that use a guide
take Pyro callables, ``compare_to_nuts(model, guide, x, idata)``, ``khat_share(model, guide,
x)``, …, as :class:`pyro.infer.Importance` does (the guide passed is the guide used), and
those that need only the model take ``nuts_posterior(model, x)``, ``log_joint(model, x, z)``
(``vae.model``, or a model function of one's own). A VAE object stands for its own pair
everywhere: ``compare_to_nuts(vae, x, idata)``, ``nuts_posterior(vae, x)``.
"""

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from ..objectives import IWAE_ELBO
from .calls import batch_args, model_and_guide, split_args
from .common import check_int

#: k̂ below this: the importance-sampling estimate is reliable (PSIS).
KHAT_THRESHOLD = 0.7


# ---- the model at a fixed decoder --------------------------------------------------------
def _one_point(pair, x, args):
    """x as a batch of one, ``(1, x_dim)``, and args likewise, on the evaluation device
    (:meth:`~pyro_vae.eval.calls.ModelAndGuide.prepare`)."""
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor, one data point of shape (x_dim,) or (1, x_dim), got {type(x).__name__}")
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(
            f"the posterior is sampled for one data point at a time: x must have shape (x_dim,) "
            f"or (1, x_dim), got {tuple(x.shape)}"
        )
    args = tuple(a.reshape(1, *a.shape[1:]) if torch.is_tensor(a) and a.dim() > 0 else a for a in args)
    return pair.prepare(x, args)


def _latent_sites(trace):
    """Names of the latent (unobserved, non-subsample) sample sites of a trace."""
    return [
        name
        for name, site in prune_subsample_sites(trace).nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def _single_latent_site(trace, what):
    names = _latent_sites(trace)
    if len(names) != 1:
        raise ValueError(f"comparing a guide with NUTS needs a {what} with one latent sample site (z); found {names}")
    return names[0]


# ---- NUTS --------------------------------------------------------------------------------
def nuts_posterior(
    model,
    x,
    *args,
    num_samples=500,
    warmup_steps=500,
    num_chains=2,
    seed=0,
    target_accept_prob=0.8,
    max_tree_depth=8,
    jit_compile=False,
    progress=False,
):
    r"""Sample the true posterior p(z|x) ∝ p(z) p(x|z) of a Pyro model for one data point
    with NUTS (:class:`pyro.infer.NUTS`), the model ``model(x, *args)`` conditioned on x,
    its parameters fixed (the decoder of a VAE). A VAE's data plate is at scale 1 (no
    ``num_data``), so NUTS sees p(z) p(x|z) itself.

    Two call forms: ``nuts_posterior(model, x, *args)`` with any Pyro model callable
    (``vae.model``, a function of one's own; x on the device the model computes on), or
    ``nuts_posterior(vae, x, *args)``, which runs ``vae.model`` on the VAE's device after
    its ``likelihood.check(x)``.

    The chains run one after another (each :class:`~pyro.infer.MCMC` with one chain, seed
    ``seed + c``, started at a uniform draw in (−2, 2)^d), so no process pool is needed.

    :param model: a Pyro model callable, or a VAE-like object (see
        :mod:`~pyro_vae.eval.calls`).
    :param x: one data point, ``(x_dim,)`` or ``(1, x_dim)``.
    :param args: further model arguments for that point (e.g. its label c).
    :param int num_chains: C ≥ 2 for R-hat.
    :param bool jit_compile: compile the potential energy with the PyTorch JIT (Pyro's
        option; faster for small models, slower to start).
    :returns: ``arviz.InferenceData`` with one posterior variable per latent site of the
        model, flattened per draw: for a VAE ``posterior.z`` of dims ``(chain, draw, z_dim)``;
        and ``sample_stats.diverging``.
    """
    pair, _ = model_and_guide("nuts_posterior", model, (x,) + args, need_guide=False)
    check_int("num_samples", num_samples)
    check_int("warmup_steps", warmup_steps, low=0)
    check_int("num_chains", num_chains)
    x, args = _one_point(pair, x, args)
    draws, diverging = {}, []
    with pair.evaluating(grad=True, freeze=True), torch.random.fork_rng(devices=[]):
        for c in range(num_chains):
            pyro.set_rng_seed(seed + c)
            kernel = NUTS(
                pair.model,
                target_accept_prob=target_accept_prob,
                max_tree_depth=max_tree_depth,
                jit_compile=jit_compile,
                ignore_jit_warnings=True,
            )
            mcmc = MCMC(
                kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1, disable_progbar=not progress
            )
            with warnings.catch_warnings():  # torch deprecates jit.trace, which Pyro's jit_compile uses
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.trace.*")
                mcmc.run(x, *args)
            samples = mcmc.get_samples()
            if not samples:
                raise ValueError("the model has no latent sample sites for NUTS to sample")
            for name, z in samples.items():
                draws.setdefault(name, []).append(z.reshape(num_samples, -1).cpu().double().numpy())
            flags = np.zeros(num_samples, dtype=bool)
            flags[list(mcmc.diagnostics()["divergences"]["chain 0"])] = True
            diverging.append(flags)
    posterior = {name: np.stack(z) for name, z in draws.items()}
    return az.from_dict(
        posterior=posterior,
        sample_stats={"diverging": np.stack(diverging)},
        coords={f"{name}_dim": np.arange(z.shape[-1]) for name, z in posterior.items()},
        dims={name: [f"{name}_dim"] for name in posterior},
    )


def nuts_diagnostics(idata):
    """Max R-hat, min bulk and tail ESS over the latent coordinates (of every latent site),
    and the number of divergent transitions, of :func:`nuts_posterior`'s draws (ArviZ)."""
    names = list(idata.posterior.data_vars)

    def over_sites(stat, reduce):
        return float(reduce([reduce(stat[name].values) for name in names]))

    return dict(
        max_rhat=over_sites(az.rhat(idata, var_names=names), np.max),
        min_ess_bulk=over_sites(az.ess(idata, var_names=names, method="bulk"), np.min),
        min_ess_tail=over_sites(az.ess(idata, var_names=names, method="tail"), np.min),
        divergences=int(idata.sample_stats["diverging"].values.sum()),
        num_draws=int(idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]),
    )


def _draws_array(idata):
    """The NUTS draws of every latent site, flattened and concatenated: ``(C, S, d)``."""
    return np.concatenate([idata.posterior[name].values for name in idata.posterior.data_vars], -1)


def nuts_draws(idata):
    """The NUTS draws of z (every latent site, flattened and concatenated), all chains
    pooled: ``(C·S, z_dim)`` float64 tensor."""
    z = torch.as_tensor(_draws_array(idata))
    return z.reshape(-1, z.shape[-1])


# ---- densities of the model and the guide at given z -------------------------------------
def log_joint(model, x, z, *args):
    r"""log p(x, z) = log p(z) + log p(x|z) for one data point x at each of S latent
    values ``z`` (``(S, z_dim)``) of the model's single latent site, vectorized over S by
    a plate; ``(S,)`` float64.

    ``log_joint(model, x, z, *args)`` with a Pyro model callable, or ``log_joint(vae, x, z,
    *args)`` for ``vae.model``; to be called inside :func:`~pyro_vae.eval.calls.fixed_model`."""
    pair, _ = model_and_guide("log_joint", model, (x, z) + args, need_guide=False)
    x, args = _one_point(pair, x, args)
    with poutine.block():
        name = _single_latent_site(poutine.trace(pair.model).get_trace(x, *args), "model")
    z = z.to(x.device, torch.get_default_dtype()).reshape(-1, 1, z.shape[-1])
    with pyro.plate("_draws", z.shape[0], dim=-2), poutine.condition(data={name: z}):
        trace = poutine.trace(pair.model).get_trace(x, *args)
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and "log_prob" in site:
            total = total + site["log_prob"]
    return total.reshape(-1).double().cpu()


def guide_distribution(model, *args):
    """q(z|x) of the guide for one point: the distribution at its single latent site
    (``batch_shape == (1,)``), read from a trace of ``guide(x, *args)``.

    ``guide_distribution(model, guide, x, *args)`` with Pyro callables, or
    ``guide_distribution(vae, x, *args)`` for ``vae.guide``."""
    pair, rest = model_and_guide("guide_distribution", model, args)
    x, args = split_args("guide_distribution", rest)
    x, args = _one_point(pair, x, args)
    trace = poutine.trace(pair.guide).get_trace(x, *args)
    return trace.nodes[_single_latent_site(trace, "guide")]["fn"]


def importance_log_weights(model, *args, num_samples=1000, chunk_size=1000):
    r"""log w_s = log p(x_n, z_s) − log q(z_s|x_n), z_s ~ q(z|x_n), for every data point
    x_n of a batch ``x`` (``(N, x_dim)``, or one point ``(x_dim,)``): ``(N, S)`` float64,
    from Pyro traces (:meth:`~pyro_vae.objectives.IWAE_ELBO.log_weights`), at scale 1.

    ``importance_log_weights(model, guide, x, *args)`` with Pyro callables (the guide
    passed is the guide used), or ``importance_log_weights(vae, x, *args)`` for
    ``(vae.model, vae.guide)``."""
    pair, rest = model_and_guide("importance_log_weights", model, args)
    x, args = split_args("importance_log_weights", rest)
    if torch.is_tensor(x) and x.dim() == 1:
        x = x.unsqueeze(0)
    x, args = pair.prepare(x, args)
    rows = []
    with pair.evaluating():
        done = 0
        while done < num_samples:
            c = min(chunk_size, num_samples - done)
            log_w, _, _ = IWAE_ELBO(c).log_weights(pair.model, pair.guide, x, *args)
            rows.append(log_w.double().cpu())
            done += c
    return torch.cat(rows).T.contiguous()


def pareto_khat(log_weights):
    r"""The Pareto k̂ of importance weights (PSIS, ``arviz.psislw``): the shape of a
    generalized Pareto distribution fitted to the largest weights. ``(..., S)`` log
    weights give ``(...)`` k̂. Below :data:`KHAT_THRESHOLD` = 0.7 the importance-sampled
    estimate is reliable; k̂ ≥ 1 means the weights' mean itself is infinite."""
    lw = np.asarray(torch.as_tensor(log_weights).double().cpu().numpy())
    if lw.shape[-1] < 10:
        raise ValueError(f"Pareto k̂ needs at least 10 importance weights per point, got {lw.shape[-1]}")
    if not np.isfinite(lw).all():
        raise ValueError("the log importance weights hold NaN or inf")
    _, khat = az.psislw(lw, reff=1.0)
    return torch.as_tensor(np.asarray(khat, dtype=np.float64))


def khat_share(model, *args, num_samples=1000, batch_size=100, threshold=KHAT_THRESHOLD, progress=False):
    """k̂ of every data point of ``x`` (``(N, x_dim)``) from ``num_samples`` draws of the
    guide, w = p(x_n, z)/q(z|x_n), and the share of points with k̂ < ``threshold``.

    ``khat_share(model, guide, x, *args)`` with Pyro callables, or ``khat_share(vae, x,
    *args)`` for ``(vae.model, vae.guide)``.

    :returns: ``(share, khat)`` with ``khat`` a ``(N,)`` float64 tensor."""
    pair, rest = model_and_guide("khat_share", model, args)
    x, args = split_args("khat_share", rest)
    n = x.shape[0]
    out = []
    for start in tqdm(range(0, n, batch_size), desc="Pareto k̂", disable=not progress, leave=False):
        stop = min(n, start + batch_size)
        sub = batch_args(args, n, start, stop)
        out.append(pareto_khat(importance_log_weights(pair, x[start:stop], *sub, num_samples=num_samples)))
    khat = torch.cat(out)
    return float((khat < threshold).double().mean()), khat


# ---- comparing q(z|x) with the NUTS draws ------------------------------------------------
def log_evidence(model, *args, num_samples=5000, widen=1.5):
    r"""log p(x) for one point by importance sampling from a defensive mixture

        r(z) = ½ q(z|x) + ½ N(z; m, widen² · C),

        log p̂(x) = log (1/S) Σ_s p(x, z_s) / r(z_s),   z_s ~ r,

    m and C the mean and covariance of the NUTS draws: a proposal that covers p(z|x)
    whether or not the guide does, so that the divergences of :func:`compare_to_nuts`
    rest on a log p(x) independent of the guide's quality.

    ``log_evidence(model, guide, x, idata, *args)`` with Pyro callables, or
    ``log_evidence(vae, x, idata, *args)`` for ``(vae.model, vae.guide)``; ``idata`` from
    :func:`nuts_posterior`.

    :returns: ``(log_px, stderr, khat)``, the estimate, its delta-method standard error
        and the k̂ of the mixture's weights."""
    pair, rest = model_and_guide("log_evidence", model, args)
    x, idata, args = split_args("log_evidence", rest, ("x", "idata"))
    x1, args1 = _one_point(pair, x, args)
    zn = nuts_draws(idata)
    m = zn.mean(0)
    cov = torch.cov(zn.T).reshape(zn.shape[-1], zn.shape[-1]) * widen**2
    cov = cov + 1e-6 * torch.eye(cov.shape[0], dtype=cov.dtype)
    gauss = dist.MultivariateNormal(m.float(), covariance_matrix=cov.float())
    with pair.evaluating(grad=True, freeze=True), torch.no_grad():
        q = guide_distribution(pair, x1, *args1)
        half = num_samples // 2
        z = torch.cat([q.sample((half,)).reshape(half, -1).cpu(), gauss.sample((num_samples - half,))])
        log_q = q.log_prob(z.to(x1.device).unsqueeze(1)).reshape(-1).double().cpu()
        log_r = torch.logaddexp(log_q, gauss.log_prob(z).double()) - math.log(2)
        log_w = log_joint(pair, x1, z, *args1) - log_r
    lse = torch.logsumexp(log_w, 0)
    log_px = float(lse - math.log(num_samples))
    rel_var = float((num_samples * torch.exp(torch.logsumexp(2 * log_w, 0) - 2 * lse) - 1).clamp(min=0))
    return log_px, math.sqrt(rel_var / (num_samples - 1)), float(pareto_khat(log_w))


def compare_to_nuts(model, *args, num_samples=5000):
    r"""Compare the guide q(z|x) with NUTS draws ``idata`` of p(z|x) for one point.

    ``compare_to_nuts(model, guide, x, idata, *args)`` with Pyro callables (the guide
    passed is the guide compared), or ``compare_to_nuts(vae, x, idata, *args)`` for
    ``(vae.model, vae.guide)``. The model needs one latent site (z), the guide one latent
    site whose distribution gives log q(z|x).

    :returns: a dict of plain numbers:

        - ``khat``: Pareto k̂ of w = p(x, z)/q(z|x), z ~ q, from ``num_samples`` draws;
        - ``log_px``, ``log_px_stderr``, ``log_px_khat``: :func:`log_evidence`;
        - ``log_px_q``: log (1/S) Σ w_s with the guide alone (what a NLL reports);
        - ``elbo``: (1/S) Σ log w_s;
        - ``kl_q_p`` = log p(x) − ELBO, and ``kl_p_q`` = mean over the NUTS draws of
          log p(x, z) − log q(z|x), minus log p(x);
        - ``mean_error``: max_j |E_q z_j − E_p z_j| / sd_p(z_j), the guide's mean off by
          how many posterior standard deviations; ``sd_ratio_min``/``sd_ratio_max``: the
          range of sd_q(z_j)/sd_p(z_j);
        - the NUTS diagnostics (:func:`nuts_diagnostics`).
    """
    pair, rest = model_and_guide("compare_to_nuts", model, args)
    x, idata, args = split_args("compare_to_nuts", rest, ("x", "idata"))
    x1, args1 = _one_point(pair, x, args)
    log_w = importance_log_weights(pair, x1, *args1, num_samples=num_samples)[0]
    lse = torch.logsumexp(log_w, 0)
    log_px, log_px_se, log_px_khat = log_evidence(pair, x1, idata, *args1, num_samples=num_samples)
    zn = nuts_draws(idata)
    with pair.evaluating(grad=True, freeze=True), torch.no_grad():
        q = guide_distribution(pair, x1, *args1)
        lq = q.log_prob(zn.to(x1.device, torch.get_default_dtype()).unsqueeze(1)).reshape(-1).double().cpu()
        lj = log_joint(pair, x1, zn, *args1)
        zq = q.sample((num_samples,)).reshape(num_samples, -1).double().cpu()
    elbo = float(log_w.mean())
    sd_p, sd_q = zn.std(0), zq.std(0)
    out = dict(
        khat=float(pareto_khat(log_w)),
        log_px=log_px,
        log_px_stderr=log_px_se,
        log_px_khat=log_px_khat,
        log_px_q=float(lse - math.log(num_samples)),
        elbo=elbo,
        kl_q_p=log_px - elbo,
        kl_p_q=float((lj - lq).mean()) - log_px,
        mean_error=float(((zq.mean(0) - zn.mean(0)).abs() / sd_p).max()),
        sd_ratio_min=float((sd_q / sd_p).min()),
        sd_ratio_max=float((sd_q / sd_p).max()),
        num_samples=int(num_samples),
    )
    out.update(nuts_diagnostics(idata))
    return out


def guide_draws(model, *args, num_samples=1000):
    """``num_samples`` draws of q(z|x) for one point, ``(S, z_dim)`` float64 on the CPU.

    ``guide_draws(model, guide, x, *args)`` with Pyro callables, or ``guide_draws(vae, x,
    *args)`` for ``vae.guide``."""
    pair, rest = model_and_guide("guide_draws", model, args)
    x, args = split_args("guide_draws", rest)
    x1, args1 = _one_point(pair, x, args)
    with pair.evaluating(grad=True, freeze=True), torch.no_grad():
        q = guide_distribution(pair, x1, *args1)
        return q.sample((num_samples,)).reshape(num_samples, -1).double().cpu()


def informative_dims(idata, k=4):
    """The ``k`` latent coordinates whose NUTS posterior is narrowest (smallest standard
    deviation): those the data point informs most; the others sit near the prior."""
    sd = nuts_draws(idata).std(0)
    return sorted(int(j) for j in torch.argsort(sd)[: min(k, sd.numel())])
