"""CNN classifiers for (batch, 1, mels, frames) log-mel input, alone or as an ensemble."""
from model.cnn import DEFAULT_MODEL, MODELS, build_model, count_parameters, member_names
from model.ensemble import Ensemble

__all__ = ["DEFAULT_MODEL", "MODELS", "Ensemble", "build_model", "count_parameters", "member_names"]
