r"""The Fisher autoencoder objective (Elkhalil et al., AISTATS 2021): the VAE's model and
guide fitted by the Fisher divergence of the joints p_θ(x, z) and q_φ(x, z) = p_d(x) q_φ(z|x)
instead of the KL divergence.

With the scores a = ∂_z log q_φ(z|x), b = ∂_z log p_θ(x, z), u = ∂_x log q_φ(z|x) and
v = ∂_x log p_θ(x|z), Hyvärinen's integration by parts gives the tractable loss per data
point x_b (½F = E_{p_d}[J(x)] + C, C ≥ 0 independent of θ and φ, so J can be negative):

    J(x_b) = E_{q_φ(z|x_b)} [ ½‖a − b‖² + ½‖v‖² + Δ_x log p_θ(x_b, z) + ½‖u‖² ].

The scores are exact (``torch.autograd.grad`` with ``create_graph=True`` of the traces'
unscaled log-densities); Δ_x log p_θ is exact for a Gaussian likelihood (−Σ_i 1/s_i²) and
Hutchinson's estimator otherwise; the expectation over q is a Monte Carlo average over
reparameterized draws, that over p_d the minibatch, scaled by the data plate's N/B. The
derivation, term by term, is in ``docs/fisher.md``.
"""

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.util import warn_if_nan

#: Ways of computing Δ_x log p_θ(x, z).
LAPLACIANS = ("auto", "exact", "hutchinson")


def _base(fn):
    """The distribution under ``Independent``/masking wrappers, with the event dims they add."""
    extra = 0
    while True:
        if isinstance(fn, dist.Independent):
            extra += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif isinstance(fn, dist.MaskedDistribution):
            fn = fn.base_dist
        else:
            return fn, extra


