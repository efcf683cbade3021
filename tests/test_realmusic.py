"""The real-music set's rules (bench/realmusic_set.py) and build (bench/realmusic.py) on generated
files: no package is downloaded here (that part is bench/realmusic_debian.py, run by hand)."""
import csv
import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest

from audio_files import sine, write
from bench.realmusic import build, parse_args
from bench.realmusic_set import audible_span, excerpt_offsets, group_key, split_groups
from preprocess.make_shards import make_shards

# small settings so generated files stay short: recordings >= 4 s, excerpts of 1.5 s, 3 at most
OPTS = ["--min-seconds", "4", "--excerpt-seconds", "1.5", "--max-excerpts", "3", "--min-recordings", "8",
        "--val", "0.2", "--test", "0.2", "--min-per-split", "1"]


def test_group_key_keeps_variants_and_stems_together():
    same = [("sound/cdtracks/sixtyfour_.ogg", "sound/cdtracks/sixtyfour_revisited.ogg"),
            ("music/Theme.ogg", "other/theme (Remix).mp3"),
            ("a/boss-v2.ogg", "a/boss_extended.ogg"),
            ("songs/War of freedom/guitar.ogg", "songs/War of freedom/song.ogg")]
    for x, y in same:
        assert group_key(x) == group_key(y), (x, y)
    apart = [("music002.ogg", "music003.ogg"), ("track1.ogg", "track10.ogg"), ("Intro1.ogg", "Intro2.ogg"),
             ("songs/Feelings/song.ogg", "songs/Metal madness/song.ogg"), ("hr3-caves.ogg", "hr3-hell.ogg")]
    for x, y in apart:
        assert group_key(x) != group_key(y), (x, y)
    assert group_key("Hv2.ogg", {"hv2": "humanitarian"}) == group_key("Humanitarian.ogg")


