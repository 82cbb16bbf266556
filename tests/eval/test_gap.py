"""The amortization gap (:mod:`pyro_vae.eval.gap`) on a model whose posterior is known."""

import pytest
import torch
from linear_gaussian import W, X, ZeroEncoder, exact, linear_gaussian_vae

from pyro_vae.eval.gap import amortization_gap


def test_amortization_gap_closes_on_the_exact_posterior():
    _, _, log_px = exact()
    vae = linear_gaussian_vae()
    gap = amortization_gap(vae, X, steps=200, lr=0.05, num_particles=8, num_eval_samples=2000)
    # the full family holds the exact posterior: fitted to x alone, its ELBO reaches log p(x)
    assert gap["elbo_local"].item() == pytest.approx(log_px, abs=0.05)
    assert gap["gap"].item() > 5.0  # the zero "encoder" is far from it
    assert gap["elbo_amortized"].item() < log_px
    # the model is untouched: its encoder is back, the decoder unchanged
    assert isinstance(vae.q.encoder, ZeroEncoder) and torch.equal(vae.decoder.weight, W)
