"""CNN classifiers for (batch, 1, mels, frames) log-mel input."""
from model.cnn import MODELS, build_model, count_parameters

__all__ = ["MODELS", "build_model", "count_parameters"]
