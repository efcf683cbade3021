"""make_shards --list (CSV/TSV of path,label[,split]) and --split gtzan-filtered."""
import json
import os
import subprocess
import sys

import pytest

from audio_files import sine, write
from helpers import ROOT
from preprocess.make_shards import main, make_shards
from preprocess.synth import generate

RATE = 22_050
SCRIPT = os.path.join(ROOT, "preprocess", "make_shards.py")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    base = tmp_path_factory.mktemp("list")
    generate(str(base / "audio"), per_class=4, seconds=1.5, genres=["blues", "rock"], progress=False)
    return base


def _split_of(m: dict) -> dict[str, str]:
    return {s["source"]: s["split"] for s in m["samples"]}


def test_cli_list_csv_with_split_column(clips, tmp_path):
    """`make_shards.py --list FILE OUT`: paths relative to the list's folder or absolute, labels from the list."""
    rows = []
    for g in ("blues", "rock"):
        for i, split in enumerate(("train", "train", "VAL", "test")):
            path = f"audio/{g}/{g}.{i:05d}.wav"
            if (g, i) == ("rock", 3):
                path = str(clips / path)  # absolute
            rows.append(f'"{path}",{g.title()} Music,{split}')
    lst = clips / "list.csv"
    lst.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, SCRIPT, "--list", str(lst), str(out), "--workers", "1", "--min-shards", "1"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)  # cwd elsewhere: paths follow the list
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("accepted 8 (4 train / 2 val / 2 test), rejected 0")
    text = (out / "manifest.json").read_text()
    m = json.loads(text)
    assert m["classes"] == ["Blues Music", "Rock Music"]
    assert m["options"]["split"] == "list" and len(m["options"]["list_sha256"]) == 64
    splits = _split_of(m)
    assert splits["audio/blues/blues.00002.wav"] == "val" and splits[str(clips / "audio/rock/rock.00003.wav")] == "test"
    assert str(out) not in text  # nothing about where OUT lives


def test_list_tsv_header_any_order_and_random_split(clips, tmp_path):
    """A header names the columns (any order, extras ignored); no split column -> stratified random split.
    SRC, when given, is the base of relative paths."""
    lines = ["genre\tduration\tfile"]
    for g in ("blues", "rock"):
        lines += [f"{g}\t1.5\t{g}/{g}.{i:05d}.wav" for i in range(4)]
    lst = tmp_path / "l.tsv"
    lst.write_text("# made by hand\n" + "\n".join(lines) + "\n")
    m = make_shards(str(clips / "audio"), str(tmp_path / "out"), list_file=str(lst), val=0.25, test=0.25,
                    workers=1, min_shards=1, progress=False)
    assert m["options"]["split"] == "random" and not m["rejects"]
    assert m["splits"]["test"]["per_class"] == {"blues": 1, "rock": 1}
    # an explicit --split random ignores a split column, so nothing is rejected as bad_split
    lst.write_text("file\tgenre\tsplit\n" + "\n".join(f"{g}/{g}.{i:05d}.wav\t{g}\tnonsense"
                                                        for g in ("blues", "rock") for i in range(4)))
    m2 = make_shards(str(clips / "audio"), str(tmp_path / "out2"), list_file=str(lst), split="random",
                     val=0.25, test=0.25, workers=1, min_shards=1, progress=False)
    assert _split_of(m2) == _split_of(m) and not m2["rejects"]


def test_list_rows_listed_twice(clips, tmp_path):
    lst = tmp_path / "l.csv"
    a, b, c = (str(clips / f"audio/blues/blues.0000{i}.wav") for i in range(3))
    lst.write_text(f"{a},blues\n{b},blues\n{c},blues\n{a},blues\n{b},rock\n")
    m = make_shards(None, str(tmp_path / "out"), list_file=str(lst), workers=1, min_shards=1, progress=False)
    assert sorted((r["path"], r["reason"]) for r in m["rejects"]) == [(a, "duplicate"), (b, "label_conflict"),
                                                                     (b, "label_conflict")]
    assert sorted(_split_of(m)) == [a, c]
    assert m["inputs"] == 5  # one per row


def _run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("content,expect", [
    ("a.wav,blues,train,extra\n", "l.csv:1: expected path,label[,split], got 4 field(s)"),
    ("x.wav,blues\n,rock\n", "l.csv:2: empty path"),
    ("path,split\na.wav,train\n", "l.csv:1: header needs path and label columns"),
    ("\n# nothing\n", "l.csv: list has no rows"),
    (b"\xff\xfe\x00bad", "l.csv: not UTF-8 text"),
])
def test_bad_list_is_one_line_exit_2(tmp_path, capsys, content, expect):
    lst = tmp_path / "l.csv"
    lst.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, err = _run_main(["--list", str(lst), str(tmp_path / "out"), "--workers", "1"], capsys)
    assert rc == 2 and expect in err and err.count("\n") == 1, err


