"""A trained classifier from a checkpoint, or an ensemble from several, ready for inference
(predict.py and the collection mode)."""
from __future__ import annotations

from collections.abc import Sequence

from core.checkpoint import CheckpointError, load, load_model_weights
from core.shards import sha256_file
from core.spec import FeatureSpec
from model import Ensemble, build_model


def load_classifier(ckpt_paths: str | Sequence[str], device: str = "cpu", raw: bool = False):
    """(model in eval mode on `device`, classes, FeatureSpec) from a checkpoint; CheckpointError in one line.
    Several checkpoints make one model.Ensemble; they must agree on classes (in order) and
    feature parameters. raw: the trained weights even where a run kept an EMA average (the default)."""
    paths = [ckpt_paths] if isinstance(ckpt_paths, str) else list(ckpt_paths)
    if not paths:
        raise CheckpointError("no checkpoint given")
    _refuse_repeated(paths)
    members, classes, spec = [], None, None
    for path in paths:
        model, c, s = _load_one(path, device, raw)
        if classes is not None and c != classes:
            raise CheckpointError(f"{path}: classes {c} differ from {paths[0]}'s {classes}; an ensemble's "
                                  f"members must be trained on the same classes")
        if spec is not None and s != spec:
            diff = next(k for k, v in s.to_dict().items() if spec.to_dict().get(k) != v)
            raise CheckpointError(f"{path}: feature parameter {diff} is {s.to_dict()[diff]!r}, {paths[0]}'s is "
                                  f"{spec.to_dict().get(diff)!r}; an ensemble's members must share the features")
        members.append(model)
        classes, spec = c, s
    if len(members) == 1:
        return members[0], classes, spec
    return Ensemble(members).eval().to(device), classes, spec


def _refuse_repeated(paths: list[str]) -> None:
    """A member given twice (the same bytes, under any name) would double its vote at twice the cost."""
    if len(paths) < 2:
        return
    seen: dict[str, str] = {}
    for path in paths:
        try:
            digest = sha256_file(path)
        except OSError:
            continue  # load() names what is wrong with it
        if digest in seen:
            same = "given twice" if path == seen[digest] else f"the same bytes as {seen[digest]}"
            raise CheckpointError(f"{path}: {same}; an ensemble's members must be different checkpoints")
        seen[digest] = path


def _load_one(path: str, device: str, raw: bool):
    state = load(path, map_location=device)
    classes, spec = state["classes"], FeatureSpec.from_dict(state["feature_spec"])
    try:
        model = build_model(state["model_name"], len(classes))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    load_model_weights(model, state, path, for_inference=not raw)  # the EMA's weights when the run kept one
    return model.eval().to(device), classes, spec
