"""studies/wide_proposal.py: each proposal replaces the guide's Normal sites as it says, and the
importance-sampled log p(x) under it is the closed-form log p(x) of a linear-Gaussian VAE within
its Monte Carlo error."""

import argparse

import pyro
import pytest
import torch
from linear_gaussian import X, exact, linear_gaussian_vae
from pyro import poutine
from wide_proposal import Widen, proposal

from pyro_vae.eval import log_likelihood

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_proposals_replace_the_normal_site_and_leave_the_plate_alone():
    vae = linear_gaussian_vae("diagonal")
    traces = [
        poutine.trace(g).get_trace(X) for g in (vae.guide, Widen(tau=1.5)(vae.guide), Widen(2.0, df=5.0)(vae.guide))
    ]
    plain, wide, heavy = (t.nodes["z"]["fn"] for t in traces)
    assert len({type(t.nodes["data"]["fn"]) for t in traces}) == 1  # the data plate's subsample site
    assert torch.equal(wide.base_dist.loc, plain.base_dist.loc)
    assert torch.allclose(wide.base_dist.scale, 1.5 * plain.base_dist.scale)
    assert isinstance(heavy.base_dist, pyro.distributions.StudentT) and (heavy.base_dist.df == 5.0).all()
    assert torch.allclose(heavy.base_dist.scale, 2.0 * plain.base_dist.scale)
    assert wide.event_shape == plain.event_shape == heavy.event_shape == (2,)


@pytest.mark.parametrize("w", [Widen(1.0), Widen(1.5), Widen(1.5, df=5.0)], ids=["tau1", "tau1.5", "t5"])
def test_every_proposal_estimates_the_closed_form_log_px(w):
    vae = linear_gaussian_vae("diagonal")  # its guide outputs N(0, I) for every x: a poor proposal
    pyro.set_rng_seed(0)
    log_px, stderr = log_likelihood(vae.model, w(vae.guide), X, num_samples=20000, return_stderr=True)
    assert abs(log_px.item() - exact()[2]) < 4 * stderr.item() + 1e-3


def test_tau_one_is_the_guide_itself():
    vae = linear_gaussian_vae("diagonal")
    pyro.set_rng_seed(0)
    plain = log_likelihood(vae, X, num_samples=500)
    pyro.set_rng_seed(0)
    same = log_likelihood(vae.model, Widen(1.0)(vae.guide), X, num_samples=500)
    assert torch.allclose(plain, same)


def test_a_bad_spec_is_refused_in_one_line():
    assert proposal("t:10:1").df == 10.0 and proposal("normal:1.2").tau == 1.2
    for bad in ("normal", "t:5", "cauchy:1", "normal:wide"):
        with pytest.raises(argparse.ArgumentTypeError, match="write normal:TAU or t:DF:TAU"):
            proposal(bad)
