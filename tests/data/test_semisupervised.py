"""Balanced, seeded label choice and the mixing of labelled and unlabelled batches."""

import pytest
import torch

from pyro_vae.data import DataError, ImageData
from pyro_vae.data.semisupervised import UNLABELLED, SemiSupervisedData, choose_labelled, semisupervised


def labels(n=600, k=10, seed=0):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num", [10, 100, 37])
def test_choice_is_balanced_per_class(num):
    y = labels()
    idx = choose_labelled(y, num)
    assert len(idx) == num and len(idx.unique()) == num
    counts = torch.bincount(y[idx], minlength=10)
    per, extra = divmod(num, 10)
    assert counts.tolist() == [per + (k < extra) for k in range(10)]


def test_choice_is_fixed_by_the_seed():
    y = labels()
    assert torch.equal(choose_labelled(y, 50, seed=3), choose_labelled(y, 50, seed=3))
    assert not torch.equal(choose_labelled(y, 50, seed=3), choose_labelled(y, 50, seed=4))


def test_choice_refuses_bad_counts():
    y = labels(n=30)
    with pytest.raises(DataError, match="--labels"):
        choose_labelled(y, 0)
    with pytest.raises(DataError, match="need"):
        choose_labelled(torch.zeros(30, dtype=torch.long), 20)


def test_batches_are_pure_and_mix_as_configured():
    y = labels(n=200)
    data = semisupervised(
        ImageData(x=torch.rand(200, 4), y=y, image_shape=(1, 2, 2), name="t"), 20, seed=0, labelled_every=2
    )
    assert isinstance(data, SemiSupervisedData)
    assert (data.y != UNLABELLED).sum() == 20
    kinds, seen_unl = [], 0
    for _xb, yb in data.batches(30, generator=torch.Generator().manual_seed(0)):
        lab = yb != UNLABELLED
        assert lab.all() or (~lab).all()
        kinds.append(bool(lab.all()))
        seen_unl += int((~lab).sum())
    assert seen_unl == 180  # every unlabelled point once per epoch
    # 6 unlabelled batches of 30; a labelled batch (of min(30, 20) = 20) after every 2nd
    assert kinds == [False, False, True] * 3


def test_another_data_sets_images_join_the_unlabelled_points():
    g = torch.Generator().manual_seed(0)
    data = ImageData(x=torch.rand(200, 64, generator=g), y=labels(n=200), image_shape=(1, 8, 8), name="a")
    data.source = {"dataset": "a", "binarize": None, "seed": 0}
    more = ImageData(x=torch.rand(50, 64, generator=g), y=labels(n=50, seed=1), image_shape=(1, 8, 8), name="b")
    more.source = {"dataset": "b", "binarize": None, "seed": 0}
    alone = semisupervised(data, 20, seed=3)
    semi = semisupervised(data, 20, seed=3, unlabelled=more)
    assert len(semi) == 250 and torch.equal(semi.x, torch.cat([data.x, more.x]))
    # the same labels kept as without the extra images; every extra image unlabelled, its label dropped
    assert torch.equal(semi.y[:200], alone.y) and (semi.y[200:] == UNLABELLED).all()
    assert len(semi.labelled) == 20 and len(semi.unlabelled) == 230
    assert semi.source["unlabelled"] == "b" and semi.source["labels"] == 20
    other = ImageData(x=torch.rand(5, 16), y=None, image_shape=(1, 4, 4), name="c")
    with pytest.raises(DataError, match=r"unlabelled images of c have shape \(1, 4, 4\).*must be the same"):
        semisupervised(data, 20, unlabelled=other)