def test_excerpt_offsets_fit_without_overlap_and_evenly():
    L = 30 * 22_050
    for frames in (40 * 22_050, 3 * L, 3 * L + 7, 5 * L - 1, 200 * 22_050 + 13, 1_674 * 22_050):
        offs = excerpt_offsets(frames, L, 6)
        assert len(offs) == min(6, frames // L)
        ends = [o + L for o in offs]
        assert offs[0] >= 0 and ends[-1] <= frames
        assert all(e <= o for e, o in zip(ends, offs[1:]))  # no overlap
        gaps = [offs[0]] + [o - e for e, o in zip(ends, offs[1:])] + [frames - ends[-1]]
        assert max(gaps) - min(gaps) <= 1, gaps  # equal gaps before, between, after
    assert excerpt_offsets(40 * 22_050, L, 6) == [5 * 22_050]  # one window, centred
    assert excerpt_offsets(3 * L, L, 6) == [0, L, 2 * L]
    assert excerpt_offsets(L - 1, L, 6) == []


def test_splits_never_straddle_and_do_not_depend_on_order():
    groups = [f"g{i:02d}" for i in range(17)] * 2  # each group twice: two variants
    for seed in range(5):
        a = split_groups(groups, "cls", 0.2, 0.2, seed, min_per_split=2)
        b = split_groups(list(reversed(groups)), "cls", 0.2, 0.2, seed, min_per_split=2)
        assert a == b
        assert sorted(a) == sorted(set(groups))  # every group exactly once: one split each
        n = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
        assert n == {"train": 11, "val": 3, "test": 3}
    assert split_groups(groups, "cls", 0.2, 0.2, 0) != split_groups(groups, "cls", 0.2, 0.2, 1)
    assert sum(v == "test" for v in split_groups(groups[:10], "c", 0.2, 0.2, 0, 2).values()) == 2  # the minimum
    with pytest.raises(ValueError, match="4 groups"):
        split_groups(groups[:4], "c", 0.2, 0.2, 0, min_per_split=2)


def _tree(root, label: str, n: int, rate: int, seed: int):
    """A class folder like an extracted package: n recordings (some with a variant or a stem
    sibling), a short sound, a symlink and a byte-identical copy of one recording, a module."""
    rng = np.random.default_rng(seed)
    base = root / label / "usr" / "share" / label
    (base / "music").mkdir(parents=True)
    for i in range(n):
        seconds = 4 + i % 4 + 0.37
        x = 0.3 * sine(110 * (i + 1), seconds, rate) + 0.05 * rng.standard_normal(int(seconds * rate))
        write(base / "music" / f"piece{i:02d}.ogg", x, rate, subtype="VORBIS", fmt="OGG")
        if i % 3 == 0:
            write(base / "music" / f"piece{i:02d}_remix.wav", x[::-1].copy(), rate)
    (base / "songs" / "Big song").mkdir(parents=True)
    for stem in ("song", "guitar"):
        write(base / "songs" / "Big song" / f"{stem}.flac", 0.2 * rng.standard_normal(5 * rate), rate, fmt="FLAC")
    write(base / "click.wav", sine(1000, 0.5, rate), rate)  # a sound effect: too short
    z = np.zeros
    # digital silence around the music: excerpts only where it plays, none where too little does
    write(base / "music" / "padded.wav", np.concatenate([z(rate), 0.3 * sine(330, 5, rate), z(3 * rate)]), rate)
    write(base / "music" / "mostly_silent.wav", np.concatenate([0.3 * sine(330, 1.0, rate), z(5 * rate)]), rate)
    shutil.copy(base / "music" / "piece01.ogg", base / "music" / "copy_of_piece01.ogg")
    os.symlink("piece02.ogg", base / "music" / "link.ogg")
    (base / "tune.xm").write_bytes(b"Extended Module: not decodable here")
    return root / label


def _sources(tmp_path):
    src = tmp_path / "pkgs"
    return {"alpha": ("1.0-1", str(_tree(src, "alpha", 9, 44_100, 0))),
            "beta": ("2:3.4", str(_tree(src, "beta", 7, 16_000, 1)))}


def _hashes(folder) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".state"]
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("realmusic")
    sources = _sources(tmp)
    sources["gamma"] = ("0.1", str(_tree(tmp / "pkgs", "gamma", 3, 22_050, 2)))  # 6 groups: dropped
    out = tmp / "set"
    summary = build(str(out), sources, parse_args([str(out), *OPTS]))
    return tmp, sources, out, summary


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_build_groups_recordings_and_splits_by_group(built):
    _, _, out, summary = built
    assert summary["classes"] == ["alpha", "beta"]
    assert [(d["package"], d["groups"]) for d in summary["dropped"]] == [("gamma", 6)]
    assert summary["skipped_files"]["alpha"] == {"module": 1, "same_bytes": 1, "short": 1}
    prov = _rows(out / "provenance.csv")
    lst = _rows(out / "list.csv")
    assert [(r["path"], r["label"], r["split"]) for r in lst] == [(r["path"], r["label"], r["split"]) for r in prov]
    assert len(prov) == summary["excerpts"] > 0
    files = {r["file"] for r in prov}
    # a copy with the same bytes and a symlink count once (the first name in sorted order is kept);
    # short sounds and the module not at all
    for label in ("alpha", "beta"):
        assert f"usr/share/{label}/music/copy_of_piece01.ogg" in files
        assert f"usr/share/{label}/music/piece02.ogg" in files
    assert not any(f.endswith(("/piece01.ogg", "link.ogg", "click.wav", "tune.xm", "mostly_silent.wav"))
                   for f in files)
    assert "usr/share/alpha/music/padded.wav" in files
    # 6 s long, 1 s audible: left out after decoding, not counted as a group
    assert [(x["package"], x["reason"]) for x in summary["left_out"]] == [
        ("alpha", "audible for 1.0 s of 6.0 s"), ("beta", "audible for 1.0 s of 6.0 s")]
    split_of_group, split_of_file = {}, {}
    for r in prov:
        assert split_of_group.setdefault((r["label"], r["group"]), r["split"]) == r["split"]  # a group: one split
        assert split_of_file.setdefault(r["file"], r["split"]) == r["split"]
    g = {(r["label"], r["file"].rsplit("/", 1)[-1]): r["group"] for r in prov}
    assert g[("alpha", "piece00.ogg")] == g[("alpha", "piece00_remix.wav")] == "piece00"
    assert g[("beta", "song.flac")] == g[("beta", "guitar.flac")]
    for label in ("alpha", "beta"):
        assert set(summary["counts"][label]) == {"train", "val", "test"}
    assert summary["versions"] == {"alpha": "1.0-1", "beta": "2:3.4", "gamma": "0.1"}


def test_excerpts_are_cut_where_the_provenance_says(built):
    """Each WAV is 22,050 Hz mono PCM16 of exactly the excerpt length, at the recorded offset of the
    decoded recording, as many per recording as fit (3 at most)."""
    import soundfile as sf

    from features.audio import decode, to_pcm16
    _, sources, out, _ = built
    prov = _rows(out / "provenance.csv")
    per_file: dict[tuple[str, str], list[dict]] = {}
    for r in prov:
        per_file.setdefault((r["label"], r["file"]), []).append(r)
    L = int(1.5 * 22_050)
    for (label, rel), rows in per_file.items():
        d = decode(os.path.join(sources[label][1], rel), 22_050)
        start, end = audible_span(d.samples)
        assert [int(r["offset_samples"]) - start for r in rows] == excerpt_offsets(end - start, L, 3)
        if rel.endswith("padded.wav"):  # 1 s of silence, 5 s of tone, 3 s of silence: 3 excerpts in the tone
            assert start == pytest.approx(22_050, abs=100) and end == pytest.approx(6 * 22_050, abs=100)
            assert len(rows) == 3 and all(22_000 < int(r["offset_samples"]) < 6 * 22_050 - L for r in rows)
        for r in rows[:1]:
            info = sf.info(str(out / r["path"]))
            assert (info.samplerate, info.channels, info.subtype, info.frames) == (22_050, 1, "PCM_16", L)
            got, _ = sf.read(str(out / r["path"]), dtype="int16")
            o = int(r["offset_samples"])
            assert np.array_equal(got, to_pcm16(d.samples[o:o + L]))
            assert r["wav_sha256"] == hashlib.sha256((out / r["path"]).read_bytes()).hexdigest()


