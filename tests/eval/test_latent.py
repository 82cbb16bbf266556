"""The latent-space measures of pyro_vae.eval.latent.

The dead-zone measure is checked on synthetic codes whose answer is known:

- codes and draws from the same N(0, I): by construction about 1 − q = 1% of draws lie
  farther from the codes than the q = 99th percentile of the codes' own nearest-neighbour
  distances. The share s has two sources of noise, the M draws (binomial, variance
  q(1−q)/M) and the empirical quantile of N codes (the mass beyond it has variance
  ≈ q(1−q)/N), so |s − 0.01| < 5 √(q(1−q)(1/M + 1/N));
- codes in two far clusters: every N(0, I) draw is in empty space, s ≈ 1;
- codes on a half-plane: a draw at distance > t from it is dead, so s is at least the
  share of draws with u₁ < −t, and at most ½ + 1% + noise.
"""

import math

import pytest
import torch

from pyro_vae.eval.classifier import classifier_confidence
from pyro_vae.eval.latent import (
    LatentFrame,
    dead_zone_report,
    dead_zone_share,
    dead_zone_table,
    dead_zone_threshold,
    latent_codes,
    latent_frame,
    nearest_distances,
)
from pyro_vae.models import build_autoencoder, build_vae

Q = 0.99


def _sd(m, n, q=Q):
    return math.sqrt(q * (1 - q) * (1 / m + 1 / n))


# ---- nearest neighbours and the frame ----------------------------------------------------
def test_nearest_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 3, generator=g), torch.randn(20, 3, generator=g)
    brute = torch.tensor([min(float((p - r).norm()) for r in b) for p in a])
    assert torch.allclose(nearest_distances(a, b, chunk_size=7), brute, atol=1e-5)
    self_brute = torch.tensor([min(float((p - r).norm()) for j, r in enumerate(a) if j != i) for i, p in enumerate(a)])
    assert torch.allclose(nearest_distances(a, a, exclude_self=True, chunk_size=7), self_brute, atol=1e-5)
    with pytest.raises(ValueError, match="same d"):
        nearest_distances(a, torch.randn(4, 2))


def test_latent_frame_round_trip_and_errors():
    g = torch.Generator().manual_seed(1)
    codes = 5 + 3 * torch.randn(500, 2, generator=g)
    frame = LatentFrame.fit(codes)
    u = frame.to_frame(codes)
    assert torch.allclose(u.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(u.std(0), torch.ones(2), atol=1e-5)
    assert torch.allclose(frame.to_latent(u), codes, atol=1e-4)
    with pytest.raises(ValueError, match=r"dimension\(s\) \[1\]"):
        LatentFrame.fit(torch.stack([torch.randn(10), torch.zeros(10)], -1))
    ident = LatentFrame.identity(2)
    assert torch.equal(ident.to_frame(codes), codes)


# ---- dead zones on synthetic codes -------------------------------------------------------
def test_gaussian_codes_have_one_percent_dead_zones():
    g = torch.Generator().manual_seed(2)
    m, n = 4000, 2000
    share, t = dead_zone_share(torch.randn(m, 2, generator=g), torch.randn(n, 2, generator=g), Q)
    assert abs(share - (1 - Q)) < 5 * _sd(m, n)
    assert t > 0


def test_two_far_clusters_leave_the_prior_in_dead_zones():
    g = torch.Generator().manual_seed(3)
    centre = torch.tensor([5.0, 0.0])
    codes = torch.cat(
        [centre + 0.1 * torch.randn(1000, 2, generator=g), -centre + 0.1 * torch.randn(1000, 2, generator=g)]
    )
    draws = torch.randn(4000, 2, generator=g)
    share, t = dead_zone_share(draws, codes, Q)
    # a draw within t of a code lies within ~0.5 of (±5, 0): N(0, I) puts < 1e-4 there
    assert share > 0.99
    # and the closed-form lower bound: draws farther than 0.5 + t from both centres are dead
    far = ((draws - centre).norm(dim=1) > 0.5 + t) & ((draws + centre).norm(dim=1) > 0.5 + t)
    assert share >= far.double().mean().item() - 1e-12


def test_half_plane_codes_kill_the_other_half():
    g = torch.Generator().manual_seed(4)
    codes = torch.randn(2000, 2, generator=g)
    codes[:, 0] = codes[:, 0].abs()  # all codes have u₁ ≥ 0
    draws = torch.randn(4000, 2, generator=g)
    share, t = dead_zone_share(draws, codes, Q)
    # geometry: a draw with u₁ < −t is farther than t from every code
    assert share >= (draws[:, 0] < -t).double().mean().item()
    # the half u₁ > 0 matches the codes' distribution: about 1% of it is dead
    assert share <= (draws[:, 0] < 0).double().mean().item() + 0.5 * (1 - Q) + 5 * _sd(2000, 2000)
    assert share > 0.4


def test_standardizing_makes_a_scaled_gaussian_fair():
    g = torch.Generator().manual_seed(5)
    m, n = 4000, 2000
    codes = torch.tensor([10.0, -3.0]) + torch.tensor([20.0, 0.05]) * torch.randn(n, 2, generator=g)
    draws = torch.randn(m, 2, generator=g)
    raw, _ = dead_zone_share(draws, codes, Q)
    fair, _ = dead_zone_share(draws, LatentFrame.fit(codes).to_frame(codes), Q)
    assert raw > 0.9
    assert abs(fair - (1 - Q)) < 5 * _sd(m, n)


def test_threshold_is_the_quantile_of_neighbour_distances():
    codes = torch.tensor([[0.0], [1.0], [3.0], [7.0]])  # neighbour distances 1, 1, 2, 4
    assert dead_zone_threshold(codes, 0.5) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="quantile"):
        dead_zone_threshold(codes, 1.0)


