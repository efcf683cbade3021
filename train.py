"""Train a genre classifier on DALI log-mels with DistributedDataParallel and mixed precision.

    torchrun --nproc-per-node 4 train.py --amp       # 4 ranks (GPUs if present, else CPU/gloo)
    python train.py --nproc 4 --amp                  # the same: launches 4 ranks itself
    python train.py                                  # one process

Reads shards/ (preprocess/make_shards.py). Writes RUN_DIR/{last,best}.pt, metrics.json,
curves.png, confusion.png, report.html and TensorBoard event files; rank 0 shows the progress bar and logs.

Reading order: main() -> build() (CheckpointSaver.resume) -> train_one_epoch() -> evaluate -> end_epoch() -> finish().
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from core import checkpoint, version
from core.faults import fault_point
from core.shards import Manifest
from core.spec import Augment, FeatureSpec
from loading.loader import DaliLoader  # (DALI itself loads when a loader is made)
from model import DEFAULT_MODEL, build_model, count_parameters, member_names
from storage.folder import read_manifest, trust_warnings
from storage.store import StorageError, redact
from training import distributed, report, run_report
from training.amp import Amp
from training.checkpointing import CheckpointSaver, Start
from training.ema import DEFAULT_EMA, ModelEMA
from training.evaluate import EvalResult, TrackLog, evaluate
from training.stats import EpochStats, NonFiniteWatch, RunningSums, no_sync_check
from training.step import train_step
from training.tensorboard import Board


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ParallelTunes {version()}")
    _data_args(p.add_argument_group("data"))
    _training_args(p)
    args = p.parse_args(argv)
    if args.crops_per_track < 1 or args.batch_size % args.crops_per_track:
        p.error(f"--crops-per-track {args.crops_per_track} must be >= 1 and divide --batch-size {args.batch_size}")
    if args.nproc == "auto":
        args.nproc = distributed.auto_nproc(args.cpu)
    elif not args.nproc.isdigit() or int(args.nproc) < 1:
        p.error(f"--nproc {args.nproc}: give a number >= 1 or 'auto'")
    args.nproc = int(args.nproc)
    if args.sync_every < 1:
        p.error("--sync-every must be >= 1")
    if args.cache_limit is not None and args.cache_limit <= 0:
        p.error("--cache-limit must be > 0 GB")
    if args.shuffle_window < 1:
        p.error("--shuffle-window must be >= 1")
    if not 0.0 <= args.speed < 0.5:
        p.error(f"--speed {args.speed}: give a value in [0, 0.5)")
    if not 0.0 <= args.eq_db <= 40.0:
        p.error(f"--eq-db {args.eq_db}: give a value in [0, 40] dB")
    if args.val_every < 1:
        p.error(f"--val-every {args.val_every}: give a number of epochs >= 1")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"--ema {args.ema}: give a decay in [0, 1) (0: no average)")
    if args.compare_raw and not args.ema:
        p.error("--compare-raw compares the raw weights with --ema's average: give --ema DECAY, not 0")
    if args.manifest_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", args.manifest_sha256):
        p.error("--manifest-sha256 takes the 64 hex digits of a sha256")
    return args


def _data_args(g) -> None:
    g.add_argument("--shards", default="shards",
                   help="folder written by make_shards (default: shards/), or a remote one: s3://bucket/prefix, "
                        "gs://bucket/prefix, https://host/path (read through the node cache)")
    g.add_argument("--cache-dir", default=None,
                   help="node-local cache of remote shards, shared by the node's ranks (default: "
                        "$XDG_CACHE_HOME or ~/.cache, /parallel_tunes/shards)")
    g.add_argument("--allow-unverified", action="store_true",
                   help="read a remote folder whose manifest lacks file checksums (an old or hand-made one): its "
                        "files are taken as served. Without it such a folder is refused")
    g.add_argument("--manifest-sha256", default=None, metavar="HEX",
                   help="refuse the shard folder unless its manifest.json has this sha256 (pins a remote folder, "
                        "e.g. one served over plain http)")
    g.add_argument("--cache-limit", type=float, default=None,
                   help="GB the cache may hold; least recently used shards are evicted (default: no limit)")
    g.add_argument("--shuffle-window", type=int, default=1024,
                   help="training samples shuffled together: shards in random order, then the samples of each "
                        "run of shards holding this many shuffled (also the cache's working set per rank)")
    g.add_argument("--clip-seconds", type=float, default=FeatureSpec.clip_seconds, help="training crop length")
    g.add_argument("--crops-per-track", type=int, default=4,
                   help="random crops cut from each decoded track per epoch (divides --batch-size; 1: one crop)")
    g.add_argument("--threads", type=int, default=None, help="DALI threads per rank (default: cores / ranks)")


def _training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, type=_model_name, metavar="NAME[+NAME...]",
                   help="baseline: the original 4-block CNN; baseline-bandnorm: the same behind a per-band "
                        "normalisation; resnet: short-chunk residual CNN, 2.5x faster on CPU; rescnn: residual "
                        "baseline; tiny: 15 k parameters, for smoke tests. Several joined by '+' train an ensemble "
                        "in one run (each member its own loss on the same batches; one checkpoint that predicts "
                        f"with all). Default {DEFAULT_MODEL} (with --ema {DEFAULT_EMA}): +0.06 over baseline "
                        "alone on real recordings by cross-validation, at 2x its training FLOPs (README, section 3)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--val-every", type=int, default=1, metavar="N",
                   help="validate after every N-th epoch and after the last (best.pt is chosen among those); "
                        "validation of whole tracks can cost as much as an epoch of training")
    g.add_argument("--batch-size", type=int, default=32, help="training crops per rank and step")
    g.add_argument("--eval-batch-size", type=int, default=8, help="whole tracks per rank and batch")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=1e-2)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--ema", type=float, default=DEFAULT_EMA, metavar="DECAY",
                   help="validate, select best.pt and predict with an exponential moving average of the weights "
                        f"(updated every step; default {DEFAULT_EMA}); 0: off, the raw weights")
    g.add_argument("--compare-raw", action="store_true",
                   help="with --ema: also validate the raw weights at every validation, keep their best as best-raw.pt and "
                        "test it, so one run shows what the average bought (the raw trajectory is a run without --ema)")
    g.add_argument("--amp", action="store_true", help="mixed precision: bf16 (CPU, recent GPUs) or fp16 + GradScaler")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sync-every", type=int, default=20,
                   help="read the loss sums and the non-finite check from the device every N steps (1: every step)")
    g = p.add_argument_group("augmentation (training only, all off by default)")
    g.add_argument("--gain-db", type=float, default=0.0, help="random gain within +-N dB")
    g.add_argument("--specaugment", action="store_true", help="2 frequency and 2 time masks per crop")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup with Beta(a, a); 0 = off")
    g.add_argument("--speed", type=float, default=0.0, metavar="S",
                   help="speed perturbation: each crop played at a random speed in [1-S, 1+S], pitch and tempo "
                        "together (resampled in the DALI graph; e.g. 0.1); 0 = off")
    g.add_argument("--eq-db", type=float, default=0.0, metavar="E",
                   help="random equalisation: each crop's mel bands gained by a curve piecewise linear through "
                        "4 gains in [-E, E] dB at evenly spaced bands (another room, mix or mastering); 0 = off")
    g = p.add_argument_group("distributed")
    g.add_argument("--nproc", default="1",
                   help="launch N local ranks (like torchrun --nproc-per-node N); 'auto': one per GPU, 2 on a CPU. "
                        "With CUDA, never more ranks than GPUs")
    g.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is present")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--run-dir", default=None, help="output folder (default: runs/<timestamp>/)")
    g.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/last.pt, else prev.pt (default RUN_DIR: newest run); automatic after "
                        "an elastic restart")
    g.add_argument("--ckpt-every", type=int, default=200, help="also checkpoint every N steps within an epoch (0: off)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard event files in the run folder, one point per epoch (tensorboard --logdir runs)")


def _model_name(name: str) -> str:
    try:
        member_names(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def saved_args(args: argparse.Namespace) -> dict:
    """The arguments as written into checkpoints and metrics.json: URLs without credentials or tokens."""
    return {**vars(args), "shards": redact(args.shards)}


@dataclass
class Trainer:
    """Everything the loop, the checkpoints and the reports share, built once by build()."""
    args: argparse.Namespace
    env: distributed.DistEnv
    manifest: Manifest
    spec: FeatureSpec
    run_dir: str
    saver: CheckpointSaver
    model: torch.nn.Module          # the plain module: its weights go into checkpoints
    net: torch.nn.Module            # what steps run through: DDP / torch.compile wrappers of `model`
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: Amp
    train_loader: DaliLoader
    val_loader: DaliLoader
    history: list[dict] = field(default_factory=list)
    best: float = -1.0              # best validation track accuracy so far
    ema: ModelEMA | None = None     # --ema: the averaged weights evaluation and best.pt use
    board: Board | None = None      # TensorBoard events (rank 0)

    @property
    def eval_net(self) -> torch.nn.Module:
        """What validation runs: the EMA's module, or the training network."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def steps(self) -> int:
        return len(self.train_loader)

    def log(self, *a, **k) -> None:
        if self.env.is_main:
            print(*a, **k)

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def loader(self, split: str) -> DaliLoader:
        """An evaluation loader (whole tracks, in order) of `split` for this rank."""
        return DaliLoader(self.args.shards, split, self.spec, self.args.eval_batch_size, train=False,
                          **loader_kw(self.args, self.env, self.manifest))


