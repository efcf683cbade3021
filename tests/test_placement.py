"""Rank placement: never two ranks on one GPU (NCCL refuses it), one line instead of a hang or trace.

No GPU here: torch.cuda is patched to report a machine with N GPUs.
"""
import sys

import pytest
import torch

import train
from training import distributed


@pytest.fixture
def gpus(monkeypatch):
    def have(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return have


def test_more_ranks_than_gpus_is_one_line(gpus):
    gpus(1)
    with pytest.raises(distributed.PlacementError) as e:
        distributed.check_placement(2)
    msg = str(e.value)
    assert "2 ranks" in msg and "1 GPU" in msg and "--nproc 1" in msg and "--cpu" in msg and "\n" not in msg
    distributed.check_placement(1)               # one rank per GPU is fine
    distributed.check_placement(2, force_cpu=True)  # --cpu: gloo, any number of ranks
    gpus(0)
    distributed.check_placement(8)               # no GPU: CPU ranks


def test_auto_nproc_is_one_rank_per_gpu(gpus):
    gpus(4)
    assert distributed.auto_nproc() == 4
    assert distributed.auto_nproc(force_cpu=True) == 2
    gpus(0)
    assert distributed.auto_nproc() == 2


def test_setup_refuses_before_touching_a_gpu(gpus, monkeypatch):
    """A rank that sees 2 GPUs with 4 local ranks (neither all of them nor one of its own): every
    rank stops in setup, before set_device."""
    gpus(2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: pytest.fail("set_device called"))
    with pytest.raises(distributed.PlacementError, match="4 ranks on this machine but this rank sees 2 GPUs"):
        distributed.setup()


def test_per_rank_visibility_gives_each_rank_its_one_gpu(gpus, monkeypatch):
    """SLURM --gpus-per-task / Kubernetes: local rank 3 of 4 sees one GPU (CUDA_VISIBLE_DEVICES=3),
    which is its cuda:0 (before, it asked for the invisible cuda:3 or refused)."""
    gpus(1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    env = distributed.setup()
    assert env.device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]
    gpus(4)  # every rank sees all four: local rank 3 takes cuda:3
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert distributed.setup().device == torch.device("cuda", 3)


def test_two_ranks_on_one_gpu_are_found_through_the_store():
    """Ranks compare GPU UUIDs through a real TCPStore: a shared GPU is one line on every rank."""
    import threading
    from datetime import timedelta
    master = torch.distributed.TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=20),
                                        wait_for_workers=False)
    errors = {}

    def rank(r: int, uuid: str, prefix: str) -> None:
        store = torch.distributed.PrefixStore(prefix, torch.distributed.TCPStore(
            "127.0.0.1", master.port, None, False, timeout=timedelta(seconds=20)))
        try:
            distributed.check_distinct_gpus(store, r, 3, uuid, f"cuda:0 of CUDA_VISIBLE_DEVICES={r}")
        except distributed.PlacementError as e:
            errors[r] = str(e)

    for prefix, uuids in (("ok", ["GPU-a", "GPU-b", "GPU-c"]), ("shared", ["GPU-a", "GPU-b", "GPU-a"])):
        threads = [threading.Thread(target=rank, args=(r, u, prefix)) for r, u in enumerate(uuids)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if prefix == "ok":
            assert errors == {}
    assert sorted(errors) == [0, 1, 2] and len(set(errors.values())) == 1
    assert errors[0] == ("ranks 0 and 2 both drive GPU GPU-a (cuda:0 of CUDA_VISIBLE_DEVICES=2): NCCL needs one "
                         "GPU per rank; check CUDA_VISIBLE_DEVICES per rank, use fewer ranks, or --cpu")


def test_train_nproc_above_gpus_exits_2_before_launching(gpus, monkeypatch, capsys, train_shards):
    gpus(1)
    monkeypatch.setattr(distributed, "launch_local", lambda *a, **k: pytest.fail("ranks were launched"))
    monkeypatch.setattr(sys, "argv", ["train.py", "--nproc", "2", "--shards", train_shards[0]])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert train.cli() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error: 2 ranks on this machine but 1 GPU"), err


def test_train_nproc_auto_launches_one_rank_per_gpu(gpus, monkeypatch, train_shards):
    gpus(3)
    launched = {}
    monkeypatch.setattr(distributed, "launch_local", lambda n, script, args: launched.setdefault("n", n) and 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert train.main(["--nproc", "auto", "--shards", train_shards[0]]) == 0
    assert launched["n"] == 3


def test_the_local_launcher_binds_its_own_rendezvous_port():
    """No port is picked, released and handed over (another local user could take it in between and
    serve the rendezvous): the store binds port 0 itself and must be this process's own (is_host)."""
    cfg = distributed.local_launch_config(2)
    assert cfg.rdzv_backend == "c10d" and cfg.rdzv_endpoint == "127.0.0.1:0" and cfg.rdzv_configs["is_host"] is True
    assert not hasattr(distributed, "_free_port")
