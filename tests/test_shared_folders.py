"""State folders on shared machines (core/folders.py): the node cache, make_shards' decode records,
the collection mode's OUT.parts and OUT.shards are made private (0700), and an existing one that
another user owns or can write to is refused in one line before anything in it is read."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from helpers import ROOT

from core import checkpoint
from core.folders import UnsafeFolder, check_folder, state_folder
from core.spec import FeatureSpec
from model import build_model
from storage.cache import NodeCache
from storage.store import StorageError, Store

OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user owns needs root")


def foreign(path) -> str:
    os.makedirs(path)
    os.chown(path, OTHER_UID, -1)
    return str(path)


def test_state_folders_are_private_and_foreign_or_open_ones_refused(tmp_path):
    made = state_folder(str(tmp_path / "a" / "state"), "state")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    assert state_folder(made, "state") == made  # ours: used again
    os.chmod(made, 0o777)
    with pytest.raises(UnsafeFolder, match="writable by all users"):
        state_folder(made, "state")
    os.chmod(made, 0o770)  # group write, with this user's own group: a user-private group (umask 002)
    check_folder(made, "state")
    os.chown(made, -1, os.getegid() + 4242)
    with pytest.raises(UnsafeFolder, match="writable by its group"):
        check_folder(made, "state")
    link = tmp_path / "link"
    os.symlink(tmp_path / "a", link)
    with pytest.raises(UnsafeFolder, match="symbolic link"):
        check_folder(str(link), "state")
    open_parent = tmp_path / "open"
    os.makedirs(open_parent / "state", 0o700)
    os.chmod(open_parent, 0o777)
    with pytest.raises(UnsafeFolder, match="other users can write to without the sticky bit"):
        check_folder(str(open_parent / "state"), "state")
    os.chmod(open_parent, 0o1777)  # like /tmp
    check_folder(str(open_parent / "state"), "state")


@as_root
def test_a_folder_another_user_owns_is_refused(tmp_path):
    with pytest.raises(UnsafeFolder, match=f"belongs to user id {OTHER_UID}, not to you"):
        state_folder(foreign(tmp_path / "theirs"), "node cache folder")


@as_root
def test_the_node_cache_refuses_a_folder_planted_under_its_derivable_name(tmp_path):
    store = Store("http://127.0.0.1:9/shards")
    cache = NodeCache(store, str(tmp_path / "mine"), {})
    assert stat.S_IMODE(os.stat(cache.dir).st_mode) == 0o700
    planted = foreign(os.path.join(str(tmp_path / "shared"), os.path.basename(cache.dir)))
    with pytest.raises(StorageError) as e:
        NodeCache(store, str(tmp_path / "shared"), {})
    assert str(e.value).startswith(f"{planted}: the node cache folder belongs to user id {OTHER_UID}")


def _audio_folder(root) -> str:
    for ci, c in enumerate(("a", "b")):
        os.makedirs(root / c)
        for i in range(3):
            x = 0.1 * np.random.default_rng([ci, i]).standard_normal(22050 * 2)
            sf.write(str(root / c / f"{i}.wav"), x, 22050, subtype="PCM_16")
    return str(root)


@as_root
def test_make_shards_refuses_decode_records_another_user_planted(tmp_path):
    src = _audio_folder(tmp_path / "src")
    out = tmp_path / "out"
    work = foreign(out / ".work")
    planted = os.path.join(work, "poison.json")
    with open(planted, "w") as f:
        json.dump({"ok": True, "cache": "x"}, f)
    p = subprocess.run([sys.executable, "preprocess/make_shards.py", src, str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"make_shards: error: {work}: the decode-record folder belongs to user id "
                                             f"{OTHER_UID}, not to you: refusing to trust what it holds (remove it, "
                                             f"or choose another folder)"]
    assert sorted(os.listdir(out)) == [".work"] and os.listdir(work) == ["poison.json"]


def test_the_collection_mode_refuses_an_open_parts_folder_and_makes_its_own_private(tmp_path):
    """A pre-made OUT.parts that others can write to (a planted symlink in it points at a file of
    ours) is refused before anything in it is opened; the target is untouched."""
    src = _audio_folder(tmp_path / "src")
    ckpt = str(tmp_path / "tiny.pt")
    checkpoint.save(ckpt, {"model_name": "tiny", "model": build_model("tiny", 2).state_dict(), "classes": ["a", "b"],
                           "feature_spec": FeatureSpec().to_dict()})
    out = str(tmp_path / "res" / "pred.jsonl")
    os.makedirs(out + ".parts")
    os.chmod(out + ".parts", 0o777)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    os.symlink(target, out + ".parts/rank-00000.jsonl")
    cmd = [sys.executable, "predict.py", "--checkpoint", ckpt, src, "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "the part-file folder is writable by all users" in p.stderr.strip().splitlines()[-1]
    assert target.read_text() == "keep me\n" and not os.path.exists(out + ".shards")
    os.remove(out + ".parts/rank-00000.jsonl")
    os.rmdir(out + ".parts")
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(open(out).read().splitlines()) == 6
