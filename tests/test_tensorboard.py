"""train.py's TensorBoard event files, read back with TensorBoard's own reader (EventAccumulator).

The end-to-end checks reuse runs other tests train: the session's 2-rank run here; a killed and
resumed run and a fallback to prev.pt in test_train_resume.py; remote shards (storage scalars) in
test_remote_training.py. The Board cases below write real event files without training.
"""
import glob
import json
import os
import subprocess
import sys

import torch

from helpers import ROOT, assert_board_matches, read_board
from training.distributed import DistEnv
from training.tensorboard import EVENTS, Board

CPU = torch.device("cpu")


def entry(epoch: int, loss: float, remote: bool = False) -> dict:
    """A history entry as train.py's end_epoch writes it."""
    h = {"epoch": epoch, "train_loss": loss, "train_acc": 0.5 + epoch / 100, "val_loss": loss + 0.25,
         "val_track_acc": 0.25 * epoch, "val_segment_acc": 0.2 * epoch, "lr": 1e-3 / epoch,
         "samples_per_s": 100.0 + epoch, "data_wait": 0.01 * epoch, "epoch_seconds": 3.0}
    if remote:
        ranks = [{"hits": 0, "misses": 4, "bytes_fetched": 2_000_000 * epoch, "fetch_seconds": 0.5, "evictions": 1,
                  "retries": 0, "hit_rate": 0.0, "fetch_mb_s": 0.6},
                 {"hits": 0, "misses": 0, "bytes_fetched": 0, "fetch_seconds": 0.0, "evictions": 0, "retries": 2,
                  "hit_rate": None, "fetch_mb_s": 0.0}]  # a rank that looked nothing up: no hit rate
        h["storage"] = {"bytes_fetched": 2_000_000 * epoch, "retries": 2, "evictions": 1, "ranks": ranks}
    return h


def write(run_dir, rank: int, first_epoch: int, history: list[dict], new: list[dict], enabled: bool = True) -> None:
    board = Board(str(run_dir), DistEnv(rank, 2, rank, CPU), first_epoch=first_epoch, history=history,
                  enabled=enabled)
    for h in new:
        board.epoch(h)
    board.close()


def test_two_rank_run_logs_its_history_once_per_epoch_from_rank_0(trained_run):
    run_dir, _ = trained_run
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert m["world_size"] == 2 and len(m["history"]) == 8
    assert len(glob.glob(os.path.join(run_dir, EVENTS))) == 1  # rank 0's file only
    assert_board_matches(run_dir, m["history"])


def test_a_resumed_writer_purges_the_epochs_it_logs_again(tmp_path):
    """Epochs 1-3 logged, then a restart from a checkpoint at the end of epoch 1 (as after a kill just
    after epoch 3 was logged, with last.pt unreadable): epochs 2 and 3 are the new attempt's, once each."""
    write(tmp_path, 0, 1, [], [entry(e, 2.0 - e / 10) for e in (1, 2, 3)])
    again = [entry(1, 1.9), entry(2, 1.5), entry(3, 1.4), entry(4, 1.3)]
    write(tmp_path, 0, 2, again[:1], again[1:])
    assert len(glob.glob(os.path.join(str(tmp_path), EVENTS))) == 2
    assert read_board(tmp_path)["loss/train"] == [(1, 1.899999976158142), (2, 1.5), (3, 1.399999976158142),
                                                  (4, 1.2999999523162842)]
    assert_board_matches(tmp_path, again)


def test_a_folder_without_event_files_gets_its_history_first(tmp_path):
    """A run trained with --no-tensorboard (or before it existed), resumed with it: the curves start at epoch 1."""
    hist = [entry(1, 2.0, remote=True), entry(2, 1.5, remote=True)]
    write(tmp_path, 0, 3, [], hist, enabled=False)
    assert glob.glob(os.path.join(str(tmp_path), EVENTS)) == []
    write(tmp_path, 0, 3, hist, [entry(3, 1.0, remote=True)])
    got = read_board(tmp_path)
    assert [s for s, _ in got["loss/train"]] == [1, 2, 3]
    assert got["storage/rank0/mb_fetched"] == [(1, 2.0), (2, 4.0), (3, 6.0)]
    assert "storage/rank1/hit_rate" not in got and got["storage/rank1/retries"][0] == (1, 2.0)
    assert_board_matches(tmp_path, hist + [entry(3, 1.0, remote=True)])


def test_other_ranks_write_nothing(tmp_path):
    write(tmp_path, 1, 1, [], [entry(1, 2.0)])
    assert os.listdir(tmp_path) == []


def test_without_the_tensorboard_package_training_goes_on_with_one_warning(tmp_path):
    """Where `tensorboard` is not installed (the offline GPU image may lack it): one warning line, no files."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'tensorboard': raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "import torch\n"
            "from training.distributed import DistEnv\n"
            "from training.tensorboard import Board\n"
            "b = Board(sys.argv[1], DistEnv(0, 1, 0, torch.device('cpu')), first_epoch=1, history=[])\n"
            "b.epoch({'epoch': 1, 'train_loss': 1.0}); b.close(); print('trained on')\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout == "trained on\n", p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: no TensorBoard event files: ") and "--no-tensorboard" in lines[0]
    assert os.listdir(tmp_path) == []


def test_an_ensembles_members_are_logged_for_both_weights(tmp_path):
    """--model a+b --ema --compare-raw: each member alone, of the average and of the raw weights, one tag each."""
    h = [dict(entry(e, 1.0), val_track_acc_raw=0.5, val_track_acc_members=[0.25 * e, 0.5],
              val_track_acc_raw_members=[0.125 * e, 0.75]) for e in (1, 2)]
    write(tmp_path, 0, 1, [], h)
    board = read_board(tmp_path)
    assert board["accuracy/val_tracks_member1"] == [(1, 0.25), (2, 0.5)]
    assert board["accuracy/val_tracks_raw_member1"] == [(1, 0.125), (2, 0.25)]
    assert board["accuracy/val_tracks_raw_member2"] == [(1, 0.75), (2, 0.75)]
    assert not any(t.startswith("accuracy/val_tracks_member3") for t in board)
