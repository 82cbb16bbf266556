"""The neural baseline's scale s = N/B, as the diagonal guide hands it to Pyro.

``VAE.guide(x, num_data=N)`` runs its site z in the data plate scaled by s = N/B, and
:meth:`~pyro_vae.guides.DiagonalNormal.site_infer` gives Pyro ``nn_baseline`` =
s · ``baseline_net``: the network predicts nats per data point, the baseline the plate's
scaled cost. These tests pin the exact value (closed form, against the network's own
output), both as the callable Pyro receives and as the value ``TraceGraph_ELBO`` uses in
its baseline loss Σ_n (c_n − b_n)², so that inverting s (B/N) fails."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO

from pyro_vae import build_vae
from pyro_vae.guides import DiagonalNormal, NeuralBaseline, _scaled
from pyro_vae.networks import MLPEncoder

X_DIM, Z_DIM = 16, 2


def _vae():
    torch.manual_seed(0)
    vae = build_vae(
        (1, 4, 4), z_dim=Z_DIM, hidden_dims=(8,), guide_kwargs={"reparameterized": False, "baseline": "neural"}
    )
    net = vae.q.baseline_net
    assert isinstance(net, NeuralBaseline)
    # the last layer starts at zero (b = 0 whatever s is): give it weights, so the
    # baseline is a non-constant vector over the batch and its scale shows
    with torch.no_grad():
        net.net[-1].weight.normal_(0.0, 1.0)
        net.net[-1].bias.fill_(0.7)
    return vae


def _x(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, X_DIM, generator=g) < 0.4).float()


def test_scaled_is_s_times_the_network():
    torch.manual_seed(0)
    net = NeuralBaseline(X_DIM)
    with torch.no_grad():
        net.net[-1].weight.normal_()
    x = _x(5)
    assert torch.allclose(_scaled(net, 4.0, x), 4.0 * net(x))
    assert torch.allclose(_scaled(net, 0.25, x), 0.25 * net(x))


def test_site_infer_hands_pyro_s_times_the_network_for_the_scale_it_is_given():
    torch.manual_seed(0)
    family = DiagonalNormal(MLPEncoder(X_DIM, Z_DIM, (8,)), z_dim=Z_DIM, reparameterized=False, baseline="neural")
    with torch.no_grad():
        family.baseline_net.net[-1].weight.normal_()
        family.baseline_net.net[-1].bias.fill_(-0.3)
    x = _x(6)
    raw = family.baseline_net(x)
    assert raw.shape == (6,) and raw.std() > 0
    for s in (1.0, 7.5, 40.0):
        options = family.site_infer(x, scale=s)["baseline"]
        assert options["use_decaying_avg_baseline"] is True
        assert options["nn_baseline_input"] is x
        got = options["nn_baseline"](x)
        assert got.shape == (6,)
        assert torch.allclose(got, s * raw, rtol=1e-6, atol=1e-7), (s, got, s * raw)


@pytest.mark.parametrize("num_data, batch", [(None, 10), (10, 10), (200, 10), (25, 10), (999, 3)])
def test_guide_passes_the_baseline_n_over_b(num_data, batch):
    """Through ``VAE.guide``: nn_baseline(x) = (N/B) · baseline_net(x), and 1 · it without
    num_data (or with N = B); the plate's own scale at the site is the same N/B."""
    vae = _vae()
    x = _x(batch)
    s = (num_data or batch) / batch
    tr = poutine.trace(vae.guide).get_trace(x, num_data=num_data)
    site = tr.nodes["z"]
    assert site["scale"] == pytest.approx(s)
    options = site["infer"]["baseline"]
    raw = vae.q.baseline_net(x)
    assert raw.std() > 0
    got = options["nn_baseline"](options["nn_baseline_input"])
    assert torch.allclose(got, s * raw, rtol=1e-6, atol=1e-6), (s, got[:3], raw[:3])
    if s != 1:
        # B/N instead of N/B would give raw / s: far from s · raw
        assert not torch.allclose(got, raw / s, rtol=1e-2)


def test_tracegraph_baseline_loss_uses_n_over_b_times_the_network():
    """The value Pyro *uses*: with the decaying average still at 0 (its first step),
    b_n = s · c where c is the network's last bias (its last weights set to 0), and the
    baseline loss Σ_n (c_n − s c)² gives ∂/∂c = −2 s Σ_n (c_n − s c), with c_n the
    plate-scaled downstream cost s [log p(x_n, z_n) − log q(z_n|x_n)] recomputed here by
    hand at the same draw of z."""
    vae = _vae()
    net = vae.q.baseline_net
    c = 0.7
    with torch.no_grad():
        net.net[-1].weight.zero_()
        net.net[-1].bias.fill_(c)
    batch, num_data = 8, 120
    s = num_data / batch
    x = _x(batch)

    # the downstream cost of each data point, at the z the ELBO will draw (same seed)
    pyro.set_rng_seed(5)
    with torch.no_grad(), pyro.get_param_store().scope():
        guide_tr = poutine.trace(vae.guide).get_trace(x, num_data=num_data)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, num_data=num_data)
        z = guide_tr.nodes["z"]["value"]
        q = vae.q(x)
        log_q = q.log_prob(z)
        log_p = model_tr.nodes["z"]["fn"].log_prob(z) + model_tr.nodes["x"]["fn"].log_prob(x)
        cost = s * (log_p - log_q)
    assert cost.shape == (batch,)

    for p in vae.parameters():
        p.grad = None
    pyro.set_rng_seed(5)
    with pyro.get_param_store().scope():
        TraceGraph_ELBO().loss_and_grads(vae.model, vae.guide, x, num_data=num_data)
        avg = pyro.get_param_store()["__baseline_avg_downstream_cost_z"]
    # the decaying average moved from 0 to (1 − β) c_n: the same costs Pyro computed
    assert torch.allclose(avg, (1 - vae.q.baseline_beta) * cost, rtol=1e-4, atol=1e-4)
    expected = -2 * s * (cost - s * c).sum()
    got = net.net[-1].bias.grad
    assert got is not None
    assert got.item() == pytest.approx(expected.item(), rel=1e-4), (got.item(), expected.item())
    inverted = -2 / s * (cost - c / s).sum()
    assert got.item() != pytest.approx(inverted.item(), rel=1e-2)
