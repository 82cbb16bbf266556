"""The models: :class:`VAE` and its :class:`Autoencoder` baseline (:mod:`.vae`), the
:class:`ConditionalVAE` (:mod:`.cvae`), the two-layer :class:`HierarchicalVAE` (:mod:`.hvae`), the semi-supervised :class:`SemiSupervisedVAE` (:mod:`.ssvae`) and its M1+M2 stack :class:`StackedSemiSupervisedVAE` (:mod:`.m1m2`), and their builders (:mod:`.build`)."""

from .build import (
    MODEL_BUILDERS,
    build_autoencoder,
    build_cvae,
    build_cvae_quadrant,
    build_hvae,
    build_m1m2,
    build_model,
    build_ssvae,
    build_vae,
)
from .cvae import PRIORS, ConditionalVAE, LabelCondition, QuadrantCondition
from .hvae import HierarchicalVAE
from .m1m2 import FeatureMap, StackedSemiSupervisedVAE
from .ssvae import SemiSupervisedVAE
from .vae import VAE, Autoencoder, check_batch, unique_name

__all__ = [
    "VAE",
    "Autoencoder",
    "ConditionalVAE",
    "HierarchicalVAE",
    "LabelCondition",
    "QuadrantCondition",
    "PRIORS",
    "MODEL_BUILDERS",
    "build_model",
    "build_vae",
    "build_autoencoder",
    "build_cvae",
    "build_cvae_quadrant",
    "build_hvae",
    "build_ssvae",
    "SemiSupervisedVAE",
    "StackedSemiSupervisedVAE",
    "FeatureMap",
    "build_m1m2",
    "check_batch",
    "unique_name",
]
