"""Constants the tests share (a plain module: tests import it, unlike conftest.py)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: scripts run from here
TRAIN_GENRES = ["classical", "disco", "metal", "reggae"]


def _two_rank_args() -> list[str]:
    """The tests' 2-rank runs go on the CPU (gloo) unless there are 2 GPUs: never 2 ranks on one GPU."""
    import torch
    return ["--cpu"] if torch.cuda.is_available() and torch.cuda.device_count() < 2 else []


TWO_RANK_ARGS = _two_rank_args()
