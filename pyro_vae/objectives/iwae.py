r"""The importance weighted bound of Burda, Grosse & Salakhutdinov (2015) as a Pyro ELBO.

Per data point, L_K(x) = E[log (1/K) Σ_k p(x, z_k) / q(z_k|x)] with z_1..z_K ~ q(z|x);
L_1 is the ELBO and L_K ≤ L_{K+1} ≤ log p(x).
"""

import math

import pyro.infer
import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled, torch_sum
from pyro.util import check_if_enumerated, warn_if_nan

#: Name of the plate that :class:`pyro.infer.ELBO` wraps around model and guide to draw
#: the particles in one vectorized pass.
PARTICLE_PLATE = "num_particles_vectorized"


class IWAE_ELBO(pyro.infer.ELBO):
    r"""The importance weighted autoencoder bound (Burda, Grosse & Salakhutdinov 2015),
    one per data point x_b of the batch:

        L_K(x_b) = E[ log (1/K) Σ_{k=1..K} w_kb ],   w_kb = p(x_b, z_kb) / q(z_kb | x_b),
        z_1b, ..., z_Kb ~ q(z | x_b) independently.

    L_1 is the ELBO; L_K ≤ L_{K+1} ≤ log p(x_b), and L_K → log p(x_b) as K → ∞.

    The K particles are drawn in one vectorized pass: model and guide run inside an outer
    ``pyro.plate`` of size K at dim −(max_plate_nesting + 1) (Pyro's
    ``vectorize_particles``). The guide is traced, the model is replayed against it
    (:func:`pyro.infer.enum.get_importance_trace`), and

        log w_kb = Σ_{model sites s} log p_s − Σ_{guide sites s} log q_s,

    each site's log-density summed over its plates other than the *data plate*, the one
    plate every sample site shares (Pyro's ``get_dependent_plate_dims``). Every sample
    site must sit inside it: a global latent outside the data plate couples the data
    points and there is no per-data-point bound; that is a :class:`ValueError`.

    The loss is ``−s Σ_b L̂_K(x_b)``, with s the data plate's scale N/B, so it is on the
    same footing as the package's other objectives. The weights use each site's unscaled
    log-density: Pyro's :class:`~pyro.infer.RenyiELBO` with ``alpha=0`` computes the same
    per-data-point bound at s = 1, but takes the *scaled* log-densities, i.e. the weights
    w^s, inside its log-sum-exp when s ≠ 1.

    Gradients (:meth:`differentiable_loss`): at reparameterized sites the pathwise
    gradient of L̂_K, i.e. Σ_k w̃_kb ∇ log w_kb with the normalized weights
    w̃_kb = w_kb / Σ_j w_jb (the IWAE gradient). At guide sites without ``rsample`` the
    score-function term L̂_K(x_b) ∇ Σ_k log q(z_kb | x_b) is added (unbiased, no
    baseline, so of high variance: prefer reparameterized guides).

    :param int num_particles: K ≥ 1, importance samples per data point.
    :param int max_plate_nesting: plates nested inside the particle plate (1: only the
        data plate, as in :class:`~pyro_vae.models.VAE`).
    """

    def __init__(self, num_particles=5, max_plate_nesting=1, strict_enumeration_warning=True):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"the IWAE bound needs K = num_particles ≥ 1 (an integer), got {num_particles!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def log_weights(self, model, guide, *args, **kwargs):
        """Draw K particles per data point and return their log importance weights.

        :returns: ``(log_w, log_q_score, scale)``: ``log_w`` of shape ``(K, B)`` (with
            gradients), ``log_q_score`` of shape ``(K, B)``, the log-density of the guide
            sites that have no reparameterized sampler (None if there are none), and the
            data plate's scale s (a float, N/B or 1).
        """
        model_trace, guide_trace = next(self._get_traces(model, guide, args, kwargs))
        sites = [
            (name, site, trace is guide_trace)
            for trace in (model_trace, guide_trace)
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
        ]
        data_frame = self._data_frame(sites)
        sum_dims = get_dependent_plate_dims([site for _, site, _ in sites])
        K, B = self.num_particles, data_frame.size
        log_w, score, scales = 0.0, None, {}
        for name, site, in_guide in sites:
            # Pyro's site["log_prob"] is already multiplied by the site's scale; the weights
            # need the unscaled log-density (masked like Pyro's), the scale comes after.
            log_prob = torch_sum(scale_and_mask(site["unscaled_log_prob"], mask=site["mask"]), sum_dims)
            if in_guide:
                log_w = log_w - log_prob
                if not is_identically_zero(site["score_parts"].score_function):
                    score = log_prob + (0.0 if score is None else score)  # the site's log q, unscaled
            else:
                log_w = log_w + log_prob
            scale = site["scale"]
            where = f"{'guide' if in_guide else 'model'} site {name!r}"
            scales[where] = float(scale) if not torch.is_tensor(scale) or scale.numel() == 1 else None
        distinct = set(scales.values())
        if len(distinct) != 1 or None in distinct:
            raise ValueError(
                "the IWAE bound needs one scale for all sample sites (the data plate's N/B); "
                f"found {scales}. A site scaled on its own (poutine.scale, β-annealing) makes "
                "the importance weights no longer p(x, z)/q(z|x)"
            )
        log_w = log_w.expand(K, B) if log_w.dim() < 2 else log_w.reshape(K, B)
        if score is not None:
            score = score.expand(K, B) if score.dim() < 2 else score.reshape(K, B)
        return log_w, score, distinct.pop()

    @staticmethod
    def _data_frame(sites):
        """The data plate: the one vectorized plate, other than the particle plate, that
        every sample site of model and guide sits in."""
        if not sites:
            raise ValueError("the model and guide have no sample sites")

        def plates(site):
            return {f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE}

        common = set.intersection(*(plates(site) for _, site, _ in sites))
        if len(common) == 1:
            return common.pop()
        where = {
            f"{'guide' if g else 'model'} site {name!r}": sorted(f.name for f in plates(site))
            for name, site, g in sites
        }
        if not common:
            raise ValueError(
                "the IWAE bound is per data point, so every sample site must sit inside the data "
                f"plate; no plate holds them all (plates of each site: {where}). A global latent "
                "outside the data plate has no per-data-point bound"
            )
        raise ValueError(
            f"every sample site sits in the plates {sorted(f.name for f in common)}; the IWAE "
            "bound needs exactly one shared (data) plate"
        )

    def bound(self, model, guide, *args, **kwargs):
        """One draw of the estimator L̂_K(x_b) = log (1/K) Σ_k w_kb per data point, shape
        ``(B,)``, unscaled, with pathwise gradients (no score-function term)."""
        log_w, _, _ = self.log_weights(model, guide, *args, **kwargs)
        return torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """−s Σ_b L̂_K(x_b), a scalar whose gradient is the IWAE gradient (plus the
        score-function term at non-reparameterized guide sites); its value is the loss."""
        log_w, score, scale = self.log_weights(model, guide, *args, **kwargs)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        surrogate = bound
        if score is not None:
            # value unchanged (score − score.detach() = 0), gradient L̂_K ∇ Σ_k log q(z_k|x)
            surrogate = bound + bound.detach() * (score - score.detach()).sum(0)
        loss = -scale * surrogate.sum()
        warn_if_nan(loss, "loss")
        return loss

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs):
        """−s Σ_b L̂_K(x_b) as a float."""
        return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """The loss as a float, after back-propagating its gradient (for :class:`pyro.infer.SVI`)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()
