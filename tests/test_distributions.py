"""The package's distributions equal Pyro's: values, log-densities, gradients, KL."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import build_vae
from pyro_vae.distributions import Independent, IndependentBernoulli, Normal, StandardNormal
from pyro_vae.objectives import IWAE_ELBO


def _normal_params():
    torch.manual_seed(3)
    return torch.randn(6, 3, requires_grad=True), torch.randn(6, 3, requires_grad=True)  # loc, log σ²


@pytest.mark.parametrize("sample_shape", [(), (4,)])
def test_normal_at_its_own_sample_equals_pyros_normal_and_its_gradients(sample_shape):
    """log q(z) from the kept ε equals Pyro's formula at the same z, in value and in the
    gradient of the reparameterized −log q(z) with respect to the parameters."""
    results = []
    for cls in (Normal, dist.Normal):
        loc, log_var = _normal_params()
        q = cls(loc, torch.exp(0.5 * log_var))
        torch.manual_seed(0)
        z = q.rsample(sample_shape)
        lp = q.log_prob(z)
        results.append((z.detach(), lp.detach(), torch.autograd.grad((lp * torch.arange(1.0, 4.0)).sum(), (loc, log_var))))
    (z1, lp1, g1), (z2, lp2, g2) = results
    assert torch.equal(z1, z2)  # the same draws from the same seed
    assert torch.allclose(lp1, lp2, atol=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5)
    # the closed form of that gradient: d/dlog σ² of (−½ε² − ½ log σ² − c) is −½ per coordinate
    assert torch.allclose(g1[1], -0.5 * torch.arange(1.0, 4.0).expand(6, 3) * (1 if not sample_shape else 4))
    assert torch.allclose(g1[0], torch.zeros(6, 3), atol=1e-5)


def test_normal_takes_the_general_formula_at_any_other_value():
    loc, log_var = _normal_params()
    q, reference = Normal(loc, torch.exp(0.5 * log_var)), dist.Normal(loc, torch.exp(0.5 * log_var))
    z = q.rsample()
    for value in (z.detach().requires_grad_(), z + 0.0, torch.randn(6, 3, requires_grad=True)):
        a, b = q.log_prob(value), reference.log_prob(value)
        assert torch.allclose(a, b, atol=1e-6)
        ga, gb = (torch.autograd.grad(t.sum(), value, retain_graph=True)[0] for t in (a, b))
        assert torch.allclose(ga, gb, atol=1e-6)  # the path through the value is there
    z = q.rsample()
    with torch.no_grad():
        z.add_(1.0)  # changed in place after sampling: not the sample any more
    assert torch.allclose(q.log_prob(z), reference.log_prob(z), atol=1e-6)
    z = q.rsample().detach_()  # the same tensor, detached: the score-function gradient, as Pyro's
    ga = torch.autograd.grad(q.log_prob(z).sum(), (loc, log_var))
    gb = torch.autograd.grad(reference.log_prob(z).sum(), (loc, log_var))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ga, gb)) and ga[0].abs().sum() > 0
    leaf_loc, scale = torch.zeros(6, 3, requires_grad=True), torch.ones(6, 3)
    q = Normal(leaf_loc, scale)
    z = q.rsample()
    with torch.no_grad():
        leaf_loc.add_(2.0)  # an optimizer step on μ after the sample
    assert torch.allclose(q.log_prob(z), dist.Normal(leaf_loc, scale).log_prob(z), atol=1e-6)
    with torch.inference_mode():
        z = q.rsample()
        assert q._last is None and torch.allclose(q.log_prob(z), dist.Normal(q.loc, q.scale).log_prob(z), atol=1e-6)
    expanded = q.expand((2, 6, 3))
    assert type(expanded) is Normal and expanded._last is None
    with pytest.raises(ValueError, match="support"):
        Normal(loc, torch.exp(0.5 * log_var), validate_args=True).log_prob(torch.full((6, 3), float("nan")))


def test_normal_at_a_constant_own_sample_gives_pyros_score_function_gradient():
    """A z drawn without an autograd node and scored with gradients on: Pyro's formula
    differentiates the parameters with z fixed, and so must the package's Normal."""
    loc, log_var = _normal_params()
    q = Normal(loc, torch.exp(0.5 * log_var))
    with torch.no_grad():
        z = q.rsample()
    ga = torch.autograd.grad(q.log_prob(z).sum(), (loc, log_var))
    gb = torch.autograd.grad(dist.Normal(loc, torch.exp(0.5 * log_var)).log_prob(z).sum(), (loc, log_var))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ga, gb)) and ga[0].abs().sum() > 0
    with torch.no_grad():  # and without gradients the kept ε gives the same value
        assert torch.allclose(q.log_prob(z), dist.Normal(q.loc, q.scale).log_prob(z), atol=1e-5)
    q = Normal(torch.zeros(6, 3), torch.ones(6, 3))  # parameters without gradients
    z = q.rsample().requires_grad_()  # then a leaf z: the path through z is wanted
    gz, = torch.autograd.grad(q.log_prob(z).sum(), z)
    assert torch.allclose(gz, -z.detach())


def test_the_diagonal_guide_takes_the_kept_eps_inside_an_elbo(monkeypatch):
    """Inside Trace_ELBO (one and vectorized particles) log q is computed from ε: the
    general Normal formula is never called, and the loss is Pyro's."""
    torch.manual_seed(0)
    vae = build_vae((1, 4, 4), z_dim=3, hidden_dims=(8,))
    vae.use_param_store = False
    x = (torch.rand(7, 16) < 0.5).float()
    for elbo in (Trace_ELBO(), Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)):
        pyro.set_rng_seed(1)
        reference = elbo.differentiable_loss(vae.model, vae.guide, x)
        general = dist.Normal.log_prob
        monkeypatch.setattr(dist.Normal, "log_prob", lambda self, v: pytest.fail("general Normal formula"))
        pyro.set_rng_seed(1)
        fast = elbo.differentiable_loss(vae.model, vae.guide, x)
        monkeypatch.setattr(dist.Normal, "log_prob", general)
        assert torch.allclose(fast, reference)


