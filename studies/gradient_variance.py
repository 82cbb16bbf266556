r"""Score-function against reparameterized gradients, measured with Pyro's own ELBOs: a study.

    python studies/gradient_variance.py --part toy --out runs/gradvar-toy
    python studies/gradient_variance.py --part vae --data ../shared/data --out runs/gradvar-vae

Two ways to estimate ∇φ E_q_φ[f(z)]:

- the **score function** (log-derivative) estimator, E_q[f(z) ∇φ log q_φ(z)]: Pyro's
  ``TraceGraph_ELBO`` at a sample site whose distribution has no ``rsample``
  (:class:`~pyro_vae.guides.NonReparameterizedNormal`);
- the **reparameterized** (pathwise) estimator, E_p(ε)[∇φ f(g_φ(ε))] with
  z = g_φ(ε) = φ + ε: Pyro's ``Trace_ELBO`` at an ordinary ``Normal`` site.

Part 1, the toy (called Example 1.5 below): estimate ∇φ E_q[f(x)] for f(x) = x² and
q_φ(x) = N(φ, 1), written as a Pyro model and
guide (:func:`toy_model`, :func:`toy_guide`), so that the gradient Pyro's ELBOs compute
is the gradient of E_q[x²] = φ² + 1, that is 2φ. Per sample, with x = φ + ε, ε ~ N(0, 1)
and a = ½ log 2π, the three estimators measured here are (derived in
:func:`toy_variance`)

================  ======================  ===========  ====================================
route             per-sample estimate     mean         variance
================  ======================  ===========  ====================================
``reparam``       2x = 2(φ + ε)           2φ           4
``score``         x²(x − φ) = x² ε        2φ           φ⁴ + 14φ² + 15
``score-entropy`` (x − φ)(x² + log q(x))  2φ           φ⁴ + (11 − 2a)φ² + a² − 3a + 15/4
================  ======================  ===========  ====================================

and the mean of N samples has 1/N of that variance (:func:`measure_toy`).

Part 2, the VAE: the encoder's gradient by the score-function route (with none, a
decaying-average or a neural baseline, :meth:`~pyro_vae.guides.DiagonalNormal.site_infer`)
against the reparameterized route, at fixed network parameters
(:func:`vae_gradient_variance`), and −ELBO curves of both over the same steps
(:func:`train_curve`).
"""

import copy
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from numpy.polynomial.hermite_e import hermegauss
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from torch.distributions import constraints
from tqdm.auto import tqdm

from pyro_vae.cli.common import (
    Parser,
    UsageError,
    check_out_dir,
    int_at_least,
    nonnegative_int,
    positive_float,
    positive_int,
)
from pyro_vae.data import DATASETS, DataError, load_dataset
from pyro_vae.guides import DiagonalNormal, NonReparameterizedNormal
from pyro_vae.models import VAE, build_model
from pyro_vae.objectives import make_objective
from pyro_vae.plots import plt, save_figure
from pyro_vae.runs import save_json
from pyro_vae.train import Trainer, evaluate_loss, loss_function

#: a = ½ log 2π, the constant of log N(x; φ, 1) = −a − ½(x − φ)².
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ---- part 1: the toy of Example 1.5 as Pyro programs -------------------------------------
@dataclass(frozen=True)
class ToyRoute:
    """One way of estimating ∇φ E[x²] with Pyro.

    :ivar str label: the name in tables and figures.
    :ivar elbo: the Pyro ELBO class.
    :ivar bool reparameterized: whether the guide's site has ``rsample``.
    :ivar str prior: the model's prior over x, ``"flat"`` or ``"frozen"`` (:func:`toy_model`).
    :ivar str estimator: the per-sample estimate it computes.
    """

    label: str
    elbo: type
    reparameterized: bool
    prior: str
    estimator: str


TOY_ROUTES = {
    "reparam": ToyRoute("reparameterized (Trace_ELBO)", Trace_ELBO, True, "flat", "2(φ + ε)"),
    "score": ToyRoute("score function (TraceGraph_ELBO)", TraceGraph_ELBO, False, "frozen", "x²(x − φ)"),
    "score-entropy": ToyRoute(
        "score function, log q in the cost", TraceGraph_ELBO, False, "flat", "(x − φ)(x² + log q(x))"
    ),
}

#: The sample sizes N of the variance figure (toy_variance.png).
SAMPLE_SIZES = (10, 100, 1_000, 10_000, 100_000)


