r"""Evaluation of trained models, one job per module:

- :mod:`~pyro_vae.eval.likelihood`: log p(x_n) by importance sampling with the guide,
  log p̂(x_n) = log (1/S) Σ_s p(x_n, z_s) / q(z_s | x_n), z_s ~ q(z | x_n), the IWAE bounds
  L_K ≤ log p(x_n) (L_1 the ELBO) and the active units, for any Pyro model and guide;
- :mod:`~pyro_vae.eval.classifier`: an independent CNN p(y | x) = softmax(f(x)) and its
  verdicts on images (confidence max_k p(y=k | x), accuracy, predicted-class entropy);
- :mod:`~pyro_vae.eval.latent`: codes of the data in a frame where they are compared
  with N(0, I), and the dead zones of the latent space;
- :mod:`~pyro_vae.eval.posterior`: the guide q(z | x) against NUTS draws from the true
  posterior p(z | x) ∝ p(z) p(x | z) (Pareto k̂, divergences). It needs ArviZ, so it is
  imported on first use: ``from pyro_vae.eval import posterior``, or any of its names from
  this package;
- :mod:`~pyro_vae.eval.gap`: the amortization gap, the encoder's ELBO against the same
  family fitted to each point alone;
- :mod:`~pyro_vae.eval.calls`: the call forms all of them take, ``(model, guide, x, *args)``
  as :class:`pyro.infer.Importance` takes them, or ``(vae, x, *args)``.

Their pictures (pair plots of NUTS against the guide among them) are in :mod:`pyro_vae.plots`.
"""

import importlib

from .calls import ModelAndGuide, fixed_model, model_and_guide
from .classifier import (
    DigitClassifier,
    classifier_accuracy,
    classifier_confidence,
    classifier_probs,
    predicted_class_entropy,
    train_classifier,
)
from .gap import FreeOutputs, amortization_gap, copy_with_guide_outputs
from .latent import (
    LatentFrame,
    dead_zone_report,
    dead_zone_share,
    dead_zone_table,
    dead_zone_threshold,
    latent_codes,
    latent_frame,
    nearest_distances,
)
from .likelihood import (
    active_units,
    elbo,
    importance_sampling,
    iwae_bound,
    likelihood_report,
    log_likelihood,
    posterior_means,
)

__all__ = [
    # calls
    "ModelAndGuide",
    "model_and_guide",
    "fixed_model",
    # likelihood
    "importance_sampling",
    "log_likelihood",
    "iwae_bound",
    "elbo",
    "posterior_means",
    "active_units",
    "likelihood_report",
    # classifier
    "DigitClassifier",
    "train_classifier",
    "classifier_probs",
    "classifier_confidence",
    "classifier_accuracy",
    "predicted_class_entropy",
    # latent
    "latent_codes",
    "LatentFrame",
    "latent_frame",
    "nearest_distances",
    "dead_zone_threshold",
    "dead_zone_share",
    "dead_zone_report",
    "dead_zone_table",
    # gap
    "FreeOutputs",
    "amortization_gap",
    "copy_with_guide_outputs",
]

#: the names of :mod:`~pyro_vae.eval.posterior`, imported (with ArviZ) when first asked for
POSTERIOR_NAMES = (
    "KHAT_THRESHOLD",
    "nuts_posterior",
    "nuts_diagnostics",
    "nuts_draws",
    "log_joint",
    "guide_distribution",
    "importance_log_weights",
    "pareto_khat",
    "khat_share",
    "log_evidence",
    "compare_to_nuts",
    "guide_draws",
    "informative_dims",
)


def __getattr__(name):
    if name == "posterior" or name in POSTERIOR_NAMES:
        module = importlib.import_module(".posterior", __name__)
        return module if name == "posterior" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"posterior", *POSTERIOR_NAMES})
