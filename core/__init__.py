"""The bottom layer: formats and the small pieces every layer above may use.

    core.spec        FeatureSpec: the one definition of the features (in manifests and checkpoints)
    core.shards      the shard format: names, members, manifest schema and checks, writer, verifier
    core.checkpoint  the checkpoint format: save, load, version, fields
    core.atomic      atomic file writes
    core.faults      named fault points for the tests (inert unless PT_TEST_FAULT is set)

Nothing here imports from another of the project's packages. The layers, bottom to top:
core -> storage -> features -> loading -> model -> analysis -> training | inference -> applications
(train.py, predict.py, predict_collection.py, preprocess/, bench/, tools/); tests/test_layers.py
holds them to it.
"""
from core.spec import FeatureSpec


def version() -> str:
    """The installed project's version (pyproject.toml is the one place it is written)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("parallel-tunes")
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .` or scripts/setup.sh)"


__all__ = ["FeatureSpec", "version"]