def test_cli_usage_errors_are_one_line(tmp_path, capsys):
    lst = tmp_path / "l.csv"
    lst.write_text("a.wav,blues\n")
    missing, out = str(tmp_path / "none.csv"), str(tmp_path / "o")
    for argv, expect in ((["--list", missing, out], "none.csv: cannot read list"),
                         (["--list", str(lst), "--split", "list", out], "needs a list file with a split"),
                         (["--list", str(lst), "a", "b", "c"], "too many paths"),
                         ([], "give SRC [OUT]"),
                         (["--split", "bogus", "x"], "invalid choice")):
        rc, err = _run_main(argv, capsys)
        assert rc == 2 and expect in err and err.count("\n") == 1, (argv, err)
    p = subprocess.run([sys.executable, SCRIPT, "--list", missing, out],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "none.csv" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_gtzan_filtered_split(tmp_path):
    """Files get torchaudio's fault-filtered split by stem; others are not_in_split; the corrupt
    jazz.00054 (named by the train list) is rejected by decoding and the run goes on."""
    from torchaudio.datasets import gtzan
    table = {**{t: "train" for t in gtzan.filtered_train}, **{t: "val" for t in gtzan.filtered_valid},
             **{t: "test" for t in gtzan.filtered_test}}
    assert table["jazz.00054"] == "train"
    src = tmp_path / "GTZAN"
    genres = src / "genres_original"
    names = ["blues.00000", "blues.00012", "blues.00029", "jazz.00000", "jazz.00001"]
    dropped = next(f"pop.{i:05d}" for i in range(100) if f"pop.{i:05d}" not in table)  # filtered out
    for k, name in enumerate(names + [dropped]):
        os.makedirs(genres / name.split(".")[0], exist_ok=True)
        write(genres / name.split(".")[0] / f"{name}.wav", sine(300 + 50 * k, 1.5, RATE), RATE)
    (genres / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + os.urandom(64))
    m = make_shards(str(src), str(tmp_path / "out"), split="gtzan-filtered", workers=1, min_shards=1,
                    progress=False)
    assert m["options"]["split"] == "gtzan-filtered"
    assert {os.path.basename(s)[:-4]: sp for s, sp in _split_of(m).items()} == {n: table[n] for n in names}
    rejects = {os.path.basename(r["path"]): r["reason"] for r in m["rejects"]}
    assert rejects == {f"{dropped}.wav": "not_in_split", "jazz.00054.wav": "not_audio"}


def test_out_inside_src_is_not_read_back(tmp_path):
    src = tmp_path / "src"
    generate(str(src), per_class=2, seconds=1.5, genres=["pop"], progress=False)
    for _ in range(2):
        m = make_shards(str(src), str(src / "shards"), val=0, test=0, workers=1, min_shards=1, progress=False)
    assert not m["rejects"] and m["inputs"] == 2 and m["classes"] == ["pop"]


def test_files_from_outside_the_source_are_flagged_and_refused_with_strict(clips, tmp_path):
    """A list's `../` and absolute paths outside its folder, and a symlinked class folder pointing
    elsewhere: kept and listed in the manifest's outside_source (and the summary), rejected with
    --strict (reason outside_source); files inside are never flagged."""
    own = tmp_path / "own"
    os.makedirs(own / "mine")
    for g in ("blues", "rock"):  # the class folders: one real copy inside, one symlink to outside
        os.symlink(clips / "audio" / g, own / g)
    inside = own / "mine" / "blues.00000.wav"
    inside.write_bytes((clips / "audio" / "blues" / "blues.00000.wav").read_bytes())
    lst = own / "list.csv"
    rows = [f"mine/{inside.name},blues", f"../../{os.path.relpath(clips, tmp_path.parent)}/audio/rock/rock.00001.wav,rock",
            f"{clips}/audio/blues/blues.00002.wav,blues", f"{clips}/audio/rock/rock.00003.wav,rock"]
    lst.write_text("\n".join(rows) + "\n")
    p = subprocess.run([sys.executable, SCRIPT, "--list", str(lst), str(tmp_path / "out"), "--val", "0", "--test", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(m["outside_source"]) == sorted(os.path.normpath(r.split(",")[0]) for r in rows[1:])
    assert "3 from outside the source folder" in p.stdout
    p = subprocess.run([sys.executable, SCRIPT, "--list", str(lst), str(tmp_path / "strict"), "--strict"],
                       capture_output=True, text=True, timeout=120)
    m = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert p.returncode == 0 and "outside_source" not in m
    assert [s["source"] for s in m["samples"]] == [f"mine/{inside.name}"]
    assert sorted(r["path"] for r in m["rejects"] if r["reason"] == "outside_source") == sorted(m_ for m_ in (
        os.path.normpath(r.split(",")[0]) for r in rows[1:]))
    # class folders that are symlinks to elsewhere, walked from SRC
    m = make_shards(str(own), str(tmp_path / "walked"), val=0, test=0, workers=1, min_shards=1, progress=False)
    assert len(m["outside_source"]) == 8 and all(s.startswith(("blues/", "rock/")) for s in m["outside_source"])
    from preprocess.make_shards import UsageError
    with pytest.raises(UsageError, match="no usable audio found"):  # every file is outside: all rejected
        os.remove(inside)
        make_shards(str(own), str(tmp_path / "walked-strict"), val=0, test=0, workers=1, min_shards=1,
                    progress=False, strict=True)