@pytest.mark.parametrize("value_shape", [(6, 3), (5, 6, 3)])
def test_standard_normal_equals_pyros_normal(value_shape):
    z = torch.randn(value_shape, requires_grad=True)
    ours = Independent(StandardNormal(torch.zeros(6, 3), torch.ones(6, 3)), 1)
    theirs = dist.Normal(torch.zeros(6, 3), torch.ones(6, 3)).to_event(1)
    a, b = ours.log_prob(z), theirs.log_prob(z)
    assert a.shape == b.shape == value_shape[:-1]
    assert torch.allclose(a, b, atol=1e-6)
    ga, = torch.autograd.grad(a.sum(), z)
    gb, = torch.autograd.grad(b.sum(), z)
    assert torch.allclose(ga, gb)
    # a value of smaller shape broadcasts to the batch shape, as Pyro's does
    small = torch.randn(3)
    a, b = ours.log_prob(small), theirs.log_prob(small)
    assert a.shape == b.shape == (6,) and torch.allclose(a, b, atol=1e-6)


def test_standard_normal_refuses_other_parameters_and_validates_when_asked():
    with pytest.raises(ValueError, match="loc = 0 and scale = 1"):
        StandardNormal(torch.full((3,), 2.0), torch.ones(3))
    expanded = StandardNormal(torch.zeros(3), torch.ones(3)).expand((4, 3))
    assert isinstance(expanded, StandardNormal) and expanded.batch_shape == (4, 3)
    with pytest.raises(ValueError, match="not broadcastable"):
        StandardNormal(torch.zeros(3), torch.ones(3), validate_args=True).log_prob(torch.ones(5))


@pytest.mark.parametrize("value_shape", [(5, 2, 6), (2, 6), (6,)])
def test_independent_bernoulli_takes_its_fast_path_whenever_x_broadcasts_to_the_logits(value_shape, monkeypatch):
    logits = torch.randn(5, 2, 6, requires_grad=True)
    x = (torch.rand(value_shape) < 0.5).float()
    theirs = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
    monkeypatch.setattr(dist.Independent, "log_prob", lambda self, value: pytest.fail("took Pyro's route"))
    ours = IndependentBernoulli(dist.Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)
    a = ours.log_prob(x)
    assert a.shape == theirs.shape == (5, 2) and torch.allclose(a, theirs, atol=1e-5)


def test_independent_expand_is_self_for_the_same_shape_and_expands_otherwise():
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.5
    d = Independent(dist.Normal(loc, scale), 1)
    assert d.expand((4,)) is d
    e = d.expand((2, 4))
    assert e is not d and e.batch_shape == (2, 4) and e.event_shape == (3,)
    z = torch.randn(2, 4, 3)
    a, b = e.log_prob(z), dist.Normal(loc, scale).to_event(1).expand((2, 4)).log_prob(z)
    assert a.shape == b.shape == (2, 4) and torch.allclose(a, b, atol=1e-6)
    # two event dimensions: Pyro's general sum
    d2 = Independent(dist.Normal(loc, scale), 2)
    assert torch.allclose(d2.log_prob(z), dist.Normal(loc, scale).to_event(2).log_prob(z), atol=1e-5)


def test_closed_form_kl_dispatches_to_the_normal_normal_kl():
    loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.2
    q = Independent(dist.Normal(loc, scale), 1)
    p = Independent(StandardNormal(torch.zeros(5, 3), torch.ones(5, 3)), 1)
    expected = 0.5 * (loc ** 2 + scale ** 2 - 1 - 2 * scale.log()).sum(-1)
    assert torch.allclose(torch.distributions.kl_divergence(q, p), expected, atol=1e-6)


def test_the_vae_prior_is_reused_and_follows_the_dtype():
    vae = build_vae((1, 4, 4), z_dim=3, hidden_dims=(8,))
    p = vae.prior((5,))
    assert vae.prior((5,)) is p and p.batch_shape == (5,) and p.event_shape == (3,)
    assert vae.prior((6,)).batch_shape == (6,)
    with pytest.raises(TypeError, match="batch_shape must be a shape"):
        vae.prior(5)
    vae.double()
    assert vae.prior((5,)).sample().dtype == torch.float64


@pytest.mark.parametrize("elbo", [
    Trace_ELBO, TraceMeanField_ELBO,
    lambda: Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),  # expands every site
    lambda: IWAE_ELBO(num_particles=3),  # logits (K, B, D) against x (B, D)
], ids=["trace", "meanfield", "trace-3-particles", "iwae-3"])
def test_the_vae_losses_equal_those_with_pyros_own_distributions(elbo):
    """The same model written with Pyro's Normal/Bernoulli gives the same loss and gradient."""
    torch.manual_seed(0)
    vae = build_vae((1, 4, 4), z_dim=3, hidden_dims=(8,))
    x = (torch.rand(7, 16) < 0.5).float()

    def model(x):
        with pyro.plate("data", 7):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 7):
            loc, log_var = vae.posterior.encoder(x)
            pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))

    vae.use_param_store = False
    losses, grads = [], []
    for m, g in ((vae.model, vae.guide), (model, guide)):
        pyro.set_rng_seed(1)
        loss = elbo().differentiable_loss(m, g, x)
        grads.append(torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True))
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-4, atol=1e-6)
