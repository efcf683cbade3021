"""Rank and process-group setup from torchrun's environment, and `--nproc N` self-launch.

torchrun (or torch's elastic launcher, which `--nproc` calls) sets RANK, WORLD_SIZE and
LOCAL_RANK. Without them the script is a single process with world size 1. NCCL with one GPU per
rank when CUDA is present, gloo on CPU.

Rank placement policy: with CUDA, local rank i uses cuda:i when every rank sees all the machine's
GPUs, or cuda:0 when each sees one (per-rank CUDA_VISIBLE_DEVICES, as SLURM's --gpus-per-task and
Kubernetes give); never two ranks share a GPU (NCCL refuses that: "Duplicate GPU detected"; the
ranks compare their GPUs' UUIDs first and say so in one line). More local ranks than GPUs is a
one-line error naming both numbers and the fix (fewer ranks, or --cpu); `--nproc auto` starts one
rank per GPU (two on a CPU-only machine, so DDP is still exercised there).
"""
from __future__ import annotations

import datetime
import os
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

# A rank that stops answering must not leave the others waiting forever.
PG_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("PT_PG_TIMEOUT_S", "600")))


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    local_world_size: int = 1   # ranks on this machine
    restart: int = 0            # torchrun's restart count: 0 in a job's first attempt

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class PlacementError(RuntimeError):
    """More ranks on this machine than GPUs: a user error, reported in one line."""


def uses_cuda(force_cpu: bool = False) -> bool:
    return torch.cuda.is_available() and not force_cpu


def check_placement(local_ranks: int, force_cpu: bool = False) -> None:
    """Raise PlacementError unless every local rank gets a GPU of its own (no-op on the CPU)."""
    if not uses_cuda(force_cpu):
        return
    gpus = torch.cuda.device_count()
    if local_ranks > gpus:
        raise PlacementError(
            f"{local_ranks} ranks on this machine but {gpus} GPU{'s' if gpus != 1 else ''}: NCCL needs one GPU per "
            f"rank; use --nproc {gpus} (torchrun --nproc-per-node {gpus}), --nproc auto, or --cpu")


def device_index(local_rank: int, local_world_size: int, visible: int) -> int:
    """The CUDA device (among the `visible` ones) of a local rank: cuda:local_rank when the rank sees
    at least one GPU per local rank, cuda:0 when it sees exactly one (its own, per-rank visibility:
    whether it is really its own is checked across ranks by check_distinct_gpus)."""
    if visible >= local_world_size:
        return local_rank
    if visible == 1:
        return 0
    raise PlacementError(
        f"{local_world_size} ranks on this machine but this rank sees {visible} GPUs: give every rank all the "
        f"machine's GPUs or exactly one (CUDA_VISIBLE_DEVICES), or use fewer ranks or --cpu")


def check_distinct_gpus(store, rank: int, world: int, gpu: str, where: str) -> None:
    """PlacementError (on every rank) if two ranks drive the same GPU (`gpu`: its UUID; `where`: how
    this rank names it). Exchanged through the rendezvous store, before NCCL would fail less clearly."""
    store.set(f"gpu/{rank}", f"{gpu}|{where}")
    seen: dict[str, int] = {}
    for r in range(world):
        uuid_, name = store.get(f"gpu/{r}").decode().split("|", 1)
        if uuid_ in seen:
            raise PlacementError(f"ranks {seen[uuid_]} and {r} both drive GPU {uuid_} ({name}): NCCL needs one GPU "
                                 f"per rank; check CUDA_VISIBLE_DEVICES per rank, use fewer ranks, or --cpu")
        seen[uuid_] = r


def auto_nproc(force_cpu: bool = False) -> int:
    """`--nproc auto`: one rank per GPU; two CPU ranks without one."""
    return torch.cuda.device_count() if uses_cuda(force_cpu) else 2


@dataclass(frozen=True)
class Launch:
    """What the launcher (torchrun, or train.py / predict.py --nproc) told this process: the one place
    its environment variables are read. Before setup() (argument checks, error lines) use this;
    after it, the DistEnv that carries the same numbers."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    restart: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        """"[rank N] " before a line when there are several ranks, else ""."""
        return f"[rank {self.rank}] " if self.world_size > 1 else ""


def launch() -> Launch:
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return Launch(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world)),
                  int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))


def setup(force_cpu: bool = False) -> DistEnv:
    here = launch()
    rank, world, local = here.rank, here.world_size, here.local_rank
    use_cuda = uses_cuda(force_cpu)
    if use_cuda:
        device = torch.device("cuda", device_index(local, here.local_world_size, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        # Key the group's store entries by restart: after torchrun restarts the workers, the store
        # still holds the dead group's addresses, and gloo would try to connect to them.
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=PG_TIMEOUT))
        store = dist.PrefixStore(f"parallel-tunes/{here.restart}", store)
        if use_cuda:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            check_distinct_gpus(store, rank, world, str(torch.cuda.get_device_properties(device).uuid),
                                f"cuda:{device.index}" + (f" of CUDA_VISIBLE_DEVICES={visible}" if visible else ""))
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=PG_TIMEOUT, device_id=device if use_cuda else None)
    return DistEnv(rank, world, local, device, here.local_world_size, here.restart)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over ranks (in place, returned for chaining). NCCL needs it on the GPU."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Element-wise minimum over ranks (in place, returned for chaining)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "communicator was aborted",
              "remote worker crashing", "ncclremoteerror")


def lost_peer(err: BaseException) -> bool:
    """A collective's error that says another rank went away (gloo's or NCCL's wording)."""
    return any(w in str(err).lower() for w in _PEER_LOST)


def all_gather_object(obj, env: DistEnv) -> list:
    """Every rank's `obj`, in rank order (a one-element list without a process group)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "GROUP_WORLD_SIZE", "ROLE_NAME")


def local_launch_config(nproc: int, max_restarts: int = 0):
    """The launcher's settings, as `torchrun --standalone` has them: the rendezvous store binds port 0
    itself (the kernel picks a free port and it stays bound; the ranks then use that same store), and
    it must be this process's own (is_host: never fall back to connecting to a store someone else
    serves). A port picked, released and handed over instead could be taken by another local user in
    between, whose store the ranks would then join."""
    from torch.distributed.launcher.api import LaunchConfig
    return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", rdzv_configs={"is_host": True},
                        max_restarts=max_restarts, monitor_interval=0.5, start_method="spawn")


def launch_local(nproc: int, script: str, args: list[str], max_restarts: int = 0) -> int:
    """Run `python script args` as `nproc` ranks on this machine with torch's elastic launcher.

    This is what `torchrun --nproc-per-node N` does; it lets `python train.py --nproc 4` and a
    one-process `torchrun train.py --nproc 4` start N ranks too.
    """
    from torch.distributed.launcher.api import elastic_launch

    for k in _LAUNCH_VARS:  # we may be rank 0 of a one-process torchrun: start a fresh group
        os.environ.pop(k, None)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        elastic_launch(local_launch_config(nproc, max_restarts), entrypoint=sys.executable)(script, *args)
    except ChildFailedError as e:  # the ranks have reported their own errors already
        codes = sorted({f.exitcode for f in e.failures.values()})
        print(f"{os.path.basename(script)}: error: {len(e.failures)} rank(s) failed (exit codes {codes})", file=sys.stderr)
        return 1
    return 0