def loader_kw(args: argparse.Namespace, env: distributed.DistEnv, manifest: Manifest) -> dict:
    threads = args.threads or max(1, (os.cpu_count() or 1) // env.local_world_size)
    limit = None if args.cache_limit is None else int(args.cache_limit * 1e9)
    return dict(rank=env.rank, world_size=env.world_size, device=env.device, num_threads=threads, seed=args.seed,
                manifest=manifest, cache_dir=args.cache_dir, cache_limit=limit, allow_unverified=args.allow_unverified,
                log=_warn)


def _warn(line: str) -> None:
    """Storage retries and cache warnings, from any rank, on stderr (the bar is on stdout)."""
    print(f"[rank {distributed.launch().rank}] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nproc > 1 and distributed.launch().world_size == 1:
        distributed.check_placement(args.nproc, args.cpu)  # fail here, in one line, not in every rank
        return distributed.launch_local(args.nproc, os.path.abspath(__file__), sys.argv[1:] if argv is None else argv)
    try:
        manifest = read_manifest(args.shards, allow_unverified=args.allow_unverified, sha256=args.manifest_sha256)
        if manifest.unlabeled:
            raise ValueError(f"{manifest.path}: an unlabeled collection (make_shards --unlabeled) has no labels to "
                             "train on; predict it with predict.py --shards")
    except (FileNotFoundError, ValueError, StorageError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    env = distributed.setup(force_cpu=args.cpu)
    if env.is_main:
        for line in trust_warnings(args.shards, manifest, pinned=args.manifest_sha256 is not None):
            print(line, file=sys.stderr)
    try:
        torch.manual_seed(args.seed)  # before the model is built: its initial weights follow the seed
        trainer, start = build(args, env, manifest)
    except checkpoint.CheckpointError as e:
        if env.is_main:
            print(f"train: error: {e}", file=sys.stderr)
        distributed.teardown(env)
        return 2
    trainer.log(f"model {args.model}: {count_parameters(trainer.model):,} parameters | {env.world_size} rank(s) on "
                f"{env.device.type} | precision {trainer.amp.name} | {manifest.splits['train'].count} training tracks x "
                f"{args.crops_per_track} crops, {trainer.steps} steps/epoch | run dir {trainer.run_dir}")
    if start.path:
        trainer.log(f"resumed from {start.path} at epoch {start.epoch} step {start.step}")

    watch = NonFiniteWatch(env, manifest.key_of()) if trainer.amp.scaler is None else None
    step, saved_sums = start.step, start.sums
    for epoch in range(start.epoch, args.epochs + 1):
        stats = train_one_epoch(trainer, epoch, step, saved_sums, watch)
        step, saved_sums = 0, None
        val = raw = None
        if epoch % args.val_every == 0 or epoch == args.epochs:
            val = evaluate(trainer.eval_net, trainer.val_loader, trainer.spec, env, trainer.amp, len(trainer.classes))
            raw = (evaluate(trainer.net, trainer.val_loader, trainer.spec, env, trainer.amp, len(trainer.classes))
                   if args.compare_raw else None)
        end_epoch(trainer, epoch, stats, val, raw)

    result = finish(trainer)
    trainer.board.close()
    distributed.teardown(env)
    return result


def build(args: argparse.Namespace, env: distributed.DistEnv, manifest: Manifest) -> tuple[Trainer, Start]:
    """Model, optimizer, loaders and schedule, and where to start (a resumed run's position)."""
    run_dir = resolve_run_dir(args, env)
    os.makedirs(run_dir, exist_ok=True)
    spec = dataclasses.replace(manifest.spec, clip_seconds=args.clip_seconds)
    model = build_model(args.model, len(manifest.classes)).to(env.device)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # training crops and evaluation windows have fixed shapes
        model = model.to(memory_format=torch.channels_last)
        if env.distributed:  # SyncBatchNorm has no CPU implementation
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    amp = Amp.create(env.device, args.amp)
    saver = CheckpointSaver(run_dir, env)
    ema = ModelEMA(model, args.ema) if args.ema else None
    start = saver.resume(want=args.resume, model=model, amp=amp, classes=manifest.classes, spec=spec, args=args,
                         ema=ema)

    augment = Augment(gain_db=args.gain_db, freq_masks=2 if args.specaugment else 0,
                      time_masks=2 if args.specaugment else 0, speed=args.speed, eq_db=args.eq_db)
    train_loader = DaliLoader(args.shards, "train", spec, args.batch_size // args.crops_per_track, train=True,
                              augment=augment, crops=args.crops_per_track, window=args.shuffle_window,
                              epoch=start.epoch, state=start.loader, **loader_kw(args, env, manifest))
    val_loader = DaliLoader(args.shards, "val", spec, args.eval_batch_size, train=False,
                            **loader_kw(args, env, manifest))
    net = torch.compile(model) if args.compile else model  # checkpoints keep the plain module's weights
    if env.distributed:
        net = DDP(net, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(max(1, int(args.warmup_epochs * steps)), args.epochs * steps))
    start.load_into(optimizer, scheduler)  # after the scheduler's constructor, which resets the learning rate
    trainer = Trainer(args, env, manifest, spec, run_dir, saver, model, net, optimizer, scheduler, amp, train_loader,
                val_loader, start.history, start.best, ema)
    trainer.board = Board(run_dir, env, first_epoch=start.epoch, history=start.history, enabled=args.tensorboard)
    return trainer, start


def train_one_epoch(trainer: Trainer, epoch: int, first_step: int, saved_sums: list[float] | None,
                    watch: NonFiniteWatch | None) -> EpochStats:
    """Steps first_step..steps-1 of `epoch` on this rank; returns the epoch's figures over all ranks.

    `saved_sums`: the running sums saved with a mid-epoch checkpoint, so a resumed epoch's figures
    equal an uninterrupted one's. Nothing in a step reads from the device: the sums and the
    non-finite check are read every --sync-every steps (training/stats.py).
    """
    args, env = trainer.args, trainer.env
    trainer.net.train()
    sums = RunningSums(env.device, saved_sums)
    bar = _bar(env, trainer.steps, f"epoch {epoch}/{args.epochs}", first_step)
    it = iter(trainer.train_loader)
    t0 = time.perf_counter()
    try:
        for step in range(first_step, trainer.steps):
            tw = time.perf_counter()
            b = next(it)
            sums.data_wait += time.perf_counter() - tw
            with no_sync_check(env.device):  # nothing here may wait for the GPU
                r = train_step(trainer.net, b.x, b.y, b.weight, trainer.optimizer, trainer.amp, n_classes=len(trainer.classes),
                               label_smoothing=args.label_smoothing, mixup_alpha=args.mixup)
                trainer.scheduler.step()
                if trainer.ema is not None:
                    trainer.ema.update(trainer.model)
                sums.add(r.per_sample, r.logits.argmax(1) == b.y, b.weight)
                if watch is not None:
                    watch.note(r.loss, step, b.uid)
            done = step + 1
            sync = done % args.sync_every == 0
            ckpt = args.ckpt_every and done % args.ckpt_every == 0 and done < trainer.steps
            if watch is not None and (sync or ckpt or done == trainer.steps):
                watch.check(epoch)  # before any checkpoint: nothing is saved after a non-finite loss
            if bar is not None:
                bar.update()
                if sync or step == first_step:  # reading the loss waits for the GPU: not every step
                    bar.set_postfix(loss=f"{r.loss.item():.3f}", lr=f"{trainer.scheduler.get_last_lr()[0]:.2e}")
            if ckpt:
                save_checkpoint(trainer, epoch, done, sums.snapshot(time.perf_counter() - t0))
            fault_point("step", (epoch, done), env.rank)
    except BaseException:
        if bar is not None:  # a clean line for the error that follows
            bar.close()
        raise
    for _ in it:  # let DALI close the epoch; FILL policy gives exactly `steps` batches
        raise RuntimeError("DALI delivered more batches than expected")
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    sums.seconds += time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return sums.reduce(env)


def end_epoch(trainer: Trainer, epoch: int, stats: EpochStats, val: EvalResult | None,
              raw: EvalResult | None = None) -> None:
    """Log the epoch, checkpoint it (last.pt; best.pt on a new best validation accuracy), plot curves.
    `val` None: an epoch --val-every skips (its history entry has no val_* keys).
    `raw` (--compare-raw): the raw weights' validation beside the average's; best-raw.pt on its new best."""
    h = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc,
         **({"val_loss": val.loss, "val_track_acc": val.track_acc, "val_segment_acc": val.segment_acc} if val else {}),
         "lr": trainer.scheduler.get_last_lr()[0], "samples_per_s": stats.samples_per_s, "data_wait": stats.data_wait,
         "epoch_seconds": stats.seconds}
    raw_improved = False
    if raw is not None:
        raw_improved = raw.track_acc > max((e.get("val_track_acc_raw", -1.0) for e in trainer.history), default=-1.0)
        h.update(val_loss_raw=raw.loss, val_track_acc_raw=raw.track_acc, val_segment_acc_raw=raw.segment_acc)
        if raw.members is not None:
            h["val_track_acc_raw_members"] = raw.members
    if val is not None and val.members is not None:  # an ensemble: what each member scores alone
        h["val_track_acc_members"] = val.members
    traffic = epoch_traffic(trainer, stats.seconds)
    if traffic:
        h["storage"] = traffic
    trainer.history.append(h)
    trainer.log(f"epoch {epoch:3d} | loss {h['train_loss']:.4f} | train acc {h['train_acc']:.3f} | "
                + (f"val loss {val.loss:.4f} | val acc {val.track_acc:.3f} (tracks) {val.segment_acc:.3f} (windows)"
                   if val else "not validated") + f" | {h['samples_per_s']:.1f} samples/s "
                f"| data wait {100 * h['data_wait']:.1f}%" + (f" | raw weights: val acc {raw.track_acc:.3f}" if raw else "")
                + (" | members alone: " + " ".join(f"{a:.3f}" for a in val.members) if val and val.members else "")
                + (f" | {traffic_line(traffic)}" if traffic else ""))
    trainer.board.epoch(h)  # before the checkpoint: a resumed run purges what it logs again (training/tensorboard.py)
    improved = val is not None and val.track_acc > trainer.best
    if improved:
        trainer.best = val.track_acc
    save_checkpoint(trainer, epoch, trainer.steps, [0.0] * 5, best=improved, best_raw=raw_improved)
    if trainer.env.is_main:
        report.plot_curves(trainer.history, trainer.path("curves.png"), member_names(trainer.args.model))
    distributed.barrier(trainer.env)


def epoch_traffic(trainer: Trainer, seconds: float) -> dict | None:
    """Every rank's shard traffic this epoch (remote shards only): fetched bytes and rate, cache hits."""
    mine = trainer.train_loader.traffic() + trainer.val_loader.traffic()
    if not trainer.train_loader.files.remote:
        return None
    row = {**mine.as_dict(), "fetch_mb_s": mine.bytes_fetched / 1e6 / max(seconds, 1e-9)}
    ranks = distributed.all_gather_object(row, trainer.env)
    return {"bytes_fetched": sum(r["bytes_fetched"] for r in ranks), "retries": sum(r["retries"] for r in ranks),
            "evictions": sum(r["evictions"] for r in ranks), "ranks": ranks}


def traffic_line(traffic: dict) -> str:
    rates = "/".join(f"{r['fetch_mb_s']:.1f}" for r in traffic["ranks"])
    hits = "/".join("-" if r["hit_rate"] is None else f"{100 * r['hit_rate']:.0f}%" for r in traffic["ranks"])
    return (f"fetched {traffic['bytes_fetched'] / 1e6:.1f} MB, {rates} MB/s per rank, cache hits {hits}, "
            f"{traffic['retries']} retries, {traffic['evictions']} evictions")


def save_checkpoint(trainer: Trainer, epoch: int, done: int, sums: list[float], best: bool = False,
                    best_raw: bool = False) -> None:
    """Gather every rank's data-stream and RNG state; rank 0 writes last.pt (best.pt if `best`, best-raw.pt if `best_raw`)
    through the saver (training/checkpointing.py). The format is documented in core/checkpoint.py."""
    env = trainer.env
    mine = {"loader": trainer.train_loader.state(), "torch_rng": torch.get_rng_state(), "progress": sums}
    if env.device.type == "cuda":
        mine["cuda_rng"] = torch.cuda.get_rng_state()
    ranks = distributed.all_gather_object(mine, env)
    if env.is_main:
        trainer.saver.save({
            "model_name": trainer.args.model, "model": trainer.model.state_dict(), "classes": trainer.classes,
            "feature_spec": trainer.spec.to_dict(), "args": saved_args(trainer.args), "epoch": epoch, "step": done, "steps": trainer.steps,
            "history": trainer.history, "best_metric": trainer.best, "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.amp.state_dict(), "rank_states": ranks,
            **({"ema": trainer.ema.state_dict()} if trainer.ema is not None else {})}, best=best, best_raw=best_raw)


def finish(trainer: Trainer) -> int:
    """Test-split accuracy of the best checkpoint, metrics.json, confusion matrix, summary."""
    env, args = trainer.env, trainer.args
    metrics: dict = {"history": trainer.history, "classes": trainer.classes, "args": saved_args(args), "world_size": env.world_size,
                     "device": env.device.type, "precision": trainer.amp.name}
    best_state = trainer.saver.load_best(trainer.model)
    if best_state is not None:
        metrics["best_epoch"] = best_state["epoch"]
    tracks = TrackLog()  # per-track logits, embeddings and statistics of the test pass, for report.html
    if trainer.manifest.splits["test"].count:
        test = evaluate(trainer.net, trainer.loader("test"), trainer.spec, env, trainer.amp, len(trainer.classes),
                        tracks=tracks)
        metrics["test"] = {"track_acc": test.track_acc, "segment_acc": test.segment_acc, "loss": test.loss,
                           "tracks": test.tracks, "per_class": test.per_class(trainer.classes),
                           "confusion": test.confusion.tolist()}
        if env.is_main:
            report.plot_confusion(test.confusion, trainer.classes, trainer.path("confusion.png"))
        if test.members is not None:  # an ensemble: each member judged alone in the same pass
            metrics["test_members"] = members_alone(args.model, test.members)
    raw_state = trainer.saver.load_best(trainer.model, raw=True) if args.compare_raw else None  # after the test above
    if raw_state is not None:
        metrics["best_epoch_raw"] = raw_state["epoch"]
        if trainer.manifest.splits["test"].count:  # the same test split, judged by the raw weights' best epoch
            raw = evaluate(trainer.net, trainer.loader("test"), trainer.spec, env, trainer.amp, len(trainer.classes))
            metrics["test_raw"] = {"track_acc": raw.track_acc, "segment_acc": raw.segment_acc, "loss": raw.loss,
                                   "tracks": raw.tracks}
            if raw.members is not None:  # as "test_members" beside "test"
                metrics["test_raw_members"] = members_alone(args.model, raw.members)
    if env.is_main:
        if trainer.history:
            trainer.board.test(metrics, trainer.history[-1]["epoch"])
        report.write_json(trainer.path("metrics.json"), metrics)
        run_report.write(trainer.run_dir, metrics, tracks.rows, trainer.manifest, trainer.spec,
                         run_report.environment(env.device))
        last = trainer.history[-1] if trainer.history else {}
        print(f"\n== {trainer.run_dir} ==")
        print(f"best val acc {report.best_val(trainer.history):.3f} "
              f"(epoch {metrics.get('best_epoch', '-')}), last train acc {last.get('train_acc', float('nan')):.3f}, "
              f"{last.get('samples_per_s', 0):.1f} samples/s, data wait {100 * last.get('data_wait', 0):.1f}%")
        if "test" in metrics:
            m = metrics["test"]
            print(f"test acc {m['track_acc']:.3f} on {m['tracks']} tracks (windows {m['segment_acc']:.3f})")
            worst = sorted(m["per_class"].items(), key=lambda kv: kv[1]["f1"])[:3]
            print("lowest F1: " + ", ".join(f"{k} {v['f1']:.2f}" for k, v in worst))
        if "test_members" in metrics:
            print("each member alone: " + members_line(metrics["test_members"]))
        if "best_epoch_raw" in metrics:
            r = metrics.get("test_raw")
            print(f"raw weights (no EMA): best val acc {report.best_val(trainer.history, 'val_track_acc_raw'):.3f} "
                  f"(epoch {metrics['best_epoch_raw']})"
                  + (f", test acc {r['track_acc']:.3f} (windows {r['segment_acc']:.3f})" if r else "")
                  + (", members alone " + members_line(metrics["test_raw_members"]) if "test_raw_members" in metrics else ""))
        print(f"checkpoints: {trainer.path('best.pt')}, {trainer.path('last.pt')} | reports: report.html, metrics.json, curves.png, confusion.png")
    return 0


def members_alone(model: str, accs: list[float]) -> list[dict]:
    """An ensemble's members' test accuracies as metrics.json lists them: [{"model", "track_acc"}, ...]."""
    return [{"model": name, "track_acc": acc} for name, acc in zip(member_names(model), accs)]


def members_line(rows: list[dict]) -> str:
    return ", ".join(f"{m['model']} {m['track_acc']:.3f}" for m in rows)


def resolve_run_dir(args: argparse.Namespace, env: distributed.DistEnv) -> str:
    """Every rank must agree on the folder: rank 0 decides and broadcasts it."""
    run_dir = args.run_dir
    if run_dir is None and env.is_main:
        restarted = env.restart > 0
        run_dir = ((checkpoint.newest_run("last.pt") if (args.resume or restarted) else None)
                   or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    if env.distributed:
        box = [run_dir]
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = box[0]
    return run_dir


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warm-up to the peak learning rate, then cosine decay to 0 at the last step."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return f


def _bar(env: distributed.DistEnv, total: int, desc: str, initial: int = 0):
    if not env.is_main:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def cli() -> int:
    try:
        return main()
    except FloatingPointError as e:  # raised on every rank together (NonFiniteWatch); rank 0 reports
        if distributed.launch().is_main:
            print(f"train: error: {e}", file=sys.stderr)
        return 1
    except StorageError as e:  # raised by the rank(s) whose shards failed; each says which URL
        print(f"train: error: {distributed.launch().tag}{e}", file=sys.stderr)
        return 1
    except distributed.PlacementError as e:  # raised on every rank of a machine together; its first reports
        if distributed.launch().local_rank == 0:
            print(f"train: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # after PlacementError, one of its kind
        if not distributed.lost_peer(e):
            raise
        # a collective failed because another rank stopped: that rank's own error says why
        print(f"train: error: {distributed.launch().tag}stopped: another rank left the job "
              f"({str(e).split(']', 1)[-1].strip()[:80]})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