def test_rebuild_is_byte_identical_and_idempotent(built):
    tmp, sources, out, _ = built
    again = tmp / "again"
    build(str(again), sources, parse_args([str(again), *OPTS]))
    assert _hashes(again) == _hashes(out)  # a fresh build: the same bytes
    wav = next((again / "audio" / "alpha").iterdir())
    before = {p: p.stat().st_mtime_ns for p in (again / "audio").rglob("*.wav")}
    stale = again / "audio" / "alpha" / "old_excerpt.wav"
    shutil.copy(wav, stale)
    old_state = again / ".state" / "0123.json"  # an earlier build's record
    old_state.write_text("{}")
    build(str(again), sources, parse_args([str(again), *OPTS]))  # a rerun: nothing decoded or rewritten
    assert not stale.exists() and not old_state.exists()
    assert len(list((again / ".state").iterdir())) == 16 + 14  # one per decoded file of alpha and beta
    assert {p: p.stat().st_mtime_ns for p in (again / "audio").rglob("*.wav")} == before
    assert _hashes(again) == _hashes(out)
    wav.write_bytes(b"damaged")  # a damaged excerpt is noticed and written again
    build(str(again), sources, parse_args([str(again), *OPTS]))
    assert _hashes(again) == _hashes(out)


def test_list_shards_with_its_own_splits(built, tmp_path):
    _, _, out, summary = built
    m = make_shards(None, str(tmp_path / "shards"), list_file=str(out / "list.csv"), split="list", workers=1,
                    min_shards=1, progress=False)
    assert m["classes"] == ["alpha", "beta"] and not m["rejects"]
    want = {s: sum(c[s]["excerpts"] for c in summary["counts"].values()) for s in ("train", "val", "test")}
    assert {s: m["splits"][s]["count"] for s in want} == want
    split_of = {r["path"]: r["split"] for r in _rows(out / "list.csv")}
    assert all(split_of[smp["source"]] == smp["split"] for smp in m["samples"])


def test_a_class_with_too_few_recordings_is_dropped(tmp_path):
    """beta keeps 3 pieces and its song folder: 4 groups, under --min-recordings 8."""
    sources = _sources(tmp_path)
    for p in (tmp_path / "pkgs" / "beta" / "usr" / "share" / "beta" / "music").iterdir():
        if not p.name.startswith(("piece00", "piece01", "piece02")):
            p.unlink()
    with pytest.raises(ValueError, match="1 class"):
        build(str(tmp_path / "x"), sources, parse_args([str(tmp_path / "x"), *OPTS]))


def test_a_class_short_of_audible_recordings_is_dropped_after_decoding(tmp_path, capsys):
    """beta has 10 groups by the file headers but 9 once its mostly silent file is decoded."""
    sources = _sources(tmp_path)
    opts = [*OPTS, "--min-recordings", "10"]
    with pytest.raises(ValueError, match="1 class"):
        build(str(tmp_path / "x"), sources, parse_args([str(tmp_path / "x"), *opts]))
    err = capsys.readouterr().err
    assert "beta 2:3.4: 14 recordings >= 4 s in 10 groups" in err
    assert "drop beta: 9 groups audible for >= 4 s, needs 10" in err and "drop alpha" not in err


def test_cli_a_missing_package_is_one_error_line(tmp_path):
    """Asks apt about a package no archive has (local lists only, nothing is downloaded); on a
    machine without apt the same line names the missing tool."""
    from bench.realmusic import main
    from helpers import run_main
    p = run_main(main, [str(tmp_path / "set"), "--packages", "no-such-package-parallel-tunes"])
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("realmusic: error: no-such-package-parallel-tunes: ")
    assert ("not known to apt" in lines[-1]) or ("not found" in lines[-1])
    assert not (tmp_path / "set" / "list.csv").exists()
    p = run_main(main, [str(tmp_path / "set"), "--min-seconds", "20"])  # shorter than an excerpt
    assert p.returncode == 2 and "--min-seconds must be at least --excerpt-seconds" in p.stderr


