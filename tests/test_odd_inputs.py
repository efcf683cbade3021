"""Everyday odd inputs: file names that are not UTF-8, names that look like math or formulas or
carry terminal escapes, and temp files in folders other users can write to."""
import csv
import json
import os
import stat
import subprocess
import sys

import numpy as np
import soundfile as sf
from helpers import ROOT

from core import checkpoint
from core.atomic import atomic_write
from core.spec import FeatureSpec
from core.text import csv_cell, csv_value, printable
from model import build_model
from predict_collection import Paths, plot_genres, read_output, write_output
from preprocess.make_shards import make_shards, verify

LATIN1 = os.fsdecode(b"caf\xe9.wav")   # a Latin-1 name, as an older collection holds it
MATH = "odd $\\x$ name.wav"           # matplotlib would parse it as (broken) math


def noise(path: str, seconds: float, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal(int(22050 * seconds)).astype(np.float32) * 0.1
    sf.write(os.fsencode(path), x, 22050, subtype="PCM_16")


def test_a_name_that_is_not_utf8_is_sharded_verified_and_predicted(tmp_path):
    """make_shards keeps the file (its source read back byte for byte), --verify passes, and predict.py
    shows it readably, also in a --timeline plot next to a name that looks like math."""
    src = tmp_path / "src"
    for c, seed in (("jazz", 1), ("rock", 2)):
        os.makedirs(src / c)
        for i in range(3):
            noise(str(src / c / f"{c}{i}.wav"), 2.0, seed * 10 + i)
    odd = os.path.join(str(src / "jazz"), LATIN1)
    noise(odd, 2.0, 99)
    m = make_shards(str(src), str(tmp_path / "shards"), val=0, test=0, workers=1, min_shards=1, progress=False)
    sources = {s["source"] for s in m["samples"]}
    assert os.path.join("jazz", LATIN1) in sources and len(sources) == 7 and not m["rejects"]
    raw = (tmp_path / "shards" / "manifest.json").read_bytes()
    raw.decode("utf-8")  # valid UTF-8: the odd byte is written as its \udce9 escape
    assert b"\\udce9" in raw and json.loads(raw)["samples"] == m["samples"]
    assert verify(str(tmp_path / "shards")) == []

    ckpt = str(tmp_path / "tiny.pt")
    checkpoint.save(ckpt, {"model_name": "tiny", "model": build_model("tiny", 2).state_dict(), "classes": ["jazz", "rock"],
                           "feature_spec": FeatureSpec().to_dict()})
    math = str(tmp_path / MATH)
    noise(math, 4.0, 7)
    plots = tmp_path / "plots"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--checkpoint", ckpt, odd, math,
                        "--timeline", "--plot-dir", str(plots)], capture_output=True, cwd=ROOT, timeout=120)
    err = p.stderr.decode("utf-8")
    assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    out = p.stdout.decode("utf-8")  # strict: nothing undecodable reached the terminal
    assert f"{printable(odd)}: " in out and "caf\\xe9.wav" in out and f"{math}: " in out
    assert {n for n in os.listdir(plots)} == {LATIN1 + ".timeline.png", MATH + ".timeline.png"}


def test_csv_cells_that_look_like_formulas_are_text_and_read_back(tmp_path):
    formula = '=HYPERLINK("http://x.example","click").wav'
    records = [{"uid": i, "source": s, "seconds": 3.0, "windows": 1, "genre": "jazz", "warnings": w,
                "probabilities": {"jazz": 0.75, "rock": 0.25}}
               for i, (s, w) in enumerate([(formula, ["-2 dB clipped"]), ("'quoted.wav", []), (LATIN1, [])])]
    paths = Paths.of(str(tmp_path / "out.csv"))
    write_output(paths, "csv", records, ["jazz", "rock"], labeled=False, timeline=False)
    with open(paths.out, encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][1] == "'" + formula and rows[1][6] == "'-2 dB clipped" and rows[2][1] == "''quoted.wav"
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    back = read_output(paths, "csv", ["jazz", "rock"])
    assert [r["source"] for r in back] == [formula, "'quoted.wav", LATIN1]
    assert back[0]["warnings"] == ["-2 dB clipped"]
    assert csv_value(csv_cell("@SUM(A1)")) == "@SUM(A1)" and csv_cell(3.5) == 3.5


def test_names_reach_the_terminal_without_escape_codes_and_charts_without_math(tmp_path):
    assert printable("a\x1b[31mred\x1b[0m\x07.wav") == "a\\x1b[31mred\\x1b[0m\\x07.wav"
    assert printable(LATIN1) == "caf\\xe9.wav" and printable("ok é.wav") == "ok é.wav"
    png = str(tmp_path / "genres.png")
    plot_genres({"genres": {"$\\x$": 2, "a_b^c": 1}, "tracks": 3, "seconds": 9.0}, ["$\\x$", "a_b^c"], png)
    assert os.path.getsize(png) > 1000


def test_atomic_writes_never_follow_a_planted_symlink(tmp_path):
    """Another user of a shared folder plants symlinks at the temp names an older version used: the
    targets stay untouched, the file is written with the usual permissions."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "shared" / "manifest.json"
    out.parent.mkdir()
    for pid in (os.getpid(), os.getpid() + 1):
        os.symlink(victim, f"{out}.tmp{pid}")
    atomic_write(str(out), b"{}")
    assert victim.read_bytes() == b"precious" and out.read_bytes() == b"{}"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(out.parent)) == sorted(["manifest.json", f"manifest.json.tmp{os.getpid()}",
                                                     f"manifest.json.tmp{os.getpid() + 1}"])

