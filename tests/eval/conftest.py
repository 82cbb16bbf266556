"""Fixtures shared by the tests of pyro_vae.eval: the digits data and a classifier
trained on it (once per session: training it takes seconds)."""

import pytest

from pyro_vae.data import load_dataset
from pyro_vae.eval import train_classifier


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "valid")


@pytest.fixture(scope="session")
def digits_classifier(digits):
    train, _ = digits
    return train_classifier(train, epochs=30, seed=0)
