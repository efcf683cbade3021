"""Training machinery: rank/DDP setup, the AMP step, checkpoints, evaluation and reports."""
