import math

import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO

from pyro_vae import VAE, MLPDecoder, MLPEncoder, build_vae, make_objective
from pyro_vae.likelihoods import Bernoulli, Gaussian

Z = 5.0


def binary_batch(n=10, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


def test_model_and_guide_sites_plate_and_scale():
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,))
    x = binary_batch(10)
    guide_tr = poutine.trace(vae.guide).get_trace(x, num_data=60)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, num_data=60)
    z = guide_tr.nodes["z"]
    assert z["fn"].has_rsample  # reparameterized
    assert z["value"].shape == (10, 2)
    assert model_tr.nodes["x"]["is_observed"]
    for site in (z, model_tr.nodes["z"], model_tr.nodes["x"]):
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
        assert site["scale"] == pytest.approx(60 / 10)  # N / B
    assert model_tr.nodes["z"]["fn"].event_shape == (2,)
    assert model_tr.nodes["x"]["fn"].event_shape == (12,)


def test_minibatch_elbo_is_an_unbiased_estimate_of_the_full_data_elbo():
    """E_batch[(N/B) Σ_{n∈batch} −ELBO_n] = Σ_n −ELBO_n, batches drawn without replacement.

    Both sides carry the ELBO's own Monte Carlo noise (L = 1000 particles); the tolerance
    is Z standard errors of the difference of the two means."""
    torch.manual_seed(0)
    N, B = 40, 8
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,))
    x = binary_batch(N)
    mf = make_objective("meanfield", num_particles=1000)
    fulls = torch.tensor([mf.loss(vae.model, vae.guide, x) for _ in range(30)])
    full, se_full = fulls.mean(), fulls.std() / math.sqrt(len(fulls))
    g = torch.Generator().manual_seed(1)
    estimates = torch.tensor(
        [mf.loss(vae.model, vae.guide, x[torch.randperm(N, generator=g)[:B]], num_data=N) for _ in range(300)]
    )
    se = torch.sqrt(estimates.var() / len(estimates) + se_full**2)
    assert abs(estimates.mean() - full) < Z * se, (estimates.mean(), full, se)
    # an unscaled minibatch loss (the bug the plate prevents) would be off by a factor B/N
    assert abs(estimates.mean() * B / N - full) > Z * se


def test_user_can_hand_model_and_guide_to_pyro_svi():
    torch.manual_seed(0)
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(16,))
    x = binary_batch(10)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    first = sum(svi.step(x) for _ in range(10)) / 10
    for _ in range(300):
        svi.step(x)
    last = sum(svi.step(x) for _ in range(10)) / 10
    assert last < first - 5
    assert f"{vae._pyro_name}.decoder$$$net.0.weight" in pyro.get_param_store()


def test_predictive_generates_from_the_model():
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,))
    out = Predictive(vae.model, num_samples=3)(None, batch_size=5)
    assert out["z"].shape == (3, 5, 2)
    assert out["x"].shape == (3, 5, 12)
    assert set(out["x"].unique().tolist()) <= {0.0, 1.0}


def test_encode_sample_reconstruct_decode_shapes():
    vae = build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,))
    x = binary_batch(6, 64)
    q = vae.encode(x)
    assert q.batch_shape == (6,) and q.event_shape == (4,)
    assert vae.sample(7).shape == (7, 64)
    s = vae.sample(7, mean=False)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    r = vae.reconstruct(x)
    assert r.shape == (6, 64) and (r >= 0).all() and (r <= 1).all()
    assert vae.decode(torch.zeros(3, 2, 4)).shape == (3, 2, 64)  # leading particle dims


@pytest.mark.parametrize("network", ["mlp", "conv"])
@pytest.mark.parametrize("image_shape", [(1, 8, 8), (1, 28, 28)])
def test_networks_with_vectorized_particles(network, image_shape):
    d = math.prod(image_shape)
    vae = build_vae(image_shape, z_dim=3, network=network, hidden_dims=(16,), likelihood="gaussian")
    x = torch.rand(4, d)
    loss = make_objective("elbo", num_particles=5).differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.parameters())


def test_user_networks_plug_in():
    enc = MLPEncoder(12, 2, (5,))
    dec = torch.nn.Sequential(torch.nn.Linear(2, 12))
    vae = VAE(enc, dec, z_dim=2, likelihood=Bernoulli())
    x = binary_batch(4)
    assert torch.isfinite(torch.tensor(make_objective("elbo").loss(vae.model, vae.guide, x)))
    with pytest.raises(ValueError, match="x_dim"):
        VAE(enc, dec, z_dim=2, likelihood="bernoulli")
    vae = VAE(enc, MLPDecoder(2, 12), z_dim=2, likelihood="gaussian")
    assert isinstance(vae.likelihood, Gaussian)


def test_gaussian_likelihood_log_prob_and_scale():
    lik = Gaussian(3)
    theta = torch.zeros(2, 3)
    x = torch.ones(2, 3)
    expected = torch.distributions.Normal(0.0, 0.5).log_prob(torch.tensor(1.0)) * 3
    assert torch.allclose(lik(theta).log_prob(x), expected.expand(2))
    fixed = Gaussian(3, scale=0.1)
    assert not any(p.requires_grad for p in fixed.parameters())
    with pytest.raises(ValueError, match="positive"):
        Gaussian(3, scale=0.0)


def test_bernoulli_refuses_grey_levels():
    with pytest.raises(ValueError, match="binary data"):
        Bernoulli().check(torch.tensor([[0.0, 0.5, 1.0]]))
    Bernoulli().check(torch.tensor([[0.0, 1.0]]))


def test_batch_larger_than_num_data_is_refused():
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,))
    with pytest.raises(ValueError, match="num_data must be an integer N at least the batch size 10"):
        vae.model(binary_batch(10), num_data=5)


def test_num_data_may_be_any_integer_type():
    import numpy as np

    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,))
    x = binary_batch(10)
    for n in (40, np.int64(40), torch.tensor(40)):
        tr = poutine.trace(vae.model).get_trace(x, num_data=n)
        assert tr.nodes["x"]["scale"] == pytest.approx(4.0)
    for bad in (3.5, "40", True):
        with pytest.raises(ValueError, match="num_data must be an integer"):
            vae.model(x, num_data=bad)