def test_recipe_bench_reads_default_and_ema_from_one_run(built, tmp_path):
    """bench.realmusic_recipes --train on the generated set: one --ema --compare-raw run gives both
    recipes' rows (the default's from its raw weights); test excerpts evaluated again agree with
    metrics.json (the script checks), and recordings are counted by provenance group."""
    import subprocess
    import sys
    from bench.realmusic_recipes import RAW_TWIN, paired_difference, recording_accuracy, steadiness, train_command
    from training.report import val_curve
    from helpers import ROOT
    _, _, out, _ = built
    set_dir = tmp_path / "set"
    shutil.copytree(out, set_dir)
    make_shards(None, str(set_dir / "shards"), list_file=str(set_dir / "list.csv"), split="list", workers=1,
                min_shards=1, progress=False)
    # the runs are one-run ensembles of two tiny models, so the members' figures are read too
    extra = "--model tiny+tiny --epochs 2 --clip-seconds 1 --batch-size 4 --crops-per-track 1 --no-tensorboard --threads 1"
    p = subprocess.run([sys.executable, "-m", "bench.realmusic_recipes", "--set", str(set_dir), "--train", "--seeds", "0",
                        "--extra", extra, "--out", str(tmp_path / "res")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (set_dir / "runs" / "default-s0").exists()  # no run of its own
    doc = json.load(open(next((tmp_path / "res").glob("realmusic-recipes-*.json"))))
    runs = {r["recipe"]: r for r in doc["runs"]}
    assert runs["default"]["run"] == runs["ema999"]["run"] == "ema999-s0" and runs["default"]["raw_columns"]
    m = json.load(open(set_dir / "runs" / "ema999-s0" / "metrics.json"))
    assert runs["ema999"]["test_track"] == m["test"]["track_acc"] and runs["default"]["test_track"] == m["test_raw"]["track_acc"]
    assert runs["default"]["mean_change"] == pytest.approx(steadiness([e["val_track_acc_raw"] for e in m["history"]])["mean_change"])
    # the raw pass judges an ensemble's members too, on test and every validation
    assert [r["model"] for r in m["test_raw_members"]] == ["tiny", "tiny"]
    assert all(0 <= r["track_acc"] <= 1 for r in m["test_raw_members"])
    assert all(len(e["val_track_acc_raw_members"]) == 2 for e in m["history"])
    raw_line = "members alone " + ", ".join(f"tiny {r['track_acc']:.3f}" for r in m["test_raw_members"])
    assert raw_line in (set_dir / "runs" / "ema999-s0.log").read_text()  # train.py's closing summary
    groups = {(r["package"], r["group"]) for r in _rows(set_dir / "provenance.csv") if r["split"] == "test"}
    assert runs["ema999"]["recordings"] == len(groups) and 0 <= runs["ema999"]["test_recording"] <= 1
    assert [s["recipe"] for s in doc["summary"]] == ["default", "ema999"] and doc["summary"][0]["gflops"] > 0
    vs = doc["summary"][1]["vs_default"]  # the EMA against its own raw weights, on the same excerpts
    assert vs["seeds"] == [0] and vs["recordings"] == len(groups) and vs["lo"] <= vs["diff"] <= vs["hi"]
    assert vs["diff"] == pytest.approx(runs["ema999"]["test_track"] - runs["default"]["test_track"])
    assert "| default |" in p.stdout and "| ema999 |" in p.stdout
    assert "warning" not in p.stderr  # fp32: evaluating test again gives the run's own accuracy
    png = next((tmp_path / "res").glob("realmusic-recipes-*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(runs["default"]["val_curve"]) == len(m["history"])

    # a recording is judged by its excerpts' mean probabilities, not by a vote
    rec = {"a1": ("p", "a"), "a2": ("p", "a"), "a3": ("p", "a"), "b1": ("p", "b")}
    rows = [{"source": "a1", "label": 0, "probs": [0.45, 0.55]}, {"source": "a2", "label": 0, "probs": [0.4, 0.6]},
            {"source": "a3", "label": 0, "probs": [0.99, 0.01]}, {"source": "b1", "label": 1, "probs": [0.3, 0.7]}]
    assert recording_accuracy(rows, rec) == (1.0, 2)
    rows[2]["probs"] = [0.6, 0.4]
    assert recording_accuracy(rows, rec) == (0.5, 2)
    # paired difference: recording a (3 excerpts, all right) loses one, b (1 excerpt, wrong) gains it
    base = [{"source": s, "label": 0 if s[0] == "a" else 1, "probs": [0.9, 0.1]} for s in ("a1", "a2", "a3", "b1")]
    better = [dict(r, probs=[0.1, 0.9]) if r["source"] in ("a1", "b1") else r for r in base]
    same = paired_difference({0: base}, {0: base}, rec)
    assert (same["diff"], same["lo"], same["hi"]) == (0, 0, 0)
    d = paired_difference({0: better, 1: better}, {0: base, 1: base, 2: base}, rec)
    assert d["seeds"] == [0, 1] and d["recordings"] == 2
    assert d["diff"] == pytest.approx(0)  # -1 + 1 of 4 excerpts, on each seed both ran
    # a resample of only a gives -1/3, of only b +1; each is a quarter of the draws
    assert d["lo"] == pytest.approx(-1 / 3) and d["hi"] == pytest.approx(1.0)
    # a run stopped part-way (its last.pt there) continues; a finished one is never run again (run_dir_of)
    cmd = train_command("mixup", 1, str(set_dir / "runs" / "ema999-s0"), "S", ["--nproc", "2"])
    assert cmd[cmd.index("--seed"):] == ["--seed", "1", "--model", "baseline", "--mixup", "0.2", "--ema", "0",
                                          "--nproc", "2", "--resume"]  # no average unless the recipe names one
    assert "--resume" not in train_command("mixup", 1, str(tmp_path / "new"), "S", [])
    assert RAW_TWIN == {"default": "ema999", "specaug-gain": "ema999-specaug-gain", "mixup": "ema999-mixup",
                        "speed": "ema999-speed", "eq": "ema999-eq", "resnet": "resnet-ema999",
                        "bandnorm": "bandnorm-ema999", "pair": "pair-ema999", "base-bandnorm": "base-bandnorm-ema999"}
    assert steadiness([0.5, 0.7, 0.6, 0.6, 0.6, 0.6, 0.9]) == pytest.approx(
        {"mean_change": 0.6 / 6, "max_change_after_5": 0.3})
    # a --val-every run: changes between the validated epochs, the largest from epoch 5 on
    assert steadiness([0.5, 0.7, 0.6, 0.9], [2, 4, 6, 7]) == pytest.approx({"mean_change": 0.6 / 3, "max_change_after_5": 0.3})
    assert val_curve([{"epoch": 1}, {"epoch": 2, "v": 0.5}, {"epoch": 3, "v": 0.7}], "v") == ([2, 3], [0.5, 0.7])


def test_folds_are_balanced_per_class_and_deterministic():
    from bench.realmusic_folds import assign_folds
    sizes = {("a", "g1"): 5, ("a", "g2"): 3, ("a", "g3"): 3, ("a", "g4"): 2, ("b", "h1"): 1, ("b", "h2"): 1}
    fold = assign_folds(sizes, 2)
    assert fold == assign_folds(dict(reversed(sizes.items())), 2)  # input order does not matter
    per = {(c, f): sum(n for g, n in sizes.items() if g[0] == c and fold[g] == f) for c in "ab" for f in (0, 1)}
    assert per == {("a", 0): 7, ("a", 1): 6, ("b", 0): 1, ("b", 1): 1}  # 5+2 / 3+3, greedy by size
    assert sorted(assign_folds(sizes, 3).values()).count(2) >= 1


def test_fold_bench_holds_out_every_train_and_val_recording_once(built, tmp_path):
    """bench.realmusic_folds --train on the generated set, 2 folds: one --ema --compare-raw run per fold
    gives default and ema999 (each run a one-run ensemble of two tiny models, whose members are reported); every train/val excerpt is predicted once by the model of the fold that
    held its recording out, test excerpts never; the last epoch's pooled accuracy agrees with the runs'
    own validation (fp32)."""
    import subprocess
    import sys
    from bench.realmusic_folds import fold_lists
    from helpers import ROOT
    _, _, out, _ = built
    set_dir = tmp_path / "set"
    shutil.copytree(out, set_dir)
    # the runs are one-run ensembles of two tiny models, so the members' figures are read too
    extra = "--model tiny+tiny --epochs 2 --clip-seconds 1 --batch-size 4 --crops-per-track 1 --no-tensorboard --threads 1"
    p = subprocess.run([sys.executable, "-m", "bench.realmusic_folds", "--set", str(set_dir), "--folds", "2", "--train",
                        "--extra", extra, "--ensembles", "default+ema999", "--out", str(tmp_path / "res")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    prov = {r["path"]: r for r in _rows(set_dir / "provenance.csv")}
    lists = [_rows(set_dir / "folds-2" / f"fold-{i}" / "list.csv") for i in range(2)]
    held = [{r["path"] for r in rows if r["split"] == "val"} for rows in lists]
    dev = {p_ for p_, r in prov.items() if r["split"] in ("train", "val")}
    assert held[0] | held[1] == dev and not held[0] & held[1] and all(held)
    assert all({r["path"] for r in rows} == dev for rows in lists)  # test excerpts in no fold
    group = {p_: (r["package"], r["group"]) for p_, r in prov.items()}
    assert not {group[x] for x in held[0]} & {group[x] for x in held[1]}  # recordings never straddle folds
    before = [open(x, "rb").read() for x in fold_lists(str(set_dir), 2)]  # a rerun writes the same lists
    assert before == [(set_dir / "folds-2" / f"fold-{i}" / "list.csv").read_bytes() for i in range(2)]

    doc = json.load(open(next((tmp_path / "res").glob("realmusic-folds2-*.json"))))
    runs = {r["recipe"]: r for r in doc["runs"]}
    assert runs["default"]["runs"] == runs["ema999"]["runs"] == ["ema999-f0-s0", "ema999-f1-s0"]
    assert runs["default"]["raw_columns"] and not runs["ema999"]["raw_columns"]
    assert not (set_dir / "runs" / "folds-2" / "default-f0-s0").exists()
    log = (set_dir / "runs" / "folds-2" / "ema999-f0-s0.log").read_text()  # no test split: the raw epoch still said
    assert "raw weights (no EMA): best val acc" in log and "test acc" not in log
    page = (set_dir / "runs" / "folds-2" / "ema999-f0-s0" / "report.html").read_text()
    assert "Raw weights (without the EMA average): best validation accuracy" in page
    for recipe, key in (("default", "val_track_acc_raw"), ("ema999", "val_track_acc")):
        r = runs[recipe]
        assert r["excerpts"] == len(dev) and r["recordings"] == len({group[x] for x in dev})
        last = [json.load(open(set_dir / "runs" / "folds-2" / f"ema999-f{i}-s0" / "metrics.json"))["history"][-1][key]
                for i in range(2)]
        assert r["per_fold_last"] == pytest.approx(last)
        assert r["last_excerpts"] == pytest.approx((last[0] * len(held[0]) + last[1] * len(held[1])) / len(dev))
        assert r["curve"][-1] == pytest.approx(r["last_excerpts"]) and len(r["curve"]) == 2
    for recipe, key in (("ema999", "val_track_acc_members"), ("default", "val_track_acc_raw_members")):
        alone = [json.load(open(set_dir / "runs" / "folds-2" / f"ema999-f{i}-s0" / "metrics.json"))["history"][-1][key]
                 for i in range(2)]  # the raw weights' members are judged in the raw pass
        assert runs[recipe]["members_last_excerpts"] == pytest.approx(
            [(a * len(held[0]) + b * len(held[1])) / len(dev) for a, b in zip(*alone)])
    assert "members alone (the run's validation)" in p.stderr
    assert all(2 * m["missed_by"] >= m["of"] == 2 for m in doc["missed_recordings"])
    # the ensemble: the raw and EMA weights' held-out probabilities combined excerpt by excerpt (the
    # normalised geometric mean, predict.py's rule)
    cache = set_dir / "runs" / "folds-2" / ".val-predictions"
    right = total = 0
    for i in range(2):
        raw, ema = (json.load(open(cache / f"ema999-f{i}-s0{sfx}-last.json"))["rows"] for sfx in ("_raw", ""))
        ema_of = {r["source"]: r["probs"] for r in ema}
        for r in raw:
            mean = [math.sqrt(a * b) for a, b in zip(r["probs"], ema_of[r["source"]])]
            right += mean.index(max(mean)) == r["label"]
            total += 1
    (ens,) = doc["ensembles"]
    assert ens["ensemble"] == "default+ema999" and total == len(dev)
    assert ens["last_excerpts"] == pytest.approx(right / total) and ens["vs_default"]["seeds"] == [0]
    vs = doc["summary"][1]["vs_default"]
    assert vs["diff"] == pytest.approx(runs["ema999"]["last_excerpts"] - runs["default"]["last_excerpts"])
    assert "warning" not in p.stderr and "| ema999 |" in p.stdout
    assert next((tmp_path / "res").glob("realmusic-folds2-*.png")).read_bytes()[:4] == b"\x89PNG"

    # --recorded: the results JSON keeps each run's held-out rows, so with no runs on disk (another runs
    # folder) the same table, paired differences and ensembles come back from the record alone
    from bench.realmusic_folds import main as folds_main
    recorded = next((tmp_path / "res").glob("realmusic-folds2-*.json"))
    assert all(len(r["held_out"]) == len(dev) for r in doc["runs"])
    assert folds_main(["--set", str(set_dir), "--folds", "2", "--runs", "elsewhere", "--recorded", str(recorded),
                       "--ensembles", "default+ema999", "--out", str(tmp_path / "again")]) == 0
    again = json.load(open(next((tmp_path / "again").glob("realmusic-folds2-*.json"))))
    assert [r["recorded"] for r in again["runs"]] == [str(recorded)] * 2
    assert again["summary"][1]["vs_default"] == doc["summary"][1]["vs_default"]
    for key in ("last_excerpts", "last_recordings"):
        assert [r[key] for r in again["summary"]] == [r[key] for r in doc["summary"]]
        assert again["ensembles"][0][key] == pytest.approx(doc["ensembles"][0][key])
    # a record from before the rows were kept: the table only, and the difference of means against the
    # default's seed spread instead of a paired one (one seed here: no spread)
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({**doc, "runs": [{k: v for k, v in r.items() if k != "held_out"} for r in doc["runs"]]}))
    assert folds_main(["--set", str(set_dir), "--folds", "2", "--runs", "elsewhere", "--recorded", str(legacy),
                       "--out", str(tmp_path / "legacy")]) == 0
    old = json.load(open(next((tmp_path / "legacy").glob("realmusic-folds2-*.json"))))
    assert "vs_default" not in old["summary"][1] and "held_out" not in old["runs"][0]
    assert old["summary"][1]["vs_default_unpaired"]["diff"] == pytest.approx(vs["diff"])
    assert old["summary"][1]["vs_default_unpaired"]["spreads"] is None
    with pytest.raises(SystemExit, match="not a realmusic_folds result for 3 folds"):
        folds_main(["--set", str(set_dir), "--folds", "3", "--recorded", str(recorded), "--out", str(tmp_path / "x")])

    # bench.eval_windows on the same runs: hop 1 is the product's judgement (the folds bench's score,
    # fp32 here so exactly); quarter-window hops add windows and judge the same excerpts
    from bench.eval_windows import main as eval_windows
    assert eval_windows(["--set", str(set_dir), "--folds", "2", "--hops", "1,0.25", "--out", str(tmp_path / "ew")]) == 0
    rows = json.load(open(next((tmp_path / "ew").glob("eval-windows-default-s0-folds2-*.json"))))["rows"]
    assert [r["hop"] for r in rows] == [1.0, 0.25] and all(r["excerpts"] == len(dev) for r in rows)
    assert rows[0]["excerpts_acc"] == pytest.approx(runs["default"]["last_excerpts"])
    assert rows[0]["per_fold"] == pytest.approx(runs["default"]["per_fold_last"])
    assert rows[0]["verdicts_changed"] == 0 and rows[0]["prob_change_max"] == 0
    assert rows[1]["windows_mean"] > rows[0]["windows_mean"]  # 1.5 s excerpts, 1 s windows: 2 back to back, 3 at 1/4
    p = subprocess.run([sys.executable, "-m", "bench.realmusic_folds", "--set", str(tmp_path / "nothing")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "nothing: no provenance.csv there" in p.stderr.strip().splitlines()[-1]
    assert "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "bench.realmusic_folds", "--set", str(set_dir), "--folds", "2",
                        "--ensembles", "default+resnet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--ensembles: each needs two or more of the --recipes being tabulated (resnet)" in p.stderr
    from bench.realmusic_folds import average_rows
    with pytest.raises(SystemExit, match="held out different excerpts"):
        average_rows([[{"source": "a", "label": 0, "probs": [1.0, 0.0]}], [{"source": "b", "label": 0, "probs": [1.0, 0.0]}]])


def test_missed_recordings_lists_what_most_runs_got_wrong():
    """A recording is listed when at least half of the runs called it wrong (judged by its excerpts'
    mean probabilities), with the class most of them called it."""
    from bench.realmusic_folds import missed_recordings
    rec = {"a1": ("p", "a"), "a2": ("p", "a"), "b1": ("q", "b"), "c1": ("q", "c")}

    def run(a_probs, b_right):
        return {"rows": [{"source": "a1", "label": 0, "probs": a_probs[0]}, {"source": "a2", "label": 0, "probs": a_probs[1]},
                         {"source": "b1", "label": 1, "probs": [0.1, 0.9] if b_right else [0.9, 0.1]},
                         {"source": "c1", "label": 1, "probs": [0.2, 0.8]}]}
    wrong_a = ([0.2, 0.8], [0.3, 0.7])
    right_a = ([0.2, 0.8], [0.9, 0.1])  # one excerpt wrong, but the mean is right: not missed
    runs = [run(wrong_a, False), run(wrong_a, True), run(right_a, False)]
    assert missed_recordings(runs, rec, ["p", "q"]) == [
        {"package": "p", "group": "a", "missed_by": 2, "of": 3, "called": "q"},
        {"package": "q", "group": "b", "missed_by": 2, "of": 3, "called": "p"}]
    assert missed_recordings(runs[1:], rec, ["p", "q"]) == [  # 1 of 2 is half: listed
        {"package": "p", "group": "a", "missed_by": 1, "of": 2, "called": "q"},
        {"package": "q", "group": "b", "missed_by": 1, "of": 2, "called": "p"}]
    assert missed_recordings([run(right_a, True)] * 2 + runs[:1], rec, ["p", "q"]) == []


def test_ensembles_combine_recipes_per_seed_or_given_seeds(capsys):
    """default+b combines the two recipes' probabilities at each seed both ran; default@0+default@1
    combines seeds of one recipe once, compared with the default at seed 0."""
    from bench.realmusic_folds import score_ensembles
    rec = {"x": ("p", "x"), "y": ("p", "y")}

    def run(recipe, seed, px, py):  # probabilities of class 0 for excerpts x and y (both labelled 0)
        return {"recipe": recipe, "seed": seed, "rows": [{"source": "x", "label": 0, "probs": [px, 1 - px]},
                                                         {"source": "y", "label": 0, "probs": [py, 1 - py]}]}
    per_seed = [run("default", 0, 0.9, 0.3), run("default", 1, 0.2, 0.2), run("b", 0, 0.4, 0.9)]
    got = score_ensembles([["default", "b"], ["default@0", "default@1"], ["default@0", "b@1"]], per_seed, rec)
    assert [g["ensemble"] for g in got] == ["default+b", "default@0+default@1"]  # b@1 never ran: not scored
    mixed, seeds = got
    # default+b at seed 0 (geometric means): x √(0.9·0.4) > √(0.1·0.6) and y √(0.3·0.9) > √(0.7·0.1) both
    # right; the default alone gets x only
    assert mixed["seeds"] == [0] and mixed["last_excerpts"] == 1.0 and mixed["vs_default"]["diff"] == 0.5
    # the default's seeds 0 and 1: x √(0.9·0.2) > √(0.1·0.8) right, y √(0.3·0.2) < √(0.7·0.8) wrong
    assert seeds["seeds"] == [0] and seeds["last_excerpts"] == 0.5 and seeds["vs_default"]["diff"] == 0
    assert "vs_reference" not in mixed
    # --versus: against the control (the two default seeds combined: x right, y wrong) default+b is +0.5
    mixed, seeds = score_ensembles([["default", "b"], ["default@0", "default@1"]], per_seed, rec,
                                   versus="default@0+default@1")
    assert mixed["vs_reference"]["reference"] == "default@0+default@1" and mixed["vs_reference"]["diff"] == 0.5
    assert "vs_reference" not in seeds
    from bench.realmusic_folds import main
    with pytest.raises(SystemExit) as e:
        main(["--set", "unused", "--recipes", "default,ema999", "--ensembles", "default+ema999",
              "--versus", "default+ema999"])
    assert e.value.code == 2 and "--versus default+ema999: give one of the --ensembles, with every member's seed" \
        in capsys.readouterr().err
    for spec, said in (("default@x+ema999@0", "(default@x)"), ("default@0+ema999", "(default@0+ema999)")):
        with pytest.raises(SystemExit) as e:
            main(["--set", "unused", "--recipes", "default,ema999", "--ensembles", spec])
        assert e.value.code == 2
        assert f"--ensembles: a seed is recipe@N, given for every member or none {said}" in capsys.readouterr().err


def test_hard_set_figures_come_from_the_recipes_configs(tmp_path):
    """A recipe's hard-set row is its bench.hard_set config's, raw columns for a plain recipe read
    from its --ema --compare-raw twin's runs, gathered over several JSONs."""
    from bench.realmusic_recipes import hard_figures
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    row = {"test_track": 0.6, "test_track_raw": 0.7, "best_val": 0.8, "best_val_raw": 0.9}
    a.write_text(json.dumps({"rows": [{"config": "baseline-c4-ema", **row},
                                      {"config": "baseline-c4-ema", "error": "killed"}]}))
    b.write_text(json.dumps({"rows": [{"config": "baseline-c4-ema-specaug-gain", **row, "test_track": 0.5},
                                      {"config": "baseline-c4-ema-specaug-gain", **row, "test_track": 0.55}]}))
    both = f"{a},{b}"
    d = hard_figures(both, "default")
    assert d["config"] == "baseline-c4-ema (raw weights)" and d["test"]["mean"] == 0.7 and d["test"]["n"] == 1
    e = hard_figures(both, "ema999-specaug-gain")
    assert e["test"]["mean"] == pytest.approx(0.525) and e["val"]["mean"] == 0.8 and e["test"]["n"] == 2
    assert hard_figures(str(a), "specaug-gain") is None and hard_figures(both, "mixup") is None
    assert hard_figures(None, "default") is None
