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


# train.py's TensorBoard scalars (training/tensorboard.py), written out here so the tests check them
# against metrics.json independently: tag -> history key; storage tags per rank (bytes as MB).
BOARD = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
         "accuracy/val_tracks": "val_track_acc", "accuracy/val_windows": "val_segment_acc", "lr": "lr",
         "throughput/samples_per_s": "samples_per_s", "throughput/data_wait": "data_wait",
         "throughput/epoch_seconds": "epoch_seconds", "loss/val_raw": "val_loss_raw",
         "accuracy/val_tracks_raw": "val_track_acc_raw", "accuracy/val_windows_raw": "val_segment_acc_raw"}
BOARD_TEST = {"accuracy/test_tracks": ("test", "track_acc"), "accuracy/test_windows": ("test", "segment_acc"),
              "loss/test": ("test", "loss"), "accuracy/test_tracks_raw": ("test_raw", "track_acc"),
              "accuracy/test_windows_raw": ("test_raw", "segment_acc"), "loss/test_raw": ("test_raw", "loss")}


def read_board(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run folder's event files, read back by TensorBoard's own reader (which
    applies purges and drops steps that a restarted writer logged again): {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def board_expected(history: list[dict], metrics: dict | None = None) -> dict[str, list[tuple[int, float]]]:
    """What read_board must give for a run whose metrics.json holds `history` (and, if given, the
    finished run's `metrics` with its test figures, logged at the last epoch)."""
    want: dict[str, list[tuple[int, float]]] = {}

    def put(tag: str, epoch: int, v) -> None:
        if v is not None:
            want.setdefault(tag, []).append((epoch, float(v)))
    for h in history:
        for tag, key in BOARD.items():
            put(tag, h["epoch"], h.get(key))
        s = h.get("storage")
        if s:
            put("storage/mb_fetched", h["epoch"], s["bytes_fetched"] / 1e6)
            put("storage/retries", h["epoch"], s["retries"])
            put("storage/evictions", h["epoch"], s["evictions"])
            for i, r in enumerate(s["ranks"]):
                put(f"storage/rank{i}/mb_fetched", h["epoch"], r["bytes_fetched"] / 1e6)
                for k in ("fetch_mb_s", "hit_rate", "retries", "evictions"):
                    put(f"storage/rank{i}/{k}", h["epoch"], r[k])
    for tag, (entry, key) in BOARD_TEST.items():
        if metrics and history and key in metrics.get(entry, {}):
            put(tag, history[-1]["epoch"], metrics[entry][key])
    return want


def assert_board_matches(run_dir, history: list[dict]) -> None:
    """The run folder's TensorBoard scalars are metrics.json's history (and its test figures, where
    the folder holds a finished run's metrics.json): the same tags, one point per epoch (no step
    twice), values equal to float32 precision (the event files store float32)."""
    import json
    import os
    import pytest
    path = os.path.join(run_dir, "metrics.json")
    metrics = json.load(open(path)) if os.path.exists(path) else None
    got, want = read_board(run_dir), board_expected(history, metrics)
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=2e-7, abs=1e-30), tag


def tone_shards(tmp_path, freqs=(700.0, 1000.0, 1400.0), seconds: float = 6.0) -> tuple[str, dict[int, float]]:
    """Shards of pure tones (one 16-bit WAV per frequency); returns (shard folder, {uid: frequency})."""
    import numpy as np
    import soundfile as sf
    from preprocess.make_shards import make_shards
    sr = 22_050
    (tmp_path / "src" / "tone").mkdir(parents=True)
    t = np.arange(int(seconds * sr)) / sr
    for f in freqs:
        sf.write(tmp_path / "src" / "tone" / f"{int(f)}.wav", 0.5 * np.sin(2 * np.pi * f * t), sr, subtype="PCM_16")
    m = make_shards(str(tmp_path / "src"), str(tmp_path / "shards"), val=0, test=0, min_shards=1, workers=1,
                    progress=False)
    return str(tmp_path / "shards"), {s["uid"]: float(os.path.basename(s["source"])[:-4]) for s in m["samples"]}


def tone_pitch_ratios(shards: str, f_of: dict[int, float], speed: float, device=None, epochs: int = 2) -> list[float]:
    """Training crops of tone_shards (2 s, 4 per track) with Augment(speed=...): each crop's peak
    mel band's frequency over the tone's, i.e. the speed it was played at (to a mel band's width)."""
    import torch
    import torchaudio.functional as AF
    from core.spec import Augment, FeatureSpec
    from loading.loader import DaliLoader
    spec = FeatureSpec(clip_seconds=2.0)
    # each mel band's peak frequency (its triangle's top)
    top = AF.melscale_fbanks(spec.n_fft // 2 + 1, spec.f_min, spec.f_max, spec.n_mels, spec.sample_rate,
                             norm=None, mel_scale=spec.mel_scale).argmax(0).numpy() * spec.sample_rate / spec.n_fft
    ld = DaliLoader(shards, "train", spec, 3, train=True, crops=4, num_threads=1, seed=3, augment=Augment(speed=speed),
                    device=device or torch.device("cpu"))
    out = []
    for _ in range(epochs):
        for b in ld:
            assert b.x.shape[1:] == (1, spec.n_mels, spec.clip_frames) and torch.isfinite(b.x).all()
            out += [top[int(c.mean(1).argmax())] / f_of[int(u)] for c, u in zip(b.x[:, 0].cpu(), b.uid)]
    return out
