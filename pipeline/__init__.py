"""Feature definition and data pipelines: the FeatureSpec, audio decoding, DALI and torchaudio features."""
from pipeline.spec import FeatureSpec


def version() -> str:
    """The installed project's version (pyproject.toml is the one place it is written)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("parallel-tunes")
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .` or scripts/setup.sh)"


__all__ = ["FeatureSpec", "version"]
