"""A trained classifier from a checkpoint, ready for inference (predict.py and the collection mode)."""
from __future__ import annotations

from core.checkpoint import CheckpointError, load, load_model_weights
from core.spec import FeatureSpec
from model import build_model


def load_classifier(ckpt_path: str, device: str = "cpu", raw: bool = False):
    """(model in eval mode on `device`, classes, FeatureSpec) from a checkpoint; CheckpointError in one line.
    raw: the trained weights even where the run kept an EMA average (the average is the default)."""
    state = load(ckpt_path, map_location=device)
    classes, spec = state["classes"], FeatureSpec.from_dict(state["feature_spec"])
    try:
        model = build_model(state["model_name"], len(classes))
    except ValueError as e:
        raise CheckpointError(f"{ckpt_path}: {e}") from None
    load_model_weights(model, state, ckpt_path, for_inference=not raw)  # the EMA's weights when the run kept one
    return model.eval().to(device), classes, spec
