"""Static binarization is one seeded random draw x_bin ~ Bernoulli(x), not a threshold.

The digits' grey levels are k/16, k = 0..16: for every level p = k/16 strictly between 0
and 1 the share of ones among the pixels of that level must be p within 5 binomial
standard errors √(p(1 − p)/n), and pixels of the same grey level must not all come out
the same (a threshold at ½ gives 0 below it and 1 above it, deterministically)."""

import math

import pytest
import torch

from pyro_vae.data import binarize_static, load_dataset

K = 5.0  # binomial standard errors allowed


@pytest.fixture(scope="module")
def grey():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def static():
    return load_dataset("digits", "train", binarize="static", seed=0)


def test_static_binarization_is_binary_and_keeps_black_and_white(grey, static):
    assert static.x.shape == grey.x.shape and static.x.dtype == grey.x.dtype
    assert set(static.x.unique().tolist()) == {0.0, 1.0}
    assert static.binarize is None  # drawn once, not redrawn per batch
    # Bernoulli(0) = 0 and Bernoulli(1) = 1 always
    assert (static.x[grey.x == 0] == 0).all()
    assert (static.x[grey.x == 1] == 1).all()


def test_share_of_ones_matches_every_grey_level_within_binomial_error(grey, static):
    levels = torch.round(grey.x * 16).long()
    assert torch.allclose(levels.float() / 16, grey.x)  # grey levels are exactly k/16
    checked = 0
    for k in range(1, 16):
        sel = levels == k
        n = int(sel.sum())
        if n < 100:
            continue
        p = k / 16
        share = static.x[sel].mean().item()
        se = math.sqrt(p * (1 - p) / n)
        assert abs(share - p) < K * se, (
            f"grey level {k}/16: share of ones {share:.4f}, expected {p:.4f} ± {K * se:.4f} (n={n})"
        )
        # not deterministic: pixels of the same grey level come out both ways
        ones = int(static.x[sel].sum())
        assert 0 < ones < n, f"grey level {k}/16: all {n} pixels gave {static.x[sel][0].item():g}"
        checked += 1
    assert checked >= 10


def test_overall_share_of_grey_pixels_matches_their_mean_intensity(grey, static):
    """Σ x_bin over grey pixels ≈ Σ p: Var = Σ p(1 − p), the error of independent Bernoullis."""
    sel = (grey.x > 0) & (grey.x < 1)
    p = grey.x[sel].double()
    ones = static.x[sel].double().sum()
    se = p.mul(1 - p).sum().sqrt()
    assert abs(ones - p.sum()) < K * se, (ones.item(), p.sum().item(), se.item())


def test_same_seed_same_draw_other_seed_other_draw(grey, static):
    again = load_dataset("digits", "train", binarize="static", seed=0)
    assert torch.equal(again.x, static.x)
    other = load_dataset("digits", "train", binarize="static", seed=1)
    grey_px = (grey.x > 0) & (grey.x < 1)
    differ = static.x != other.x
    # only grey pixels can differ, and two independent draws disagree with probability
    # 2 p (1 − p) at each of them
    assert not differ[~grey_px].any()
    p = grey.x[grey_px].double()
    expected = (2 * p * (1 - p)).sum()
    se = (2 * p * (1 - p) * (1 - 2 * p * (1 - p))).sum().sqrt()
    assert abs(differ[grey_px].double().sum() - expected) < K * se, (int(differ.sum()), expected.item())


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.7, 0.95])
def testbinarize_static_of_a_constant_grey_level(p):
    x = torch.full((200, 100), p)
    out = binarize_static(x, seed=3)
    assert torch.equal(out, binarize_static(x, seed=3))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    n = x.numel()
    se = math.sqrt(p * (1 - p) / n)
    assert abs(out.mean().item() - p) < K * se, (p, out.mean().item())


def test_validation_split_is_also_a_bernoulli_draw():
    grey = load_dataset("digits", "valid")
    binary = load_dataset("digits", "valid", binarize="static", seed=0)
    assert torch.equal(binary.x, load_dataset("digits", "valid", binarize="static", seed=0).x)
    sel = (grey.x > 0) & (grey.x < 1)
    p = grey.x[sel].double()
    ones = binary.x[sel].double()
    assert abs(ones.sum() - p.sum()) < K * p.mul(1 - p).sum().sqrt()
    # among pixels at ½ exactly, both outcomes
    half = grey.x == 0.5
    assert 0 < int(binary.x[half].sum()) < int(half.sum())
