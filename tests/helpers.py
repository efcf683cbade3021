"""Constants and helpers the tests share (a plain module: tests import it, unlike conftest.py)."""
import contextlib
import fcntl
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: scripts run from here
TRAIN_GENRES = ["classical", "disco", "metal", "reggae"]


def _two_rank_args() -> list[str]:
    """The tests' 2-rank runs go on the CPU (gloo) unless there are 2 GPUs: never 2 ranks on one GPU."""
    import torch
    return ["--cpu"] if torch.cuda.is_available() and torch.cuda.device_count() < 2 else []


TWO_RANK_ARGS = _two_rank_args()


@contextlib.contextmanager
def built_once(tmp_path_factory, name: str):
    """(folder, done) for data that one test session builds once, also when pytest-xdist runs it in
    several workers: the session-wide folder of `name` (shared by the workers) and whether it is
    already built. The caller builds it when not done and writes `folder/done.json` last; a lock
    is held meanwhile, so the other workers wait and then read it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / f"shared-{name}"
    folder.mkdir(exist_ok=True)
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder, (folder / "done.json").exists()


def run_main(main, argv: list[str]):
    """A CLI's main(argv) in this process, its exit code, stdout and stderr captured as a process's
    would be (subprocess.CompletedProcess): for tests of messages and exit codes, where a process
    would add only torch's import."""
    import io
    import subprocess
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