class FisherDivergence:
    r"""The Fisher autoencoder loss s Σ_b Ĵ(x_b) of a model/guide pair, with Ĵ the Monte Carlo
    estimate of (see the module docstring for the derivation)

        J(x) = E_{q_φ(z|x)}[ ½‖∂_z log q_φ(z|x) − ∂_z log p_θ(x, z)‖²
                             + ½‖∂_x log p_θ(x, z)‖² + Δ_x log p_θ(x, z)
                             + ½‖∂_x log q_φ(z|x)‖² ],

    equal to ½F(p_d q_φ, p_θ) − C summed over the batch, C = ½E‖∇ log p_d‖² a constant.

    It has the interface of Pyro's ELBOs (``loss``, ``differentiable_loss``,
    ``loss_and_grads``), so :class:`pyro.infer.SVI` and :class:`~pyro_vae.train.trainer.Trainer`
    use it unchanged. Model and guide are called as ``model(x, *rest)``, ``guide(x, *rest)``
    with ``x`` a real tensor ``(batch, ...)`` whose first dimension is the data plate.

    :param int num_particles: L, draws of z per data point (L sequential passes, each
        vectorized over the batch).
    :param str laplacian: ``"auto"`` (exact for Normal likelihoods, else Hutchinson),
        ``"exact"`` (Normal likelihoods only; a :class:`ValueError` otherwise) or
        ``"hutchinson"``.
    :param int num_probes: P, Rademacher probes of Hutchinson's estimator.
    :raises ValueError: at the first call, if an observed site is discrete (Bernoulli):
        its x-scores do not exist.
    """

    def __init__(self, num_particles=1, laplacian="auto", num_probes=1):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if laplacian not in LAPLACIANS:
            raise ValueError(f"unknown laplacian {laplacian!r}; choose from {LAPLACIANS}")
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
        self.num_particles = num_particles
        self.laplacian = laplacian
        self.num_probes = num_probes

    # ---- one particle --------------------------------------------------------------------
    def terms(self, model, guide, x, *args, create_graph=True, **kwargs):
        r"""One draw z ~ q_φ(z|x) per data point and the terms of Ĵ at it.

        :param torch.Tensor x: data ``(B, ...)``, real-valued.
        :returns: a dict of ``(B,)`` tensors: ``"latent"`` ½‖a − b‖², ``"decoder"``
            ½‖v‖², ``"laplacian"`` Δ_x log p_θ(x, z), ``"encoder"`` ½‖u‖², ``"total"``
            their sum; ``"z"``: the latent values ``{name: tensor}`` (detached), and
            ``"scale"``: the data plate's scale s (a float).
        """
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(
                "the Fisher objective differentiates with respect to the data, so x must be a "
                f"floating-point tensor, got {type(x).__name__ if not torch.is_tensor(x) else x.dtype}"
            )
        x_data = x.detach()
        guide_trace = poutine.trace(guide).get_trace(x_data, *args, **kwargs)
        latents = [
            name
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and not site["infer"].get("_do_not_score", False)
            and not _is_subsample(site)
        ]
        if not latents:
            raise ValueError("the guide has no latent sample sites; the Fisher objective needs a latent z")
        shifted = guide_trace.copy()
        deltas = []
        for name in latents:
            site = guide_trace.nodes[name]
            fn, _ = _base(site["fn"])
            if not site["fn"].has_rsample or isinstance(fn, dist.Delta):
                raise ValueError(
                    f"the Fisher objective needs a reparameterized guide with a density at latent "
                    f"site {name!r} (got {type(fn).__name__}); scores of a point mass or of a "
                    "non-reparameterized site are not available"
                )
            delta = torch.zeros_like(site["value"], requires_grad=True)
            deltas.append(delta)
            shifted.nodes[name] = dict(site, value=site["value"] + delta)
        x_eval = x_data.clone().requires_grad_(True)
        q_trace = poutine.trace(poutine.replay(guide, trace=shifted)).get_trace(x_eval, *args, **kwargs)
        p_trace = poutine.trace(poutine.replay(model, trace=shifted)).get_trace(x_eval, *args, **kwargs)
        observed = self._check_observed(p_trace, x_eval)
        q_trace.compute_log_prob()
        p_trace.compute_log_prob()
        batch = x.shape[0]
        log_q = self._per_point(q_trace, latents, batch)
        log_p = self._per_point(p_trace, None, batch)
        scale = self._scale(p_trace, q_trace, latents)

        inputs = deltas + [x_eval]
        grad_p = torch.autograd.grad(log_p.sum(), inputs, create_graph=True, allow_unused=True)
        grad_q = torch.autograd.grad(log_q.sum(), inputs, create_graph=create_graph, allow_unused=True)
        grad_p = [torch.zeros_like(t) if g is None else g for g, t in zip(grad_p, inputs)]
        grad_q = [torch.zeros_like(t) if g is None else g for g, t in zip(grad_q, inputs)]
        latent = sum(_sq_norm(gq - gp, batch) for gq, gp in zip(grad_q[:-1], grad_p[:-1])) / 2
        decoder = _sq_norm(grad_p[-1], batch) / 2
        encoder = _sq_norm(grad_q[-1], batch) / 2
        laplacian = self._laplacian(observed, x_eval, grad_p[-1], batch, create_graph)
        total = latent + decoder + laplacian + encoder
        return {
            "latent": latent,
            "decoder": decoder,
            "laplacian": laplacian,
            "encoder": encoder,
            "total": total,
            "z": {n: guide_trace.nodes[n]["value"].detach() for n in latents},
            "scale": scale,
        }

    @staticmethod
    def _check_observed(p_trace, x_eval):
        """The model's observed sites whose value is the data; refuse discrete ones."""
        observed = []
        for name, site in p_trace.nodes.items():
            if site["type"] != "sample" or not site["is_observed"]:
                continue
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"the Fisher objective needs gradients of log p(x|z) with respect to x, but the observed site "
                    f"{name!r} has a discrete distribution ({type(_base(site['fn'])[0]).__name__}), whose "
                    "x-gradients do not exist. Use the Gaussian likelihood (likelihood='gaussian', CLI "
                    "--likelihood gaussian) on grey-scale data, or fit this model with an ELBO "
                    "(objective 'elbo', 'meanfield' or 'iwae')"
                )
            if site["value"] is x_eval:
                observed.append(site)
        if not observed:
            raise ValueError(
                "no observed site of the model takes the data x (the first argument) as its value; "
                "the Fisher objective needs the model to observe x"
            )
        return observed

    @staticmethod
    def _per_point(trace, names, batch):
        """Σ over the (selected) sample sites of their log-densities, one number per data point."""
        total = 0.0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or _is_subsample(site) or (names is not None and name not in names):
                continue
            # the site's own log-density (masked, not scaled by N/B: the scale multiplies the loss once)
            lp = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
            if lp.shape != (batch,):
                raise ValueError(
                    f"site {name!r} has log-density of shape {tuple(lp.shape)}; the Fisher objective "
                    f"needs one number per data point, shape ({batch},): put every site in the "
                    "data plate (dim -1) with its event dimensions declared (.to_event)"
                )
            total = total + lp
        return total

    @staticmethod
    def _scale(p_trace, q_trace, latents):
        """The data plate's scale s (N/B, or 1), which every sample site must share."""
        scales = {}
        for kind, trace in (("model", p_trace), ("guide", q_trace)):
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and not _is_subsample(site) and (kind == "model" or name in latents):
                    s = site["scale"]
                    scales[f"{kind} site {name!r}"] = float(s) if not torch.is_tensor(s) or s.numel() == 1 else None
        distinct = set(scales.values())
        if len(distinct) != 1 or None in distinct:
            raise ValueError(
                f"the Fisher objective needs one scale for all sample sites (the data plate's N/B); found {scales}"
            )
        return distinct.pop()

    def _laplacian(self, observed, x_eval, score_x, batch, create_graph):
        r"""Δ_x log p_θ(x, z), per data point: exact for Normal observations, else Hutchinson."""
        method = self.laplacian
        normals = [_base(site["fn"]) for site in observed]
        all_normal = all(isinstance(fn, dist.Normal) for fn, _ in normals) and len(observed) == 1
        if method == "exact" and not all_normal:
            raise ValueError(
                "laplacian='exact' is implemented for a factorised Normal likelihood "
                f"(got {[type(fn).__name__ for fn, _ in normals]}); use laplacian='hutchinson'"
            )
        if method in ("auto", "exact") and all_normal:
            fn, _ = normals[0]
            # ∂²/∂x_i² log N(x_i; μ_i, s_i) = −1/s_i², constant in x: Δ = −Σ_i 1/s_i²
            curvature = -fn.scale.pow(-2).expand(x_eval.shape)
            return curvature.reshape(batch, -1).sum(-1)
        estimate = 0.0
        for _ in range(self.num_probes):
            probe = torch.randint(0, 2, x_eval.shape, device=x_eval.device).to(x_eval.dtype) * 2 - 1
            (hvp,) = torch.autograd.grad((score_x * probe).sum(), x_eval, create_graph=True)
            estimate = estimate + (hvp * probe).reshape(batch, -1).sum(-1)
        return estimate / self.num_probes

    # ---- the ELBO interface --------------------------------------------------------------
    def differentiable_loss(self, model, guide, *args, **kwargs):
        """s Σ_b Ĵ(x_b), Ĵ averaged over the L particles: a scalar with gradients in (θ, φ)."""
        loss = 0.0
        with torch.enable_grad():
            for _ in range(self.num_particles):
                t = self.terms(model, guide, *args, **kwargs)
                loss = loss + t["scale"] * t["total"].sum()
        loss = loss / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        """The loss as a float (scores need autograd, so it runs with gradients enabled)."""
        with torch.enable_grad():
            total = 0.0
            for _ in range(self.num_particles):
                t = self.terms(model, guide, *args, create_graph=False, **kwargs)
                total += t["scale"] * float(t["total"].detach().sum())
        return total / self.num_particles

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """The loss as a float, after back-propagating its gradient (for :class:`pyro.infer.SVI`)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def __call__(self, model, guide, *args, **kwargs):
        return self.differentiable_loss(model, guide, *args, **kwargs)


def _is_subsample(site):
    return site["type"] == "sample" and type(site["fn"]).__name__ == "_Subsample"


def _sq_norm(g, batch):
    return g.reshape(batch, -1).pow(2).sum(-1)


def fisher_objective(num_particles=1, **kwargs):
    """The factory :data:`pyro_vae.objectives.OBJECTIVES` holds under ``"fisher"``."""
    return FisherDivergence(num_particles=num_particles, **kwargs)


__all__ = ["FisherDivergence", "fisher_objective", "LAPLACIANS"]
