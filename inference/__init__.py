"""The inference layer: a classifier from a checkpoint, ranking, timelines, window batching (predict.py and
the collection mode share it)."""
