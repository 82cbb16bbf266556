r"""The Fisher autoencoder objective: the VAE's model and guide, fitted by the
Fisher divergence of the joints instead of the KL divergence.

Elkhalil, Hasan, Ding, Farsiu & Tarokh, "Fisher Auto-Encoders", AISTATS 2021 (PMLR 130:
352–360) fit the model's joint p_θ(x, z) = p(z) p_θ(x|z) to the "encoder joint"
q_φ(x, z) = p_d(x) q_φ(z|x) by minimizing the Fisher divergence between them,

    F(q_φ, p_θ) = E_{q_φ(x,z)} ‖∇_{(x,z)} log q_φ(x, z) − ∇_{(x,z)} log p_θ(x, z)‖²,

a sum of a z-part and an x-part (‖·‖² over the stacked vector (x, z) splits). The paper's
equations are numbered here as best I know them: the Fisher divergence of the joints is
its Eq. (4)–(5) and the tractable objective after integration by parts its Theorem 1 /
Eq. (7)–(8); I could not check these numbers against the paper offline, so read them as
"the definition" and "the tractable form" rather than as exact references. The derivation
below is self-contained and is what :class:`FisherDivergence` computes; the tests check it
against closed forms on probabilistic PCA.

Derivation, term by term (½F, the convention of Hyvärinen 2005)
---------------------------------------------------------------

Write the scores (all partial derivatives: ∂_z at fixed x, ∂_x at fixed z)

    a(x, z) = ∂_z log q_φ(z|x),           b(x, z) = ∂_z log p_θ(x, z) = ∂_z log p(z) + ∂_z log p_θ(x|z),
    u(x, z) = ∂_x log q_φ(z|x),           v(x, z) = ∂_x log p_θ(x, z) = ∂_x log p_θ(x|z),
    s_d(x)  = ∇_x log p_d(x)  (the data's own score: unknown).

Since log q_φ(x, z) = log p_d(x) + log q_φ(z|x), the two parts of ½F are

    (Z)  ½ E_q ‖a − b‖²                                  (the posterior's score matched to q's),
    (X)  ½ E_q ‖s_d + u − v‖².

(Z) is computable as it stands. (X) holds the unknown s_d; expand it,

    (X) = ½ E‖s_d‖² + E[s_d · (u − v)] + ½ E‖u − v‖².

The first term does not depend on (θ, φ): it is the constant C that Hyvärinen's trick
drops. The cross term is integrated by parts in x at fixed z (Hyvärinen 2005, Theorem 1),
using p_d ∇_x log p_d = ∇_x p_d and assuming p_d(x) q_φ(z|x) (u − v) → 0 at the boundary:

    E[s_d · (u − v)] = ∫∫ q_φ(z|x) ∇_x p_d(x) · (u − v) dx dz
                     = −∫∫ p_d(x) ∇_x · [q_φ(z|x) (u − v)] dx dz
                     = −E_q[ Δ_x log q_φ(z|x) − Δ_x log p_θ(x, z) + u · (u − v) ],

with Δ_x = Σ_i ∂²/∂x_i² the Laplacian (the trace of the Hessian in x). Collecting terms, the
u·v cross products cancel and

    (X) = C + E_q[ ½‖v‖² + Δ_x log p_θ(x, z) − ½‖u‖² − Δ_x log q_φ(z|x) ].

The last two terms need the encoder's second derivatives in x. They are removed exactly by
the identity, for every x and φ,

    E_{q_φ(z|x)}[ Δ_x log q_φ(z|x) + ‖∂_x log q_φ(z|x)‖² ] = ∫ Δ_x q_φ(z|x) dz = Δ_x 1 = 0,

so −½‖u‖² − Δ_x log q has the same conditional expectation as +½‖u‖², and (as the identity
holds for all φ, the expectations and their gradients agree). Hence the objective
:class:`FisherDivergence` estimates, per data point x_b, is

    J(x_b) = E_{q_φ(z|x_b)} [ ½‖a − b‖²                       (Z: latent score match)
                              + ½‖v‖² + Δ_x log p_θ(x_b, z)    (X: Hyvärinen's score of the decoder)
                              + ½‖u‖² ]                         (X: the encoder's sensitivity to x)

and ½F(q_φ, p_θ) = E_{p_d}[J(x)] + C with C = ½E_{p_d}‖∇_x log p_d‖² ≥ 0, so the loss can be
negative; its minimum −C is reached where q_φ(x, z) = p_θ(x, z). The last term is a
contractive-autoencoder-like penalty on ∂_x of the encoder; the paper's form may write it
before the identity above (with the encoder's Laplacian); both have the same expectation.

What is exact and what is estimated
-----------------------------------

- a, b, u, v are exact: first derivatives by ``torch.autograd.grad(..., create_graph=True)``
  of the traces' log-densities, so the loss can be differentiated again for training.
- Δ_x log p_θ(x, z): for a factorised Normal likelihood p_θ(x|z) = Π_i N(x_i; μ_i(z), s_i)
  (:class:`~pyro_vae.likelihoods.Gaussian`) the Hessian in x is diagonal and constant,
  ∂²/∂x_i² log N(x_i; μ_i, s_i) = −1/s_i², so Δ_x log p_θ = −Σ_i 1/s_i² exactly
  (``laplacian="exact"``, the default where it applies). Otherwise (``laplacian="hutchinson"``)
  it is Hutchinson's unbiased estimator Δ ≈ (1/P) Σ_p ε_pᵀ (∇_x ∇_xᵀ log p) ε_p with
  Rademacher probes ε_p, one Hessian-vector product each.
- The expectation over q_φ(z|x) is a Monte Carlo average over ``num_particles``
  reparameterized draws z = μ_φ(x) + σ_φ(x) ⊙ ε, so the gradient in φ is pathwise.
- The expectation over p_d is the minibatch: the loss is s Σ_b Ĵ(x_b), s = N/B the data
  plate's scale, like the package's ELBO losses.

How it is computed from the Pyro program
----------------------------------------

1. The guide is traced once at the data (detached) to draw z = μ_φ(x) + σ_φ(x) ε.
2. A zero shift δ (requiring grad) is added to every latent value, and the guide and the
   model are replayed at (x', z + δ), x' a copy of x that requires grad. Then ∂/∂δ is the
   partial score in z at fixed x and ∂/∂x' the partial score in x at fixed z, while the
   loss still depends on φ through z (step 1) and through q_φ(z|x') (step 2).
3. log q = Σ guide-site log-densities, log p = Σ model-site log-densities (each summed over
   its event dimensions, one number per data point), from ``trace.compute_log_prob()``:
   the sites' *unscaled* log-densities (masked), since the plate's scale N/B must multiply
   the loss once, not the scores inside the squares.

Wenliang (2022, "On the failure of variational score matching for VAE models") reports that
this objective can fit far worse models than the ELBO; the README section "Fisher autoencoder" has what we
measured.
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
    ``loss_and_grads``), so :class:`pyro.infer.SVI` and :class:`~pyro_vae.training.Trainer`
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
            raise ValueError("the Fisher objective differentiates with respect to the data, so x must be a "
                             f"floating-point tensor, got {type(x).__name__ if not torch.is_tensor(x) else x.dtype}")
        x_data = x.detach()
        guide_trace = poutine.trace(guide).get_trace(x_data, *args, **kwargs)
        latents = [name for name, site in guide_trace.nodes.items()
                   if site["type"] == "sample" and not site["is_observed"]
                   and not site["infer"].get("_do_not_score", False) and not _is_subsample(site)]
        if not latents:
            raise ValueError("the guide has no latent sample sites; the Fisher objective needs a latent z")
        shifted = guide_trace.copy()
        deltas = []
        for name in latents:
            site = guide_trace.nodes[name]
            fn, _ = _base(site["fn"])
            if not site["fn"].has_rsample or isinstance(fn, dist.Delta):
                raise ValueError(f"the Fisher objective needs a reparameterized guide with a density at latent "
                                 f"site {name!r} (got {type(fn).__name__}); scores of a point mass or of a "
                                 "non-reparameterized site are not available")
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
        return {"latent": latent, "decoder": decoder, "laplacian": laplacian, "encoder": encoder,
                "total": total, "z": {n: guide_trace.nodes[n]["value"].detach() for n in latents},
                "scale": scale}

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
                    "(objective 'elbo', 'meanfield' or 'iwae')")
            if site["value"] is x_eval:
                observed.append(site)
        if not observed:
            raise ValueError("no observed site of the model takes the data x (the first argument) as its value; "
                             "the Fisher objective needs the model to observe x")
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
                raise ValueError(f"site {name!r} has log-density of shape {tuple(lp.shape)}; the Fisher objective "
                                 f"needs one number per data point, shape ({batch},): put every site in the "
                                 "data plate (dim -1) with its event dimensions declared (.to_event)")
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
            raise ValueError("the Fisher objective needs one scale for all sample sites (the data plate's N/B); "
                             f"found {scales}")
        return distinct.pop()

    def _laplacian(self, observed, x_eval, score_x, batch, create_graph):
        r"""Δ_x log p_θ(x, z), per data point: exact for Normal observations, else Hutchinson."""
        method = self.laplacian
        normals = [_base(site["fn"]) for site in observed]
        all_normal = all(isinstance(fn, dist.Normal) for fn, _ in normals) and len(observed) == 1
        if method == "exact" and not all_normal:
            raise ValueError("laplacian='exact' is implemented for a factorised Normal likelihood "
                             f"(got {[type(fn).__name__ for fn, _ in normals]}); use laplacian='hutchinson'")
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
