"""ParallelTunes' benchmarks: a small package and the scripts that use it.

Run every script as a module from the repository root, e.g. `python -m bench.features --help`:
`-m` puts the repository root on sys.path, so `bench`, `pipeline`, `training`, ... import with or
without `pip install -e .` (the offline GPU machine has no install; tools/gpu_check.sh does the same).
`python bench/features.py` does not work: a script run as a file sees its own folder, not the root.

The package (standard library at import time; heavy imports happen inside the functions):
  harness    the fresh-process runner, rerun-if-disturbed, wait-for-idle, CPU load of the others
  memory     peak host memory of a process and its workers (/proc), peak GPU memory
  host       the machine and the package versions, and its short name (cpu2, cpu16-h100)
  data       the clips (synthetic or a folder), packed into cached shards; page-cache warming
  tables     one markdown table and one bar chart, both driven by column lists
  reference  the librosa reference log-mel (the original project's features) and its pieces
  servers    real loopback servers (SeaweedFS S3 via `weed mini`, a static HTTP server); tests/servers.py
             wraps them in pytest fixtures
The scripts (features, train_throughput, object_store, dali_tuning, dali_parity, hard_set, gpu_smoke,
gpu_wheels, realmusic) keep their methods and `main`; bench/NOTES.md tells what each measured.
realmusic builds the real-music development set (with realmusic_set, its rules, and
realmusic_debian, the packages).
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: scripts run from here
BENCH = os.path.join(ROOT, "bench")
CACHE = os.path.join(BENCH, ".cache")       # generated clips, shards, runs (git-ignored)
RESULTS = os.path.join(BENCH, "results")    # JSON and PNG, committed when quoted in NOTES.md


def pin_ema(args: list[str]) -> list[str]:
    """train.py arguments of a measured recipe with `--ema 0` where they name no --ema, so a recipe
    measured without the average stays that run whatever train.py's --ema default is."""
    return args if "--ema" in args else [*args, "--ema", "0"]
