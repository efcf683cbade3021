"""The features layer: audio decoding and resampling, the DALI graph, its torchaudio twin, model windows."""