def _toy_route(route):
    try:
        return TOY_ROUTES[route]
    except KeyError:
        raise ValueError(f"unknown route {route!r}; choose from {', '.join(TOY_ROUTES)}") from None


def toy_model(phi, reparameterized=True, prior="flat"):
    r"""The model of Example 1.5: an unnormalized density p̃(x) = p(x) e^{−f(x)},
    f(x) = x², for each of R independent repetitions (the plate ``"repeats"``).

    The cost enters as ``pyro.factor("cost", −x²)``, so the ELBO is

        L(φ) = E_q[log p(x) − x² − log q_φ(x)] = −E_q[x²] − KL(q_φ ‖ p),

    and −∇φ L = ∇φ E_q[x²] = 2φ exactly when the KL term's gradient vanishes:

    - ``prior="flat"``: p(x) = 1 (``ImproperUniform``), log p = 0. Nothing in the model
      depends on φ, and −KL(q ‖ p) = H[q_φ] = ½ log 2πe is the entropy of a unit-variance
      Normal, the same for every φ.
    - ``prior="frozen"``: p(x) = N(x; φ̄, 1), the guide frozen at the current φ
      (φ̄ = ``phi.detach()``, a constant: no gradient reaches φ through the model).
      KL(q_φ ‖ q_φ̄) = ½(φ − φ̄)² is zero, and so is its gradient, at φ = φ̄; the ELBO's
      integrand is then −x² alone, per sample.

    :param torch.Tensor phi: ``(R,)``, the guide's φ of each repetition (the model uses
        only its size and, for the frozen prior, its detached value).
    :param bool reparameterized: unused here; the guide's switch (model and guide take the
        same arguments).
    :param str prior: ``"flat"`` or ``"frozen"``.
    """
    if prior not in ("flat", "frozen"):
        raise ValueError(f"unknown prior {prior!r}; choose 'flat' or 'frozen'")
    with pyro.plate("repeats", phi.shape[-1]):
        if prior == "flat":
            p = dist.ImproperUniform(constraints.real, (), ())
        else:
            p = dist.Normal(phi.detach(), 1.0)
        x = pyro.sample("x", p)
        pyro.factor("cost", -x.pow(2))


def toy_guide(phi, reparameterized=True, prior="flat"):
    """The guide of Example 1.5: q_φ(x) = N(φ, 1) for each repetition.

    :param torch.Tensor phi: ``(R,)``, requiring grad: the gradient lands in ``phi.grad``.
    :param bool reparameterized: an ordinary ``Normal`` (x = φ + ε carries the gradient)
        or a :class:`~pyro_vae.guides.NonReparameterizedNormal` (``TraceGraph_ELBO``
        then uses the score function).
    """
    normal = dist.Normal if reparameterized else NonReparameterizedNormal
    with pyro.plate("repeats", phi.shape[-1]):
        pyro.sample("x", normal(phi, torch.ones_like(phi)))


def _backward(objective, model, guide, *args):
    """Gradients of the objective's loss into ``.grad`` (``differentiable_loss`` where the
    objective has it, else its own ``loss_and_grads``, e.g. ``TraceGraph_ELBO``)."""
    loss_fn, differentiable = loss_function(objective)
    if differentiable:
        loss_fn(model, guide, *args).backward()
    else:
        loss_fn(model, guide, *args)


