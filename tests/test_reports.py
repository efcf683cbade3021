"""The dataset report (preprocess/explore.py) and the run report (train.py's report.html) on real
data: the leak check on planted copies, one-line errors, and both pages in a real browser."""
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from browser import Chromium
from servers import http_server  # noqa: F401 - fixture
from core.spec import FeatureSpec
from helpers import TRAIN_GENRES, built_once, run_main
from preprocess import explore
from preprocess.make_shards import make_shards
from preprocess.synth import generate

ODD_CLASSES = {"classical": "<script>alert(1)", "metal": "$x$", "reggae": "plain & simple"}


@pytest.fixture(scope="session")
def odd_report(tmp_path_factory):
    """A small collection whose class and file names look like markup and math, sharded and explored."""
    with built_once(tmp_path_factory, "odd-report") as (base, done):
        src, shards, out = base / "src", base / "shards", base / "report"
        if not done:
            generate(str(base / "gen"), per_class=5, seconds=3.0, seed=3, genres=list(ODD_CLASSES), progress=False)
            for genre, name in ODD_CLASSES.items():
                shutil.copytree(base / "gen" / genre, src / name)
            first = sorted((src / "$x$").iterdir())[0]
            first.rename(first.with_name("<b>odd $y$.wav"))
            make_shards(str(src), str(shards), val=0.2, test=0.2, seed=0, workers=1, min_shards=1, progress=False)
            p = run_main(explore.main, [str(shards), "--out", str(out), "--threads", "1"])
            assert p.returncode == 0, p.stderr
            (base / "done.json").write_text(json.dumps({"stdout": p.stdout}))
        return out, json.loads((base / "done.json").read_text())["stdout"]


def test_explore_writes_the_report_and_prints_the_baseline(odd_report):
    out, stdout = odd_report
    data = json.loads((out / "report.json").read_text())
    assert data["tracks"] == 15 and sorted(data["classes"]) == sorted(ODD_CLASSES.values())
    assert sum(sum(c.values()) for c in data["counts"].values()) == 15
    assert len(data["pca"]["tracks"]) == 15 and 0 < sum(data["pca"]["explained_variance_ratio"]) <= 1 + 1e-9
    assert set(data["baseline"]["accuracy"]) == {"train", "val", "test"}
    for c in data["classes"]:
        wav = out / data["examples"][c]["wav"]
        audio, sr = sf.read(wav)
        assert sr == 22050 and len(audio) == 3 * 22050  # the track as the shards hold it
    for png in ("counts.png", "durations.png", "class_means.png", "pca.png", "leaks.png"):
        assert (out / png).stat().st_size > 1000
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("linear baseline") and f"test {data['baseline']['accuracy']['test']:.3f}" in last


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "file", "unlabeled"])
def test_explore_refuses_what_is_not_a_shard_set_in_one_line(tmp_path, case):
    target = tmp_path / "x"
    if case == "unlabeled":  # a collection to predict: no classes to explore
        generate(str(tmp_path / "src"), per_class=1, seconds=2.0, seed=0, genres=["jazz", "pop"], progress=False)
        make_shards(str(tmp_path / "src"), str(target), workers=1, unlabeled=True, progress=False)
    elif case == "empty":
        target.mkdir()
    elif case == "garbage":
        target.mkdir()
        (target / "manifest.json").write_text("{not json")
    elif case == "file":
        target.write_text("hello")
    p = run_main(explore.main, [str(target), "--out", str(tmp_path / "out")])
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("explore: error: ") and str(target) in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "out").exists()


def _open(page, tmp_path, name):
    with Chromium() as browser:
        r = browser.open_page(page)
    shot = tmp_path / f"{name}.png"
    shot.write_bytes(r.screenshot)  # the test's artefact: what the page looked like
    assert r.screenshot.startswith(b"\x89PNG") and len(r.screenshot) > 20_000
    assert r.errors == [], r.errors
    assert r.scripts == 0  # nothing from the data became a script
    assert r.images and all(i["complete"] and i["naturalWidth"] > 0 for i in r.images), r.images
    return r


def test_dataset_report_in_a_browser(odd_report, tmp_path):
    out, _ = odd_report
    r = _open(out / "index.html", tmp_path, "dataset-report")
    assert len(r.images) >= 5 + 3  # the figures and one log-mel per class
    assert len(r.audio) == 3 and all(a["error"] is None for a in r.audio)
    for a in r.audio:
        assert (out / a["src"]).is_file()  # a file beside the page
    for name in ODD_CLASSES.values():
        assert name in r.text  # shown as text, not run or dropped
    data = json.loads((out / "report.json").read_text())
    for example in data["examples"].values():
        assert example["source"] in r.text  # e.g. "$x$/<b>odd $y$.wav" when it is its class's example


