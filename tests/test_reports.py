"""The dataset report (preprocess/explore.py) and the run report (train.py's report.html) on real
data: the leak check on planted copies, one-line errors, and both pages in a real browser."""
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from browser import Chromium
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


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "file"])
def test_explore_refuses_what_is_not_a_shard_set_in_one_line(tmp_path, case):
    target = tmp_path / "x"
    if case == "empty":
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
