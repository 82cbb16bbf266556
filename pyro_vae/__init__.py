"""pyro_vae: variational autoencoders written the Pyro way."""

from .amortized import AmortizedGuide, ModelGuide
from .config import DataConfig, ModelConfig, TrainConfig
from .data import ImageData, load_dataset
from .eval import log_likelihood
from .models import VAE, build_model, build_vae
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .objectives import make_objective
from .runs import load_run, resume
from .train import Trainer, evaluate_loss, fit

__all__ = [
    "AmortizedGuide",
    "ModelGuide",
    "VAE",
    "build_vae",
    "build_model",
    "load_run",
    "log_likelihood",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "ImageData",
    "load_dataset",
    "make_objective",
    "Trainer",
    "fit",
    "evaluate_loss",
    "resume",
    "TrainConfig",
    "DataConfig",
    "ModelConfig",
]
__version__ = "0.1.0"