def test_run_report_in_a_browser(trained_run, tmp_path):
    run_dir, p = trained_run
    page = os.path.join(run_dir, "report.html")
    assert "report.html" in p.stdout
    r = _open(page, tmp_path, "run-report")
    srcs = {i["src"] for i in r.images}
    assert {"curves.png", "confusion.png", "pca_test.png"} <= srcs
    text = r.text
    for genre in TRAIN_GENRES:
        assert genre in text
    assert "penultimate-layer embedding" in text
    assert "most wrong" in text
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert f"{m['test']['track_acc']:.3f}" in text
    assert "nvidia-dali" in text and "FeatureSpec" in text and "samples/s" in text


# ------------------------------------------------------------------------------------------ leak check

@pytest.fixture(scope="session")
def planted(train_shards, tmp_path_factory):
    """The training collection again, with two training tracks copied under other names into other
    splits: one re-encoded to OGG Vorbis at -5 dB, one to FLAC at +4 dB. Returns (manifest, stats,
    {(original uid, copy uid)}) and the clean folder's stats."""
    from analysis.logmel_stats import collect
    from storage.folder import read_manifest

    shards, src, m = train_shards
    with built_once(tmp_path_factory, "planted") as (base, done):
        out = base / "shards"
        train = sorted(s["source"] for s in m["samples"] if s["split"] == "train")
        copies = [(train[0], "OGG", -5.0, "test"), (train[7], "FLAC", 4.0, "val")]
        if not done:
            rows = [f"{os.path.join(src, s['source'])},{s['label']},{s['split']}" for s in m["samples"]]
            for k, (source, fmt, gain, split) in enumerate(copies):
                audio, sr = sf.read(os.path.join(src, source), dtype="float32")
                path = base / f"renamed-{k}.{fmt.lower()}"
                sf.write(str(path), np.clip(audio * 10 ** (gain / 20), -1, 1), sr, format=fmt)
                rows.append(f"{path},{source.split('/')[0]},{split}")
            (base / "list.csv").write_text("\n".join(rows) + "\n")
            make_shards(None, str(out), list_file=str(base / "list.csv"), split="list", workers=1, min_shards=1,
                        progress=False)
            (base / "done.json").write_text("{}")
    mp = read_manifest(str(out))
    uid = {s.source: s.uid for s in mp.samples}
    want = {(uid[os.path.join(src, source)], uid[str(base / f"renamed-{k}.{fmt.lower()}")])
            for k, (source, fmt, _, _) in enumerate(copies)}
    stats, _ = collect(str(out), mp, num_threads=1)
    clean, _ = collect(shards, read_manifest(shards), num_threads=1)
    return mp, stats, want, clean


def test_leak_check_finds_re_encoded_copies_in_other_splits_and_nothing_else(planted):
    from analysis.leaks import THRESHOLD, near_copies

    _, stats, want, clean = planted
    near = near_copies(stats, FeatureSpec())
    assert {(a, b) for a, b, *_ in near.pairs} == want, near.pairs
    assert all(r >= THRESHOLD for _, _, r, _ in near.pairs)
    # the clean collection: no pair, and its closest cross-split candidates stay clear of the threshold
    clean_near = near_copies(clean, FeatureSpec())
    assert clean_near.pairs == [] and clean_near.nearest.max() < THRESHOLD


def test_leak_check_lists_exact_copies_the_manifest_knows(train_shards):
    """Two samples in different splits with one PCM sha256 (a folder not built by make_shards,
    which keeps one copy of identical audio) are listed; the real folder has none."""
    from analysis.leaks import exact_copies
    from core.shards import Manifest

    _, _, m = train_shards
    assert exact_copies(Manifest(m)) == []
    doc = json.loads(json.dumps(m))
    a = next(s for s in doc["samples"] if s["split"] == "train")
    b = next(s for s in doc["samples"] if s["split"] == "test")
    b["pcm_sha256"] = a["pcm_sha256"]
    assert exact_copies(Manifest(doc)) == [{"pcm_sha256": a["pcm_sha256"], "uids": [a["uid"], b["uid"]],
                                            "splits": ["train", "test"]}]


def test_explore_reads_a_remote_folder_through_the_node_cache(odd_report, http_server, tmp_path):
    """The same folder served over HTTP: the same numbers as the local run (the folder's name aside),
    its shards fetched into the given cache."""
    out, _ = odd_report
    local = json.loads((out / "report.json").read_text())
    shutil.copytree(str(out.parent / "shards"), os.path.join(http_server.folder, "odd"), dirs_exist_ok=True)
    p = run_main(explore.main, [f"{http_server.url}/odd", "--out", str(tmp_path / "r"), "--threads", "1",
                                "--cache-dir", str(tmp_path / "cache")])
    assert p.returncode == 0, p.stderr
    remote = json.loads((tmp_path / "r" / "report.json").read_text())
    for key in ("counts", "pca", "baseline", "leaks", "class_mean_spectrum_db", "examples"):
        assert remote[key] == local[key], key
    assert any(name.endswith(".tar") for _, _, files in os.walk(tmp_path / "cache") for name in files)
    assert (tmp_path / "r" / "example-00.wav").read_bytes() == (out / "example-00.wav").read_bytes()
