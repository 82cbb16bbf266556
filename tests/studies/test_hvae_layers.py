"""studies/hvae_layers.py: its per-layer terms add up to the ELBO, and its top-layer rate is
the closed-form KL(q(z2|x) ‖ N(0, I)) within Monte Carlo error."""

import pyro
import pytest
import torch
from hvae_layers import active_units_per_layer, layer_terms
from pyro.infer import Trace_ELBO

from pyro_vae.models import build_hvae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_terms_add_up_to_the_elbo_and_kl2_is_the_closed_form():
    torch.manual_seed(0)
    m = build_hvae((1, 3, 4), z_dim=2, z1_dim=3, hidden_dims=(8,)).eval()
    x = torch.bernoulli(torch.rand(6, 12, generator=torch.Generator().manual_seed(1)))
    pyro.set_rng_seed(0)
    terms = layer_terms(m, x, num_samples=20000, batch_size=3)
    neg_elbo = (-terms["log_px_given_z"] + terms["kl2"] + terms["kl1"]).sum().item()
    pyro.set_rng_seed(1)
    ref = Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1).loss(m.model, m.guide, x)
    assert neg_elbo == pytest.approx(ref, abs=0.05 * x.shape[0])
    with torch.no_grad():
        q = m.encode(x)
        exact = torch.distributions.kl_divergence(q, m.prior((6,)))
    assert torch.allclose(terms["kl2"], exact, atol=0.03)
    assert (terms["kl1"] > -0.05).all()
    au = active_units_per_layer(m, x)
    assert au["z2"][1] == 2 and au["z1"][1] == 3