# ---- reports on (untrained) models --------------------------------------------------------
def test_report_on_models(digits, digits_classifier):
    _, valid = digits
    torch.manual_seed(0)
    ae = build_autoencoder(valid.image_shape, z_dim=2, hidden_dims=(16,))
    vae = build_vae(valid.image_shape, z_dim=2, hidden_dims=(16,))
    assert latent_frame(ae, latent_codes(ae, valid.x)).scale.ne(1).all()
    assert torch.equal(latent_frame(vae, latent_codes(vae, valid.x)).scale, torch.ones(2))
    reports = [dead_zone_report(m, valid.x, digits_classifier, n_draws=500) for m in (ae, vae)]
    r_ae, r_vae = reports
    assert r_ae["standardized"] and not r_vae["standardized"]
    assert "confidence_raw" in r_ae and "confidence_raw" not in r_vae
    assert "share_raw" in r_ae and "share_raw" not in r_vae
    # the raw share is the dead-zone share of the same draws against the AE's unstandardized codes
    u = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert r_ae["share_raw"] == pytest.approx(dead_zone_share(u, latent_codes(ae, valid.x), Q)[0])
    # an autoencoder's sampled codes are its codes: both shares agree
    assert r_ae["share"] == r_ae["share_means"]
    for r in reports:
        assert 0 <= r["share"] <= 1 and r["n_codes"] == len(valid) and r["n_draws"] == 500
        assert 0.1 <= r["confidence"] <= 1 and r["confidence_se"] > 0
        assert r["confidence_data"] == pytest.approx(classifier_confidence(digits_classifier, valid.x), abs=1e-6)
    # an untrained VAE's q(z|x) ≈ N(μ(x), ~I) draws spread over the prior; its means do not
    assert r_vae["share"] < r_vae["share_means"]
    table = dead_zone_table(reports, ["ae", "vae"])
    assert table.count("\n") == 3 and "| ae | 2 | standardized codes |" in table
    with pytest.raises(ValueError, match="codes must be"):
        dead_zone_report(ae, valid.x, codes="median")


def test_raw_share_of_a_standardized_vae_is_against_its_sampled_unstandardized_codes(digits):
    """A VAE reported in the z-scored frame: ``share_raw`` and ``threshold_raw`` are the
    dead-zone share and threshold of the same draws u, taken as z ~ N(0, I), against the
    sampled codes z_n ~ q(z|x_n) themselves (not their means, not z-scored); the table
    shows it with its binomial standard error."""
    _, valid = digits
    torch.manual_seed(0)
    vae = build_vae(valid.image_shape, z_dim=2, hidden_dims=(16,))
    r = dead_zone_report(vae, valid.x, n_draws=400, standardize=True, codes="sample", seed=3)
    assert r["standardized"]
    u = torch.randn(400, 2, generator=torch.Generator().manual_seed(3))
    sampled = latent_codes(vae, valid.x, sample=True, seed=3)
    share, threshold = dead_zone_share(u, sampled, Q)
    assert (r["share_raw"], r["threshold_raw"]) == (pytest.approx(share), pytest.approx(threshold))
    means_share = dead_zone_share(u, latent_codes(vae, valid.x), Q)[0]
    assert share != means_share  # the test tells the sampled codes from the means
    assert r["share_raw_se"] == pytest.approx(math.sqrt(share * (1 - share) / 400))
    assert f"(raw z ~ N(0, I): {share:.3f} ± {r['share_raw_se']:.3f})" in dead_zone_table([r], ["vae"])