def toy_gradients(phi, route="reparam", num_samples=1, repeats=1, chunk=2**21):
    r"""R independent estimates of ∇φ E_q_φ[x²] at φ, each from N samples, as Pyro computes
    them: the gradient of the ELBO loss of (:func:`toy_model`, :func:`toy_guide`),
    whose N samples are vectorized particles (the loss is their mean) and whose R
    repetitions are the plate ``"repeats"`` over a vector of R copies of φ.

    :param float phi: φ.
    :param str route: a key of :data:`TOY_ROUTES`.
    :param int num_samples: N.
    :param int repeats: R.
    :param int chunk: at most this many x's (N × repetitions) in one ELBO call.
    :returns: ``(R,)`` float64 tensor.
    """
    r = _toy_route(route)
    if int(num_samples) < 1 or int(repeats) < 1:
        raise ValueError(f"num_samples and repeats must be positive, got {num_samples} and {repeats}")
    num_samples, repeats = int(num_samples), int(repeats)
    elbo = r.elbo(num_particles=num_samples, vectorize_particles=num_samples > 1, max_plate_nesting=1)
    per_call = max(1, chunk // num_samples)
    out = []
    for start in range(0, repeats, per_call):
        phis = torch.full((min(per_call, repeats - start),), float(phi), dtype=torch.float64, requires_grad=True)
        _backward(elbo, toy_model, toy_guide, phis, r.reparameterized, r.prior)
        out.append(phis.grad.detach())
    return torch.cat(out)


def toy_estimate(route, phi, eps):
    """The per-sample estimate of ∇φ E[x²] that ``route`` computes, at x = φ + ε
    (any array type): the formulas of :data:`TOY_ROUTES`."""
    x = phi + eps
    if route == "reparam":
        return 2 * x
    if route == "score":
        return x**2 * eps
    if route == "score-entropy":
        return eps * (x**2 - HALF_LOG_2PI - 0.5 * eps**2)
    raise ValueError(f"unknown route {route!r}; choose from {', '.join(TOY_ROUTES)}")


def toy_variance(route, phi):
    r"""The closed-form variance of one sample of a route's estimator at φ.

    With x = φ + ε, ε ~ N(0, 1), the Gaussian moments E[ε^{2k}] = (2k − 1)!! (1, 3, 15) and
    E[ε^{2k+1}] = 0 give:

    **reparameterized**, g = ∇φ (φ + ε)² = 2(φ + ε): E g = 2φ, Var g = 4 Var ε = 4. The
    entropy adds nothing: log q_φ(φ + ε) = −a − ½ε² does not depend on φ.

    **score function**, g = x² ∇φ log q_φ(x) = x²(x − φ) = x² ε
    = φ²ε + 2φε² + ε³: E g = 2φ, and
    E g² = E[ε²(φ + ε)⁴] = φ⁴ E ε² + 6φ² E ε⁴ + E ε⁶ = φ⁴ + 18φ² + 15, so

        Var g = φ⁴ + 14φ² + 15.

    **score function with log q in the cost** (flat prior: TraceGraph_ELBO's cost for x is
    x² + log q_φ(x), since Pyro drops E[∇φ log q] = 0 but keeps log q among the costs),
    g = ε(x² + log q(x)) = ε x² − aε − ½ε³, a = ½ log 2π. With h = aε + ½ε³:
    E h = 0, E h² = a² + 3a + 15/4, E[ε x² h] = φ²(a + 3/2) + 3a + 15/2, so

        Var g = φ⁴ + (11 − 2a)φ² + a² − 3a + 15/4

    (1.84 at φ = 0, below the reparameterized 4: there log q's ε³ cancels half of x²ε;
    12.0 at φ = 1 and 54.5 at φ = 2).

    The mean of N independent samples has variance Var g / N.
    """
    _toy_route(route)
    if route == "reparam":
        return 4.0
    if route == "score":
        return phi**4 + 14 * phi**2 + 15
    a = HALF_LOG_2PI
    return phi**4 + (11 - 2 * a) * phi**2 + a * a - 3 * a + 15 / 4


def toy_moments(route, phi, nodes=20):
    r"""Mean, variance and fourth central moment of one sample of a route's estimator,
    by Gauss–Hermite quadrature (``numpy.polynomial.hermite_e.hermegauss``): exact here,
    since each estimate is a polynomial of degree ≤ 3 in ε (degree ≤ 12 in the fourth
    moment, and ``nodes`` points integrate degree 2·nodes − 1 exactly)."""
    t, w = hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    g = toy_estimate(route, float(phi), t)
    mean = float(np.sum(w * g))
    var = float(np.sum(w * (g - mean) ** 2))
    m4 = float(np.sum(w * (g - mean) ** 4))
    return mean, var, m4


def sample_variance_se(route, phi, num_samples, repeats):
    r"""The standard error of the sample variance s² (divisor R − 1) of R estimates,
    each the mean of N samples:

        Var s² = μ₄,N / R − σ⁴_N (R − 3) / (R (R − 1)),

    with σ²_N = σ²/N and μ₄,N = μ₄/N³ + 3(N − 1)σ⁴/N³ the variance and fourth central
    moment of a mean of N i.i.d. samples (σ², μ₄ from :func:`toy_moments`)."""
    _, var, m4 = toy_moments(route, phi)
    n, r = float(num_samples), float(repeats)
    var_n = var / n
    m4_n = m4 / n**3 + 3 * (n - 1) * var**2 / n**3
    return math.sqrt(m4_n / r - var_n**2 * (r - 3) / (r * (r - 1)))


def measure_toy(
    phis=(0.0, 1.0, 2.0), sample_sizes=SAMPLE_SIZES, repeats=500, routes=tuple(TOY_ROUTES), seed=0, progress=True
):
    """The measurements of the variance figure (toy_variance.png): for every route, φ and N, R estimates of ∇φ E[x²] from
    :func:`toy_gradients`, their mean and variance beside the closed forms.

    :returns: a list of rows (dicts): ``route, phi, N, repeats, mean, mean_se`` (the
        closed-form standard error of the mean of R estimates), ``var`` (the variance across
        repetitions), ``var_closed`` (:func:`toy_variance` / N), ``var_se``
        (:func:`sample_variance_se`), and ``z = (var − var_closed) / var_se``.
    """
    if int(repeats) < 4:
        raise ValueError(f"repeats must be at least 4 to estimate a variance and its error, got {repeats}")
    pyro.set_rng_seed(seed)
    rows = []
    todo = [(r, float(p), int(n)) for r in routes for p in phis for n in sample_sizes]
    for route, phi, n in tqdm(todo, desc="toy", disable=not progress, leave=False):
        g = toy_gradients(phi, route, n, repeats)
        var_closed = toy_variance(route, phi) / n
        var, se = g.var().item(), sample_variance_se(route, phi, n, repeats)
        rows.append(
            dict(
                route=route,
                phi=phi,
                N=n,
                repeats=int(repeats),
                mean=g.mean().item(),
                mean_se=math.sqrt(var_closed / repeats),
                var=var,
                var_closed=var_closed,
                var_se=se,
                z=(var - var_closed) / se,
            )
        )
    return rows


# ---- part 2: the VAE ---------------------------------------------------------------------
#: The VAE's routes: (reparameterized?, baseline), trained with "elbo" or "tracegraph".
VAE_ROUTES = {
    "reparam": (True, None),
    "score": (False, None),
    "score+decaying": (False, "decaying"),
    "score+neural": (False, "neural"),
}

VAE_LABELS = {
    "reparam": "reparameterized (Trace_ELBO)",
    "score": "score function, no baseline",
    "score+decaying": "score function, decaying-average baseline",
    "score+neural": "score function, neural baseline",
}


def _vae_route(route):
    try:
        return VAE_ROUTES[route]
    except KeyError:
        raise ValueError(f"unknown VAE route {route!r}; choose from {', '.join(VAE_ROUTES)}") from None


def route_objective(route):
    """``"elbo"`` (``Trace_ELBO``) for the reparameterized route, ``"tracegraph"``
    (``TraceGraph_ELBO``) for the score-function ones."""
    return "elbo" if _vae_route(route)[0] else "tracegraph"


def vae_variant(vae, route, baseline_beta=0.9):
    """A VAE that shares ``vae``'s encoder, decoder and likelihood (the same parameter
    tensors) and differs only in its z site: reparameterized or not, with the route's
    baseline (:class:`~pyro_vae.guides.DiagonalNormal`).

    :param vae: a :class:`~pyro_vae.models.VAE` with a diagonal guide.
    :param str route: a key of :data:`VAE_ROUTES`.
    """
    reparameterized, baseline = _vae_route(route)
    if not isinstance(vae.q, DiagonalNormal):
        raise TypeError(f"the score-function contrast needs the diagonal guide, not {type(vae.q).__name__}")
    encoder = vae.q.encoder
    family = DiagonalNormal(
        encoder, z_dim=vae.z_dim, reparameterized=reparameterized, baseline=baseline, baseline_beta=baseline_beta
    )
    return VAE(encoder, vae.decoder, vae.z_dim, likelihood=vae.likelihood, guide=family)


def _zero_grad(module):
    for p in module.parameters():
        p.grad = None


def encoder_gradient_moments(vae, x, objective, repeats=200):
    r"""Mean and variance, per encoder parameter, of R independent estimates of the
    gradient of −ELBO(x)/B (nats per data point of the batch ``x`` of B points) with
    respect to the encoder's parameters φ, at fixed network parameters.

    Welford's running moments in float64; the network is not changed.

    :param vae: a VAE (:func:`vae_variant`); the loss is the batch's own (no ``num_data``).
    :param x: the batch ``(B, x_dim)``.
    :param objective: a name or an ELBO object (one particle per estimate).
    :param int repeats: R ≥ 2.
    :returns: ``(mean, var)``, each ``(P,)`` float64 over the P encoder parameters.
    """
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to estimate a variance, got {repeats}")
    objective = make_objective(objective) if isinstance(objective, str) else objective
    params = list(vae.q.encoder.parameters())
    mean = m2 = None
    for k in range(1, repeats + 1):
        _zero_grad(vae)
        _backward(objective, vae.model, vae.guide, x)
        g = torch.cat([p.grad.reshape(-1) for p in params]).double() / x.shape[0]
        if mean is None:
            mean, m2 = torch.zeros_like(g), torch.zeros_like(g)
        delta = g - mean
        mean += delta / k
        m2 += delta * (g - mean)
    _zero_grad(vae)
    return mean, m2 / (repeats - 1)


def settle_baseline(vae, data, steps=200, batch_size=100, lr=1e-2, seed=0):
    """At fixed network parameters, let the baseline of a score-function variant reach the
    state training gives it: ``steps`` ``TraceGraph_ELBO`` evaluations on random batches of
    ``data`` update the decaying average (in the current param store), and for the neural
    baseline an Adam step on ``baseline_net`` alone follows each. Encoder and decoder are
    not changed."""
    posterior = vae.q
    if getattr(posterior, "baseline", None) is None:
        return
    objective = make_objective("tracegraph")
    net = getattr(posterior, "baseline_net", None)
    opt = torch.optim.Adam(net.parameters(), lr=lr) if net is not None else None
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        for xb, _ in data.batches(batch_size, shuffle=True, generator=generator, drop_last=True):
            _zero_grad(vae)
            objective.loss_and_grads(vae.model, vae.guide, xb)
            if opt is not None:
                opt.step()
            done += 1
            if done == steps:
                break
    _zero_grad(vae)


def vae_gradient_variance(
    vae, x, data=None, routes=tuple(VAE_ROUTES), repeats=200, settle_steps=200, settle_lr=1e-2, seed=0, progress=True
):
    r"""The variance of the encoder's gradient, route by route, at ``vae``'s parameters.

    For each route, a :func:`vae_variant` sharing the networks (the loss is the
    batch's own, no ``num_data``) gives R estimates of ∇φ[−ELBO(x)/B] on the fixed batch ``x``
    (:func:`encoder_gradient_moments`). A baseline is first settled on random batches of
    ``data`` (:func:`settle_baseline`), then frozen (β = 1, no network update) while
    measuring, so that every estimate sees the same baseline.

    Summaries over the P encoder parameters: ``mean_var`` = (1/P) Σ_i Var g_i (the trace
    of the covariance over P), ``ratio`` = its ratio to the reparameterized route's,
    ``median_ratio`` = median_i of Var g_i / Var g_i^reparam, ``snr`` =
    ‖E g‖² / Σ_i Var g_i (the squared mean against the noise of one estimate).

    :returns: a list of rows (dicts), in the order of ``routes``.
    """
    rows, reference = [], None
    for route in tqdm(routes, desc="gradient variance", disable=not progress, leave=False):
        variant = vae_variant(vae, route)
        with pyro.get_param_store().scope():
            if variant.q.baseline is not None:
                if data is None:
                    raise ValueError(f"route {route!r} has a baseline to settle: pass data")
                settle_baseline(variant, data, settle_steps, x.shape[0], settle_lr, seed)
                variant.q.baseline_beta = 1.0  # frozen while measuring
            torch.manual_seed(seed)
            mean, var = encoder_gradient_moments(variant, x, route_objective(route), repeats)
        if route == "reparam":
            reference = var
        rows.append(
            dict(
                route=route,
                repeats=int(repeats),
                params=int(var.numel()),
                mean_var=var.mean().item(),
                snr=(mean.pow(2).sum() / var.sum()).item(),
                var_per_param=var,
            )
        )
    for row in rows:
        if reference is not None:
            row["ratio"] = row["mean_var"] / reference.mean().item()
            keep = reference > 0
            row["median_ratio"] = (row["var_per_param"][keep] / reference[keep]).median().item()
        del row["var_per_param"]
    return rows


def train_curve(
    vae, train, valid, objective="elbo", steps=1000, batch_size=100, lr=1e-3, eval_every=50, seed=0, progress=True
):
    """Train ``vae`` for ``steps`` SVI steps (:meth:`~pyro_vae.train.trainer.Trainer.step`, Adam)
    and record the −ELBO curve.

    Batches of equal size are drawn (the last, smaller one of each pass is dropped), all
    within one param store, so a decaying-average baseline persists from step to step.

    :returns: dict with ``step`` and ``train`` (the minibatch −ELBO of every step, nats per
        data point), ``valid_step`` and ``valid`` (the −ELBO of ``valid``, one particle,
        every ``eval_every`` steps and at the end).
    """
    trainer = Trainer(vae, train, objective=objective, lr=lr, batch_size=batch_size, seed=seed)
    curve = dict(step=[], train=[], valid_step=[], valid=[])

    def validate():
        curve["valid_step"].append(trainer.step_count)
        curve["valid"].append(evaluate_loss(vae, valid, "elbo"))

    bar = tqdm(total=steps, desc=f"train ({objective})", disable=not progress, leave=False)
    with pyro.get_param_store().scope():
        validate()
        while trainer.step_count < steps:
            for xb, _ in train.batches(batch_size, shuffle=True, generator=trainer.generator, drop_last=True):
                curve["train"].append(trainer.step(xb))
                curve["step"].append(trainer.step_count)
                bar.update()
                if trainer.step_count % eval_every == 0 or trainer.step_count == steps:
                    validate()
                if trainer.step_count == steps:
                    break
    bar.close()
    return curve


def vae_contrast(
    vae,
    train,
    valid,
    x,
    steps=1000,
    batch_size=100,
    lr=1e-3,
    eval_every=50,
    repeats=200,
    settle_steps=200,
    routes=tuple(VAE_ROUTES),
    seed=0,
    progress=True,
):
    """Part 2 in one call: gradient variances at ``vae``'s initial parameters, −ELBO curves of
    every route from those same parameters over the same ``steps``, and the gradient
    variances again at the parameters the reparameterized route reached.

    :param vae: the initial VAE (diagonal guide); it is not changed.
    :param x: the fixed batch of the variance measurements.
    :returns: dict with ``variance_init`` and ``variance_trained`` (lists of rows of
        :func:`vae_gradient_variance`) and ``curves`` ({route: :func:`train_curve`}).
    """
    kw = dict(repeats=repeats, settle_steps=settle_steps, seed=seed, progress=progress)
    result = dict(variance_init=vae_gradient_variance(vae, x, train, routes, **kw), curves={})
    trained = None
    for route in routes:
        torch.manual_seed(seed)  # the same baseline network for every run that has one
        model = vae_variant(copy.deepcopy(vae), route)
        result["curves"][route] = train_curve(
            model, train, valid, route_objective(route), steps, batch_size, lr, eval_every, seed, progress
        )
        if route == "reparam":
            trained = model
    if trained is not None:
        result["variance_trained"] = vae_gradient_variance(trained, x, train, routes, **kw)
    return result


# ---- tables and files --------------------------------------------------------------------
# ---- figures and tables ----------------------------------------------------------------
def plot_gradient_variance(rows, path, labels=None):
    """The variance figure (toy_variance.png): the variance of gradient estimators against the number of samples N,
    log-log, one panel per φ. Measured variances (markers, ±2 standard errors) and closed
    forms (dashed lines), one colour per route.

    :param rows: dicts with ``route, phi, N, var, var_closed, var_se``
        (:func:`measure_toy`).
    :param dict labels: ``{route: legend label}``.
    """
    if not rows:
        raise ValueError("no variance measurements to draw")
    labels = labels or {}
    phis = sorted({r["phi"] for r in rows})
    routes = list(dict.fromkeys(r["route"] for r in rows))
    fig, axes = plt.subplots(1, len(phis), figsize=(3.6 * len(phis) + 0.6, 3.9), dpi=120, sharey=True, squeeze=False)
    for ax, phi in zip(axes[0], phis):
        for k, route in enumerate(routes):
            sel = sorted((r for r in rows if r["route"] == route and r["phi"] == phi), key=lambda r: r["N"])
            n = [r["N"] for r in sel]
            color = f"C{k}"
            ax.errorbar(
                n,
                [r["var"] for r in sel],
                yerr=[2 * r["var_se"] for r in sel],
                fmt="o",
                ms=4,
                color=color,
                capsize=2,
                label=labels.get(route, route),
            )
            ax.plot(n, [r["var_closed"] for r in sel], "--", color=color, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"φ = {phi:g}", fontsize=10)
        ax.set_xlabel("samples N")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("variance of the gradient estimate")
    axes[0][-1].plot([], [], "k--", lw=1, label="closed form")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle("∇φ E[x²], x ~ N(φ, 1): variance across repetitions", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_elbo_curves(curves, path, labels=None, title="−ELBO over the same steps"):
    """−ELBO curves of several training runs against the step: validation −ELBO (lines
    with markers) and the minibatch −ELBO of each step, smoothed over 25 steps (thin).

    :param dict curves: ``{route: curve}``, each with ``step, train, valid_step, valid``
        (:func:`train_curve`).
    :param dict labels: ``{route: legend label}``.
    """
    if not curves:
        raise ValueError("no curves to draw")
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(6.2, 4.0), dpi=120)
    later = []
    for k, (route, c) in enumerate(curves.items()):
        color = f"C{k}"
        train = torch.tensor(c["train"], dtype=torch.float64)
        width = min(25, len(train))
        smooth = torch.nn.functional.avg_pool1d(train[None, None], width, stride=1)[0, 0]
        ax.plot(c["step"][width - 1 :], smooth.tolist(), color=color, lw=0.7, alpha=0.5)
        ax.plot(c["valid_step"], c["valid"], "o-", color=color, ms=3, lw=1.3, label=labels.get(route, route))
        later += c["valid"][1:] + smooth.tolist()[len(smooth) // 10 :]
    if later:
        lo, hi = min(later), max(later)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("SVI step")
    ax.set_ylabel("−ELBO (nats per data point)")
    ax.plot([], [], color="gray", lw=0.7, alpha=0.6, label="minibatch, smoothed")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def toy_table(rows):
    """A Markdown table of :func:`measure_toy`'s rows: per route and φ, N × Var (which the
    1/N law keeps at the per-sample σ²) for each N beside the closed-form σ², the largest
    |z| of the variances, and the mean at the largest N beside 2φ."""
    sizes = sorted({r["N"] for r in rows})
    columns = (
        ["route", "φ", "σ² closed form"]
        + [f"N·Var, N={n:,}" for n in sizes]
        + ["max \\|z\\|", f"mean at N={sizes[-1]:,}", "2φ"]
    )
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for route in dict.fromkeys(r["route"] for r in rows):
        for phi in sorted({r["phi"] for r in rows if r["route"] == route}):
            sel = {r["N"]: r for r in rows if r["route"] == route and r["phi"] == phi}
            cells = " | ".join(f"{sel[n]['N'] * sel[n]['var']:.3g}" for n in sizes)
            z = max(abs(r["z"]) for r in sel.values())
            last = sel[sizes[-1]]
            lines.append(
                f"| {route} | {phi:g} | {toy_variance(route, phi):.3g} | {cells} | {z:.1f} | "
                f"{last['mean']:.4f} ± {last['mean_se']:.4f} | {2 * phi:g} |"
            )
    return "\n".join(lines)


def vae_table(result):
    """A Markdown table of :func:`vae_contrast`'s result: per route, the mean
    per-parameter variance of the encoder gradient and its ratio to the reparameterized
    route's (at initialization and after training), and the final validation −ELBO."""
    lines = [
        "| route | objective | mean Var (init) | ratio (init) | median ratio (init) | mean Var (trained) "
        "| ratio (trained) | median ratio (trained) | valid −ELBO after training |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    trained = {r["route"]: r for r in result.get("variance_trained", [])}
    for row in result["variance_init"]:
        route = row["route"]
        t = trained.get(route)
        curve = result["curves"].get(route)
        cells = [
            route,
            route_objective(route),
            f"{row['mean_var']:.3g}",
            f"{row['ratio']:.3g}",
            f"{row['median_ratio']:.3g}",
        ]
        cells += [f"{t['mean_var']:.3g}", f"{t['ratio']:.3g}", f"{t['median_ratio']:.3g}"] if t else ["–"] * 3
        cells.append(f"{curve['valid'][-1]:.2f}" if curve else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path, rows):
    """Rows (dicts with the same keys) as a CSV file."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_toy_outputs(rows, out):
    """``toy_variance.csv`` (every row), ``toy_variance.md`` (:func:`toy_table`) and toy_variance.png,
    ``toy_variance.png`` (:func:`~pyro_vae.plots.plot_gradient_variance`), in ``out``.
    :returns: the Markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "toy_variance.csv", rows)
    table = toy_table(rows)
    (out / "toy_variance.md").write_text(table + "\n")
    plot_gradient_variance(rows, out / "toy_variance.png", {k: r.label for k, r in TOY_ROUTES.items()})
    return table


def write_vae_outputs(result, out):
    """``vae_gradient_variance.csv`` (rows at initialization and after training),
    ``vae_gradient_variance.md`` (:func:`vae_table`), ``vae_curves.json`` and the −ELBO
    curves ``vae_elbo_curves.png`` (:func:`~pyro_vae.plots.plot_elbo_curves`), in ``out``.
    :returns: the Markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(row, params_at="init") for row in result["variance_init"]]
    rows += [dict(row, params_at="trained") for row in result.get("variance_trained", [])]
    write_csv(out / "vae_gradient_variance.csv", rows)
    table = vae_table(result)
    (out / "vae_gradient_variance.md").write_text(table + "\n")
    save_json(out / "vae_curves.json", result["curves"])
    plot_elbo_curves(result["curves"], out / "vae_elbo_curves.png", VAE_LABELS)
    return table


# ---- the command line -------------------------------------------------------------------
def add_arguments(p):
    p.add_argument(
        "--part",
        default="all",
        choices=["all", "toy", "vae"],
        help="the toy of Example 1.5 (toy_variance.png), the VAE contrast, or both",
    )
    p.add_argument("--out", default="runs/gradvar", help="output folder (tables, CSV, JSON, PNG)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--seed", type=int, default=0, help="seed of every random source")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = p.add_argument_group("toy: f(x) = x², q(x) = N(φ, 1)")
    t.add_argument("--phis", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="values of φ")
    t.add_argument("--sizes", type=positive_int, nargs="+", default=list(SAMPLE_SIZES), help="sample sizes N")
    t.add_argument("--repeats", type=int_at_least(4), default=300, help="repetitions R per (route, φ, N)")
    v = p.add_argument_group("VAE")
    v.add_argument("--dataset", default="binarized-mnist", choices=DATASETS, help="data set")
    v.add_argument("--data", default=None, help="data folder; if not given: $PYRO_VAE_DATA, else ./data")
    v.add_argument("--train-size", type=positive_int, default=10000, help="first N training images")
    v.add_argument("--valid-size", type=positive_int, default=1000, help="first N validation images")
    v.add_argument(
        "--z-dim", type=positive_int, default=None, help="latent dimension; if not given: 50, or 8 for digits"
    )
    v.add_argument(
        "--hidden", type=positive_int, nargs="+", default=None, help="MLP hidden sizes; if not given: 400, or 128"
    )
    v.add_argument("--steps", type=positive_int, default=1000, help="SVI steps of every −ELBO curve")
    v.add_argument("--batch-size", type=positive_int, default=100, help="data points per step")
    v.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate")
    v.add_argument("--eval-every", type=positive_int, default=50, help="validation −ELBO every N steps")
    v.add_argument(
        "--grad-repeats", type=int_at_least(2), default=200, help="gradient estimates per route for the variance"
    )
    v.add_argument(
        "--settle-steps", type=nonnegative_int, default=200, help="steps that settle a baseline before measuring"
    )


def run(args):
    if args.train_size < args.batch_size:
        raise UsageError(f"--train-size {args.train_size} is smaller than --batch-size {args.batch_size}")
    out = check_out_dir(args.out, args.overwrite)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "argv")}
    progress = not args.no_progress
    if args.part in ("all", "toy"):
        rows = measure_toy(args.phis, args.sizes, args.repeats, seed=args.seed, progress=progress)
        print(toy_table(rows))
        write_toy_outputs(rows, out)
        save_json(out / "toy_variance.json", dict(settings=settings, rows=rows))
    if args.part in ("all", "vae"):
        binarize = None if args.dataset == "binarized-mnist" else "static"
        train = load_dataset(args.dataset, "train", args.data, binarize=binarize, seed=args.seed)
        valid = load_dataset(args.dataset, "valid", args.data, binarize=binarize, seed=args.seed)
        train.x, valid.x = train.x[: args.train_size], valid.x[: args.valid_size]
        small = train.image_shape[-1] <= 8
        torch.manual_seed(args.seed)
        vae = build_model(
            dict(
                model="vae",
                image_shape=list(train.image_shape),
                z_dim=args.z_dim or (8 if small else 50),
                hidden_dims=args.hidden or ([128] if small else [400]),
            )
        )
        x = valid.x[: args.batch_size]
        print(
            f"VAE on {args.dataset}: {len(train)} train / {len(valid)} valid images, {args.steps} steps per route, "
            f"gradient variance over {args.grad_repeats} estimates on a batch of {len(x)}"
        )
        result = vae_contrast(
            vae,
            train,
            valid,
            x,
            args.steps,
            args.batch_size,
            args.lr,
            args.eval_every,
            args.grad_repeats,
            args.settle_steps,
            seed=args.seed,
            progress=progress,
        )
        print(write_vae_outputs(result, out))
        save_json(
            out / "vae_gradient_variance.json",
            dict(settings=settings, **{k: v for k, v in result.items() if k != "curves"}),
        )
    print(f"wrote {out}")
    return 0


def build_parser():
    parser = Parser(prog="gradient_variance.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, DataError) as e:
        sys.stderr.write(f"gradient_variance.py: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
