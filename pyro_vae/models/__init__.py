"""The models: :class:`VAE` and its :class:`Autoencoder` baseline (:mod:`.vae`), the
:class:`ConditionalVAE` (:mod:`.cvae`), and their builders (:mod:`.build`)."""

from .build import (MODEL_BUILDERS, build_autoencoder, build_cvae, build_cvae_quadrant, build_model,
                    build_vae)
from .cvae import PRIORS, ConditionalVAE, LabelCondition, QuadrantCondition
from .vae import VAE, Autoencoder, check_batch, unique_name

__all__ = ["VAE", "Autoencoder", "ConditionalVAE", "LabelCondition", "QuadrantCondition", "PRIORS",
           "MODEL_BUILDERS", "build_model", "build_vae", "build_autoencoder", "build_cvae", "build_cvae_quadrant",
           "check_batch", "unique_name"]
