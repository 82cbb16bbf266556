"""The independent classifier of pyro_vae.eval.classifier: accurate on real digits,
its confidence the mean max-softmax, clear errors, and the predicted-class entropy in
closed form."""

import math

import pytest
import torch

from pyro_vae.data import ImageData, load_dataset
from pyro_vae.eval.classifier import (
    DigitClassifier,
    classifier_accuracy,
    classifier_confidence,
    classifier_probs,
    predicted_class_entropy,
    train_classifier,
)


# ---- classifier ------------------------------------------------------------------------
def test_classifier_is_accurate_on_digits(digits, digits_classifier):
    _, valid = digits
    assert classifier_accuracy(digits_classifier, valid.x, valid.y) >= 0.95


def test_classifier_is_accurate_on_mnist10k(shared_data):
    train = load_dataset("mnist10k", "train", shared_data)
    valid = load_dataset("mnist10k", "valid", shared_data)
    clf = train_classifier(train, epochs=3, seed=0)
    assert clf(valid.x[:5]).shape == (5, 10)
    assert classifier_accuracy(clf, valid.x, valid.y) >= 0.95


def test_confidence_is_the_mean_max_softmax(digits, digits_classifier):
    _, valid = digits
    x = valid.x[:50]
    with torch.no_grad():
        expected = digits_classifier(x).softmax(-1).max(-1).values.mean().item()
    conf = classifier_confidence(digits_classifier, x)
    assert conf == pytest.approx(expected, abs=1e-6)
    assert 0.1 <= conf <= 1.0
    probs = classifier_probs(digits_classifier, x)
    assert torch.allclose(probs.sum(-1), torch.ones(50), atol=1e-5)
    # real digits look like digits to it, uniform noise much less so
    noise = torch.rand(200, 64, generator=torch.Generator().manual_seed(0))
    assert classifier_confidence(digits_classifier, valid.x) > 0.9
    assert classifier_confidence(digits_classifier, noise) < classifier_confidence(digits_classifier, valid.x) - 0.1


def test_classifier_bad_input_is_named(digits, digits_classifier):
    train, valid = digits
    with pytest.raises(ValueError, match="no labels"):
        train_classifier(ImageData(x=train.x[:10], image_shape=train.image_shape))
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        classifier_confidence(digits_classifier, torch.rand(3, 784))
    with pytest.raises(ValueError, match="one label per image"):
        classifier_accuracy(digits_classifier, valid.x[:5], valid.y[:4])
    with pytest.raises(ValueError, match="at least 4×4"):
        DigitClassifier((1, 2, 2))


def test_predicted_class_entropy_closed_forms():
    eye = torch.eye(10)
    assert predicted_class_entropy(eye.repeat(3, 1)) == pytest.approx(math.log(10))  # all classes equally
    assert predicted_class_entropy(eye[[4] * 30]) == pytest.approx(0.0)  # one class for all
    half = torch.cat([eye[[1] * 5], eye[[7] * 5]])
    assert predicted_class_entropy(half) == pytest.approx(math.log(2))


def test_classifier_training_follows_its_seed_alone(digits):
    """Weights, batch order and dropout masks follow ``seed``, whatever the global
    generator's state; and the caller's global generator is left as it was."""
    train, _ = digits
    small = ImageData(x=train.x[:256], y=train.y[:256], image_shape=train.image_shape, num_classes=10)
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        clf = train_classifier(small, epochs=2, seed=3)
        assert torch.equal(torch.get_rng_state(), before)
        weights.append(clf.state_dict())
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name
