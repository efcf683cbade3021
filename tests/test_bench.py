"""Smoke tests of bench/: every script on a few clips of a few seconds, its JSON and table checked.

Each script runs as `python -m bench.<script>` from the repository root (what the docs and
tools/gpu_check.sh do), in a fresh process with a timeout, into a temporary cache and results
folder. librosa is a benchmark-only dependency (bench/requirements.txt): without it the methods
that need it must report themselves skipped; with it, their figures are checked too.
"""
import glob
import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import ROOT, TRAIN_GENRES

HAVE_LIBROSA = importlib.util.find_spec("librosa") is not None
CLIPS = 2 * len(TRAIN_GENRES)  # 8 clips of 3 s


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    """(source folder, cache shared by the scripts: shards are packed once)."""
    from preprocess.synth import generate
    base = tmp_path_factory.mktemp("bench")
    generate(str(base / "src"), per_class=2, seconds=3.0, seed=0, genres=TRAIN_GENRES, progress=False)
    return str(base / "src"), str(base / "cache")


def run(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{module} exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def only_json(folder: str, pattern: str) -> dict:
    found = glob.glob(os.path.join(folder, pattern))
    assert len(found) == 1, found
    with open(found[0], encoding="utf-8") as f:
        return json.load(f)


def assert_librosa_row(r: dict) -> None:
    """Skipped, naming librosa, where it is not installed; a real timing where it is."""
    if HAVE_LIBROSA:
        assert "error" not in r and "skipped" not in r, r
    else:
        assert "librosa not installed" in r.get("skipped", ""), r


def test_features(bench_data, tmp_path):
    src, cache = bench_data
    methods = ["librosa-1proc", "torchaudio-cpu", "dali-cpu", "torchaudio-cuda"]
    p = run("bench.features", "--src", src, "--clips", str(CLIPS), "--repeats", "1", "--budget", "5", "--window-steps", "3",
            "--wait-idle", "0", "--retries", "0", "--method-timeout", "90", "--methods", ",".join(methods),
            "--cache", cache, "--out", str(tmp_path))
    rep = only_json(str(tmp_path), "features-*.json")
    assert rep["complete"] and rep["data"]["clips"] == CLIPS and rep["data"]["shard_dir"]
    assert abs(rep["data"]["total_seconds"] - 3.0 * CLIPS) < 0.1
    rows = {r["method"]: r for r in rep["methods"]}
    assert list(rows) == methods
    for name in ("torchaudio-cpu", "dali-cpu"):
        r = rows[name]
        assert "error" not in r and "skipped" not in r, r
        assert len(r["times_s"]) == 1 and r["clips_per_s"]["median"] > 0 and r["peak_rss_mb"] > 100
        # a window: whole passes holding 3 batches (one batch of 8 clips a pass), unless the budget
        # (5 s over the warm-up pass's time) allows fewer; waited for once, at its end
        passes = max(1, min(3, int(5 // r["warmup_s"])))
        assert r["steps_per_pass"] == 1 and r["passes_per_window"] == passes and r["clips_per_window"] == passes * CLIPS
        assert r["syncs_per_window"] == [1] and r["clock"] == "perf_counter" and r["times_s"][0] <= r["host_s"][0]
        assert r["clips_per_s"]["median"] == pytest.approx(passes * CLIPS / r["times_s"][0])
        assert 0 <= r["other_load_cores"] < os.cpu_count() and r["attempts"] == 1
        assert f"| {name} | " in p.stdout
    assert_librosa_row(rows["librosa-1proc"])
    if HAVE_LIBROSA:  # every method against the librosa reference (bench.reference)
        for name in ("librosa-1proc", "torchaudio-cpu", "dali-cpu"):
            assert rows[name]["parity_clips"] == CLIPS and rows[name]["max_abs_db"] < 0.05, rows[name]
        assert rows["dali-cpu"]["ratio_to_librosa"] > 0
    else:
        assert any("no parity reference" in n for n in rep["notes"])
    import torch
    if not torch.cuda.is_available():
        assert "no CUDA device" in rows["torchaudio-cuda"]["skipped"]
    assert os.path.getsize(glob.glob(os.path.join(str(tmp_path), "features-*.png"))[0]) > 1000


def test_train_throughput(bench_data, tmp_path):
    src, cache = bench_data
    run("bench.train_throughput", "--src", src, "--clips", str(CLIPS), "--model", "tiny", "--batch", "4",
        "--crops", "2", "--methods", "dali,synthetic", "--device", "cpu", "--warmup", "1", "--steps", "2",
        "--repeats", "1", "--wait-idle", "0", "--retries", "0", "--method-timeout", "90",
        "--cache", cache, "--out", str(tmp_path), timeout=240)
    rep = only_json(str(tmp_path), "train-*.json")
    assert rep["complete"] and rep["runs_wanted"] == ["dali", "synthetic"]  # librosa's skip: test_features
    assert rep["settings"]["label_smoothing"] == 0.1 and rep["data"]["tracks"] == CLIPS
    rows = rep["methods"]
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert r["shape"] == [4, 1, 128, 130] and r["samples_per_s"]["median"] > 0
        assert 0 <= r["data_wait"]["median"] < 1 and len(r["windows"]) == 1
        (w,) = r["windows"]  # one window timed as a whole, waited for once, at its end
        assert w["steps"] == 2 and len(w["wait_s"]) == 2 and w["syncs"] == 1 and w["clock"] == "perf_counter"
        assert 0 < sum(w["wait_s"]) < w["host_s"] and w["window_s"] <= w["host_s"]
        assert r["samples_per_s"]["median"] == pytest.approx(4 * 2 / w["window_s"])
        assert r["step_ms"]["median"] == pytest.approx(1000 * w["window_s"] / 2)
        assert all(math.isfinite(v) and v > 0 for v in r["last_losses"])  # train_step's weighted loss
    assert rows[0]["loader"]["crops"] == 2 and rows[0]["loader"]["tracks_per_batch"] == 2


def test_window_waits_for_the_device_once(monkeypatch):
    """bench.train_throughput's timed window queues its steps and waits once, after the last one;
    its warm-up waits after every step (the same clock, counted through WindowClock.sync)."""
    import itertools

    import torch

    from bench.clock import WindowClock
    from bench.train_throughput import setup_training, timed_window, warm_up
    from core.spec import FeatureSpec
    events = []
    real_sync = WindowClock.sync
    monkeypatch.setattr(WindowClock, "sync", lambda self: (events.append("sync"), real_sync(self))[1])
    spec = FeatureSpec()
    job = {"spec": spec.to_dict(), "device": "cpu", "torch_threads": 1, "model": "tiny", "n_classes": 4, "amp": True}
    tr = setup_training(job)
    real_step = tr.step
    tr.step = lambda *b: (events.append("step"), real_step(*b))[1]
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 1, spec.n_mels, spec.clip_frames, generator=g), torch.tensor([0, 1, 2, 3]), torch.ones(4))
    it = itertools.repeat(batch)
    warm_up(it, 2, tr)
    assert events == ["step", "sync"] * 2
    events.clear()
    w, loss = timed_window(it, 5, tr)
    assert events == ["step"] * 5 + ["sync"] and w["syncs"] == 1 and w["steps"] == 5 and len(w["wait_s"]) == 5
    assert 0 < w["window_s"] <= w["host_s"] and math.isfinite(loss)


def test_dali_tuning(bench_data, tmp_path):
    src, cache = bench_data
    p = run("bench.dali_tuning", "--src", src, "--clips", str(CLIPS), "--epochs", "1", "--vary", "crops",
            "--modes", "train,eval", "--wait-idle", "0", "--cache", cache, "--out", str(tmp_path))
    rows = only_json(str(tmp_path), "dali-tuning-*.json")["rows"]
    assert [(r["mode"], r["crops"]) for r in rows] == [("train", 1), ("train", 4), ("eval", 1)]
    for r in rows:
        # every track once per epoch: FILL repeats carry weight 0, 4 crops count as one track
        assert r["tracks"] == CLIPS and r["tracks_per_s"]["median"] > 0 and r["peak_rss_mb"] > 100, r
    assert p.stdout.count("| train |") == 2 and p.stdout.count("| eval |") == 1


def test_dali_parity(bench_data, tmp_path):
    src, cache = bench_data
    wav = sorted(glob.glob(os.path.join(src, "*", "*.wav")))[0]
    out = str(tmp_path / "parity.json")
    run("bench.dali_parity", wav, "--cache", cache, "--json", out)
    with open(out, encoding="utf-8") as f:
        r = json.load(f)
    assert r["samples"] == 3 * 22050 and r["frames"] == 1 + r["samples"] // 512
    floor = r["fft_floor_db"]  # DALI's power spectrum vs float64 torch.stft: -65 dB at worst, measured
    assert floor["dali"]["max"] < -40 and floor["dali"]["median"] < -80 and floor["torch_float32"]["max"] < -40
    if HAVE_LIBROSA:
        a = r["rows"][0]
        assert a["stages"].startswith("A") and a["max_abs_db"] < 0.01, a
    else:
        assert "librosa not installed" in r["rows_skipped"]


def test_hard_set(tmp_path):
    """Two smoke configs, one joined as an ensemble (its member not in --configs is trained too)."""
    args = ["--configs", "tiny", "--ensembles", "tiny+tiny-b4", "--per-class", "3", "--seconds", "4", "--epochs", "1",
            "--nproc", "1", "--run-timeout", "150", "--cache", str(tmp_path / "cache")]
    p = run("bench.hard_set", *args, "--out", str(tmp_path / "a"), timeout=300)
    rep = only_json(str(tmp_path / "a"), "hard-*.json")
    assert rep["split"] == "10/10/10" and rep["epochs"] == 1  # stratified 70/15/15 of 3 tracks per genre
    r, r4 = rep["rows"]
    assert (r["config"], r4["config"]) == ("tiny", "tiny-b4") and r["best_epoch"] == 1 and r["wall_s"] > 0
    assert all(0 <= r[k] <= 1 for k in ("best_val", "test_track", "test_window", "last_train_acc"))
    assert "| tiny | 0 | " in p.stdout
    (e,) = rep["ensembles"]
    assert e["config"] == "tiny+tiny-b4" and e["members_test"] == [r["test_track"], r4["test_track"]]
    assert 0 <= e["val_track"] <= 1 and 0 <= e["test_track"] <= 1 and "judging the joined best.pt" in p.stderr
    assert "| tiny+tiny-b4 | 0 | " in p.stdout
    q = run("bench.hard_set", *args, "--reuse-only", "--out", str(tmp_path / "b"), timeout=60)  # trains nothing
    again = only_json(str(tmp_path / "b"), "hard-*.json")
    assert again["rows"] == rep["rows"] and again["ensembles"] == rep["ensembles"]
    assert "judging" not in q.stderr  # the ensemble's verdicts are cached with its members' best.pt
    bad = subprocess.run([sys.executable, "-m", "bench.hard_set", "--ensembles", "tiny", "--reuse-only"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--ensembles tiny: each needs two or more different configs joined by '+'" in bad.stderr


def test_gpu_smoke(tmp_path):
    out = str(tmp_path / "res" / "smoke.json")
    run("tools.gpu_smoke", "--allow-cpu", "--parts", "versions,torch,dali-gpu,loader", "--tmp", str(tmp_path / "tmp"),
        "--out", out, timeout=120)
    with open(out, encoding="utf-8") as f:
        rep = json.load(f)
    assert rep["failed"] == [] and list(rep["parts"]) == ["versions", "torch", "dali-gpu", "loader"]
    assert all(v["state"] == "ok" for v in rep["parts"].values()), rep["parts"]
    t = rep["parts"]["torch"]  # one train_step of the baseline model; LogMel on the device vs the CPU
    assert math.isfinite(t["loss"]) and t["loss"] > 0 and t["logmel_max_abs_db_vs_cpu"] < 0.05
    assert rep["parts"]["loader"]["x"] == [16, 1, 128, 130]
    res = tmp_path / "res"  # one result file of each kind the GPU check writes: measured and unmeasured rows
    (res / "features-a.json").write_text(json.dumps({"data": {"clips": 10, "total_seconds": 300}, "complete": False,
        "methods": [{"method": "dali-gpu", "clips_per_s": {"median": 123.4}, "ratio_to_librosa": 5.5, "max_abs_db": 0.01,
                     "peak_gpu_mb": 300}, {"method": "librosa", "skipped": "no librosa"}]}))
    (res / "train-a.json").write_text(json.dumps({"settings": {"model": "baseline", "batch": 64, "precision": "bf16",
        "device": "cuda"}, "methods": [{"method": "dali", "label": "dali", "samples_per_s": {"median": 1000},
        "data_wait": {"median": 0.01}, "step_ms": {"median": 12.3}}, {"method": "x", "error": "boom"}]}))
    (res / "scaling-a.json").write_text(json.dumps({"settings": {"model": "baseline", "device": "cuda", "ranks": [1, 2]},
        "points": [{"method": "r1", "label": "1 rank", "samples_per_s": {"median": 900}, "speedup": 1.0,
                    "data_wait": {"median": 0.02}, "memory": "gpu", "peak_mem_mb": [100, 200]},
                   {"method": "r2", "skipped": "one gpu"}]}))
    p = run("tools.gpu_smoke", "--summary", str(res), timeout=60)
    assert "**smoke.json**" in p.stdout and "- loader: ok" in p.stdout
    for line in ("**features** (10 clips of 30 s, INCOMPLETE): clips/s median", "- dali-gpu: 123.4 clips/s, x5.50, "
                 "0.0100 dB, 300 MB GPU", "- librosa: skipped: no librosa", "**training** baseline, batch 64 rows, bf16, cuda:",
                 "- dali: 1000 samples/s, data wait 1.0 %, step 12.3 ms", "- x: FAILED: boom",
                 "**scaling** baseline, cuda, ranks [1, 2]:", "- 1 rank: 900 samples/s, speed-up 1.00, data wait 2.0 %, "
                 "peak gpu 200 MB per rank", "- r2: skipped: one gpu"):
        assert line in p.stdout, (line, p.stdout)


def test_gpu_wheels_round_trip(tmp_path, monkeypatch):
    """pack -> check -> unpack of a made-up wheel, cut into pieces; a damaged piece is named."""
    import tools.gpu_wheels as gw
    monkeypatch.setattr(gw, "KEEP", {"fakepkg": "the test's wheel"})
    monkeypatch.setattr(gw, "PIECE_MAX", 4096)
    payload = random.Random(0).randbytes(10_000)  # incompressible: pieces of at most 4 KiB
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "fakepkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fakepkg/__init__.py", "X = 1\n")
        z.writestr("fakepkg/blob.bin", payload)
        z.writestr("fakepkg/_ext.cpython-39-x86_64-linux-gnu.so", b"other python")  # dropped: not 3.12
        z.writestr("nvidia/fake/__init__.py", "")
        z.writestr("nvidia/__init__.py", "")  # replaced by the pack's own extend_path
        z.writestr("fakepkg-1.0.dist-info/METADATA", "Name: fakepkg\nVersion: 1.0\nRequires-Dist: numpy\n")
    whl, site = str(tmp_path / "whl"), str(tmp_path / "site")
    assert gw.main(["pack", str(wheels), "--whl", whl, "--xz-level", "1", "--python-xz"]) == 0
    pieces = sorted(glob.glob(os.path.join(whl, "p*", "site.tar.xz.*")))
    assert len(pieces) >= 2
    assert gw.main(["check", "--whl", whl]) == 0
    assert gw.main(["unpack", "--whl", whl, "--site", site]) == 0
    with open(os.path.join(site, "fakepkg", "blob.bin"), "rb") as f:
        assert f.read() == payload
    with open(os.path.join(site, "nvidia", "__init__.py"), "rb") as f:
        assert f.read() == gw.NVIDIA_INIT
    assert not os.path.exists(os.path.join(site, "fakepkg", "_ext.cpython-39-x86_64-linux-gnu.so"))
    assert os.path.exists(os.path.join(site, "fakepkg-1.0.dist-info", "METADATA"))
    with open(pieces[1], "r+b") as f:
        f.write(b"\0")
    assert gw.main(["check", "--whl", whl, "--need", "1"]) == 0 and gw.main(["check", "--whl", whl]) == 3
    if shutil.which("xz"):  # the xz command's pack: one block, x86 BCJ before LZMA2, as `xz -l` reads it
        whl2 = str(tmp_path / "whl2")
        assert gw.main(["pack", str(wheels), "--whl", whl2, "--xz-level", "1"]) == 0
        joined = tmp_path / "joined.xz"
        joined.write_bytes(b"".join(open(p, "rb").read() for p in sorted(glob.glob(os.path.join(whl2, "p*", "site.*")))))
        blocks = [ln.split("\t") for ln in subprocess.run(["xz", "--robot", "-lvv", str(joined)], capture_output=True,
                                                          text=True, check=True).stdout.splitlines()
                  if ln.startswith("block")]
        assert len(blocks) == 1 and blocks[0][-1].startswith("--x86 --lzma2="), blocks
        assert gw.main(["unpack", "--whl", whl2, "--site", str(tmp_path / "site2")]) == 0
        assert (tmp_path / "site2" / "fakepkg" / "blob.bin").read_bytes() == payload


def test_object_store(bench_data, tmp_path):
    """Local shards, a warm and a cold cache from a real SeaweedFS bucket, a cold one over HTTP, and the
    whole-split download: every cold epoch fetches the split once, a warm one nothing."""
    src, cache = bench_data
    methods = ["local", "http-cold", "s3-warm", "stage"]  # s3-cold: http-cold's path with s3-warm's store
    p = run("bench.object_store", "--src", src, "--clips", str(CLIPS), "--model", "tiny", "--batch", "4",
            "--methods", ",".join(methods), "--device", "cpu", "--repeats", "1", "--epochs-per-window", "1",
            "--stage-repeats", "1", "--wait-idle", "0", "--retries", "0", "--method-timeout", "90",
            "--cache", cache, "--out", str(tmp_path), timeout=150)
    rep = only_json(str(tmp_path), "object-store-*.json")
    assert rep["complete"] and rep["data"]["tracks"] == CLIPS and rep["settings"]["epoch_steps"] == 2
    rows = {r["method"]: r for r in rep["methods"]}
    assert list(rows) == methods
    for name in methods[:-1]:
        r = rows[name]
        assert "error" not in r and "skipped" not in r, r
        assert r["samples_per_s"]["median"] > 0 and 0 <= r["data_wait"]["median"] < 1 and r["first_batch_s"] > 0
        assert len(r["windows"]) == 1 and r["windows"][0]["steps"] == 2 and r["windows"][0]["syncs"] == 1, r["windows"]
        assert all(math.isfinite(v) and v > 0 for v in r["last_losses"])
        assert 0 <= r["server_cpu_cores"] < os.cpu_count() and r["vs_local"] > 0
    split = rep["data"]["split_bytes"]
    for name in ("http-cold",):  # an empty cache every window: the whole split, all misses
        assert rows[name]["traffic"][0]["bytes_fetched"] == split and rows[name]["hit_rate"] == 0
        assert rows[name]["fetched_vs_split"] == 1 and len(rows[name]["windows_first_batch_s"]) == 1
    warm = rows["s3-warm"]  # filled first: no byte fetched after, every lookup a hit
    assert warm["prefill_traffic"]["bytes_fetched"] == split and warm["fetched_vs_split"] == 0
    assert warm["hit_rate"] == 1 and warm["server_paused_after_s"] > 0  # paused (SIGSTOP) for the windows
    assert rows["local"]["fetched_vs_split"] == 0 and rows["local"]["hit_rate"] is None
    stage = rows["stage"]["stage"]
    assert set(stage) == {"4", "1"} and all(v["bytes"] == [split] for v in stage.values())
    assert "| local shards |" in p.stdout and "staging, total" in p.stdout
    assert os.path.getsize(glob.glob(os.path.join(str(tmp_path), "object-store-*.png"))[0]) > 1000


def test_leak_threshold(tmp_path):
    """The threshold measurement: planted OGG/FLAC copies with gains, all found as candidates and
    above the threshold; the clean collection's candidates below it."""
    from preprocess.synth import generate
    generate(str(tmp_path / "src"), per_class=5, seconds=4.0, seed=2, genres=TRAIN_GENRES, progress=False)
    p = run("bench.leak_threshold", str(tmp_path / "src"), "--copies", "4", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "r.json"), timeout=300)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["tracks"] == 20 and r["copies"] == len(r["pairs"]) == 4
    assert {x["format"] for x in r["pairs"]} == {"OGG", "FLAC"} and all(abs(x["gain_db"]) <= 6 for x in r["pairs"])
    assert r["planted_found_as_candidates"] == 4 and r["planted_correlation"]["min"] >= r["threshold"]
    assert r["clean_nearest_candidate_correlation"]["max"] < r["threshold"]
    assert "planted copies" in p.stdout

def test_scaling(bench_data, tmp_path):
    """1 and 2 ranks (DDP through torch's launcher) at two batch sizes: every rank's timings, and the
    table's figures recomputed from them."""
    src, cache = bench_data
    p = run("bench.scaling", "--src", src, "--clips", str(CLIPS), "--model", "tiny", "--batches", "2,4", "--crops", "2",
            "--ranks", "1,2", "--device", "cpu", "--warmup", "1", "--steps", "2", "--repeats", "2", "--wait-idle", "0",
            "--retries", "0", "--method-timeout", "120", "--cache", cache, "--out", str(tmp_path), timeout=300)
    rep = only_json(str(tmp_path), "scaling-*.json")
    assert rep["complete"] and rep["data"]["tracks"] == CLIPS and rep["settings"]["ranks"] == [1, 2]
    points = {(r["batch"], r["ranks"]): r for r in rep["points"]}
    assert list(points) == [(2, 1), (2, 2), (4, 1), (4, 2)]
    for (batch, n), r in points.items():
        assert "error" not in r and "skipped" not in r, r
        ranks = r["per_rank"]
        assert [k["rank"] for k in ranks] == list(range(n)) and all(k["shape"] == [batch, 1, 128, 130] for k in ranks)
        assert all(math.isfinite(v) and v > 0 for k in ranks for v in k["last_losses"])
        assert all(len(k["windows"]) == 2 and k["windows"][0]["steps"] == 2 and k["windows"][1]["syncs"] == 1
                   for k in ranks)
        per_window = [n * batch * 2 / max(k["windows"][w]["window_s"] for k in ranks) for w in range(2)]
        assert r["samples_per_s"]["median"] == pytest.approx(sum(per_window) / 2)
        assert r["samples_per_s"]["min"] == pytest.approx(min(per_window))
        assert r["samples_per_s_per_rank"] == pytest.approx(r["samples_per_s"]["median"] / n)
        assert r["speedup"] == pytest.approx(r["samples_per_s"]["median"] / points[batch, 1]["samples_per_s"]["median"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / n)
        assert 0 <= r["data_wait"]["median"] < 1
        assert r["memory"] == "RSS" and len(r["peak_mem_mb"]) == n and all(m > 100 for m in r["peak_mem_mb"])
    assert points[2, 1]["speedup"] == 1.0 and points[4, 1]["efficiency"] == 1.0
    assert p.stdout.count("| 2 | 2 | ") == 1 and "peak memory per rank, MB" in p.stdout
    assert os.path.getsize(glob.glob(os.path.join(str(tmp_path), "scaling-*.png"))[0]) > 1000


def test_synth_by_genre_is_the_same_collection(tmp_path):
    """bench.data generates the clips one process per genre: a genre made alone must be byte for byte
    what the whole collection holds for it (each clip's random stream depends on genre and index only)."""
    from preprocess.synth import generate
    whole = generate(str(tmp_path / "all"), per_class=2, seconds=1.0, genres=TRAIN_GENRES, progress=False)
    alone = generate(str(tmp_path / "one"), per_class=2, seconds=1.0, genres=TRAIN_GENRES[-1:], progress=False)
    theirs = [p for p in whole if os.sep + TRAIN_GENRES[-1] + os.sep in p]
    assert len(alone) == len(theirs) == 2
    for a, b in zip(alone, theirs):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()
