"""Feature definition and data pipelines: the FeatureSpec, audio decoding, DALI and torchaudio features."""
from pipeline.spec import FeatureSpec

__all__ = ["FeatureSpec"]
