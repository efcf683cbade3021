"""Train a genre classifier on DALI log-mels with DistributedDataParallel and mixed precision.

    torchrun --nproc-per-node 4 train.py --amp       # 4 ranks (GPUs if present, else CPU/gloo)
    python train.py --nproc 4 --amp                  # the same: launches 4 ranks itself
    python train.py                                  # one process

Reads shards/ (preprocess/make_shards.py). Writes RUN_DIR/{last,best}.pt, metrics.json,
curves.png, confusion.png; rank 0 shows the progress bar and logs.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import MODELS, build_model, count_parameters  # noqa: E402
from pipeline.dali_graph import Augment  # noqa: E402
from pipeline.loader import DaliLoader, read_manifest  # noqa: E402
from pipeline.spec import FeatureSpec  # noqa: E402
from training import checkpoint, distributed, report  # noqa: E402
from training.amp import Amp  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.mixup import mixup  # noqa: E402
from training.stats import NonFiniteWatch, RunningSums, no_sync_check  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="shards", help="folder written by make_shards (default: shards/)")
    p.add_argument("--run-dir", default=None, help="output folder (default: runs/<timestamp>/)")
    p.add_argument("--model", default="baseline", choices=sorted(MODELS),
                   help="baseline: the original 4-block CNN (default: best validation accuracy on synth --hard); "
                        "resnet: short-chunk residual CNN, 2.5x faster on CPU; rescnn: residual baseline; "
                        "tiny: 15 k parameters, for smoke tests")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32, help="training crops per rank and step")
    p.add_argument("--crops-per-track", type=int, default=4,
                   help="random crops cut from each decoded track per epoch (divides --batch-size; 1: one crop)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="whole tracks per rank and batch")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-seconds", type=float, default=FeatureSpec.clip_seconds, help="training crop length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gain-db", type=float, default=0.0, help="augment: random gain within +-N dB")
    p.add_argument("--specaugment", action="store_true", help="augment: 2 frequency and 2 time masks per crop")
    p.add_argument("--mixup", type=float, default=0.0, help="augment: mixup with Beta(a, a); 0 = off")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 (CPU, recent GPUs) or fp16 + GradScaler")
    p.add_argument("--nproc", default="1",
                   help="launch N local ranks (like torchrun --nproc-per-node N); 'auto': one per GPU, 2 on a CPU. "
                        "With CUDA, never more ranks than GPUs")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/last.pt, else prev.pt (default RUN_DIR: newest run); automatic after "
                        "an elastic restart")
    p.add_argument("--ckpt-every", type=int, default=200, help="also checkpoint every N steps within an epoch (0: off)")
    p.add_argument("--sync-every", type=int, default=20,
                   help="read the loss sums and the non-finite check from the device every N steps (1: every step)")
    p.add_argument("--threads", type=int, default=None, help="DALI threads per rank (default: cores / ranks)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is present")
    args = p.parse_args(argv)
    if args.nproc == "auto":
        args.nproc = distributed.auto_nproc(args.cpu)
    elif not args.nproc.isdigit() or int(args.nproc) < 1:
        p.error(f"--nproc {args.nproc}: give a number >= 1 or 'auto'")
    args.nproc = int(args.nproc)
    if args.sync_every < 1:
        p.error("--sync-every must be >= 1")
    if args.crops_per_track < 1 or args.batch_size % args.crops_per_track:
        p.error(f"--crops-per-track {args.crops_per_track} must be >= 1 and divide --batch-size {args.batch_size}")
    return args


def newest_run(pattern_file: str) -> str | None:
    runs = [os.path.join("runs", d) for d in os.listdir("runs")] if os.path.isdir("runs") else []
    runs = [r for r in runs if os.path.isfile(os.path.join(r, pattern_file))]
    return max(runs, key=lambda r: os.path.getmtime(os.path.join(r, pattern_file))) if runs else None


def resolve_run_dir(args: argparse.Namespace, env: distributed.DistEnv) -> str:
    """Every rank must agree on the folder: rank 0 decides and broadcasts it."""
    run_dir = args.run_dir
    if run_dir is None and env.is_main:
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        run_dir = (newest_run("last.pt") if (args.resume or restarted) else None) or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if env.distributed:
        box = [run_dir]
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = box[0]
    return run_dir


def lr_lambda(warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        distributed.check_placement(args.nproc, args.cpu)  # fail here, in one line, not in every rank
        return distributed.launch_local(args.nproc, os.path.abspath(__file__), sys.argv[1:] if argv is None else argv)
    try:
        manifest = read_manifest(args.shards)
    except FileNotFoundError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2

    env = distributed.setup(force_cpu=args.cpu)
    torch.manual_seed(args.seed)
    log = print if env.is_main else (lambda *a, **k: None)
    run_dir = resolve_run_dir(args, env)
    os.makedirs(run_dir, exist_ok=True)
    classes = manifest["classes"]
    spec = FeatureSpec.from_dict({**manifest["feature_spec"], "clip_seconds": args.clip_seconds})
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    threads = args.threads or max(1, (os.cpu_count() or 1) // local_world)
    loader_kw = dict(rank=env.rank, world_size=env.world_size, device=env.device, num_threads=threads, seed=args.seed)

    model = build_model(args.model, len(classes)).to(env.device)
    if env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        if env.distributed:  # SyncBatchNorm has no CPU implementation
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    amp = Amp.create(env.device, args.amp)

    # Resume: --resume, or automatically after torchrun restarted the job (--max-restarts).
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    state, rank_state = None, None
    if args.resume or restarted:
        try:
            state, path = find_resume_state(run_dir, log)
            if state is not None:
                check_compatible(state, classes, spec, args, path)
        except checkpoint.CheckpointError as e:
            log(f"train: error: {e}", file=sys.stderr)
            distributed.teardown(env)
            return 2
        if state is None and not restarted:
            log(f"train: error: {run_dir}: no valid checkpoint to resume from", file=sys.stderr)
            distributed.teardown(env)
            return 2
        if state is not None:
            checkpoint.load_model_weights(model, state, path)
            amp.load_state_dict(state["scaler"])
            if len(state["rank_states"]) == env.world_size:
                rank_state = state["rank_states"][env.rank]
                torch.set_rng_state(rank_state["torch_rng"].cpu())
                if env.device.type == "cuda" and "cuda_rng" in rank_state:
                    torch.cuda.set_rng_state(rank_state["cuda_rng"].cpu())
            elif state["step"] < state["steps"]:
                log(f"warning: {path} was written by {len(state['rank_states'])} ranks, this run has "
                    f"{env.world_size}: epoch {state['epoch']} restarts from its first step")
                state["step"] = 0

    augment = Augment(gain_db=args.gain_db, freq_masks=2 if args.specaugment else 0,
                      time_masks=2 if args.specaugment else 0)
    train_loader = DaliLoader(args.shards, "train", spec, args.batch_size // args.crops_per_track, train=True,
                              augment=augment, crops=args.crops_per_track,
                              state=rank_state["loader"] if rank_state else None, **loader_kw)
    val_loader = DaliLoader(args.shards, "val", spec, args.eval_batch_size, train=False, **loader_kw)
    net = torch.compile(model) if args.compile else model  # checkpoints keep the plain module's weights
    ddp = DDP(net, device_ids=[env.device.index] if env.device.type == "cuda" else None) if env.distributed else net
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(max(1, int(args.warmup_epochs * steps)), args.epochs * steps))
    log(f"model {args.model}: {count_parameters(model):,} parameters | {env.world_size} rank(s) on {env.device.type} "
        f"| precision {amp.name} | {manifest['splits']['train']['count']} training tracks x {args.crops_per_track} crops, "
        f"{steps} steps/epoch "
        f"| run dir {run_dir}")

    epoch, first_step, best, history = 1, 0, -1.0, []
    if state is not None:  # after the scheduler's constructor, which overwrites the optimizer's lr
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, first_step, best, history = state["epoch"], state["step"], state["best_metric"], state["history"]
        if first_step >= state["steps"]:
            epoch, first_step = epoch + 1, 0
        log(f"resumed from {path} at epoch {epoch} step {first_step}")
    best_path = os.path.join(run_dir, "best.pt")

    def save_state(epoch: int, done: int, progress: list[float], **extra) -> None:
        """Gather every rank's data-stream and RNG state; rank 0 writes last.pt (previous one kept as prev.pt)."""
        mine = {"loader": train_loader.state(), "torch_rng": torch.get_rng_state(), "progress": progress}
        if env.device.type == "cuda":
            mine["cuda_rng"] = torch.cuda.get_rng_state()
        ranks = distributed.all_gather_object(mine, env)
        if env.is_main:
            checkpoint.save_rotating(run_dir, {
                "model_name": args.model, "model": model.state_dict(), "classes": classes,
                "feature_spec": spec.to_dict(), "args": vars(args), "epoch": epoch, "step": done, "steps": steps,
                "history": history, "best_metric": best, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": amp.state_dict(), "rank_states": ranks, **extra})

    uid_to_key = {s["uid"]: s["key"] for s in manifest["samples"]}
    # fp16 overflow is the GradScaler's job (it skips the step); any other non-finite loss stops the job
    watch = NonFiniteWatch(env, uid_to_key) if amp.scaler is None else None
    for epoch in range(epoch, args.epochs + 1):
        ddp.train()
        # carried over a mid-epoch resume
        sums = RunningSums(env.device, rank_state["progress"] if (rank_state and first_step) else None)
        bar = _bar(env, steps, f"epoch {epoch}/{args.epochs}", first_step)
        it = iter(train_loader)
        t0 = time.perf_counter()
        for step in range(first_step, steps):
            tw = time.perf_counter()
            b = next(it)
            sums.data_wait += time.perf_counter() - tw
            with no_sync_check(env.device):  # nothing here may wait for the GPU
                x = b.x.contiguous(memory_format=torch.channels_last) if env.device.type == "cuda" else b.x
                target = b.y
                if args.mixup > 0:
                    x, target = mixup(x, b.y, len(classes), args.mixup)
                with amp.autocast():
                    logits = ddp(x)
                per_sample = F.cross_entropy(logits.float(), target, reduction="none",
                                             label_smoothing=args.label_smoothing)
                loss = (per_sample * b.weight).sum() / b.weight.sum().clamp(min=1.0)
                amp.step(loss, optimizer)
                scheduler.step()
                sums.add(per_sample, logits.argmax(1) == b.y, b.weight)
                if watch is not None:
                    watch.note(loss, step, b.uid)
            sync = (step + 1) % args.sync_every == 0
            ckpt = args.ckpt_every and (step + 1) % args.ckpt_every == 0 and step + 1 < steps
            if watch is not None and (sync or ckpt or step + 1 == steps):
                watch.check(epoch)
            if bar is not None:
                bar.update()
                if sync or step == first_step:  # reading the loss waits for the GPU: not every step
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if ckpt:
                save_state(epoch, step + 1, sums.progress(time.perf_counter() - t0))
            strike_test_fault(epoch, step + 1, env.rank)
        for _ in it:  # let DALI close the epoch; FILL policy gives exactly `steps` batches
            raise RuntimeError("DALI delivered more batches than expected")
        first_step = 0
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        sums.seconds += time.perf_counter() - t0
        if bar is not None:
            bar.close()
        tot = sums.reduce(env)
        val = evaluate(ddp, val_loader, spec, env, amp, len(classes))
        h = {"epoch": epoch, "train_loss": tot.loss, "train_acc": tot.acc,
             "val_loss": val.loss, "val_track_acc": val.track_acc, "val_segment_acc": val.segment_acc,
             "lr": scheduler.get_last_lr()[0], "samples_per_s": tot.samples_per_s, "data_wait": tot.data_wait,
             "epoch_seconds": tot.seconds}
        history.append(h)
        log(f"epoch {epoch:3d} | loss {h['train_loss']:.4f} | train acc {h['train_acc']:.3f} | val loss {val.loss:.4f} "
            f"| val acc {val.track_acc:.3f} (tracks) {val.segment_acc:.3f} (windows) | {h['samples_per_s']:.1f} samples/s "
            f"| data wait {100 * h['data_wait']:.1f}%")
        improved = val.track_acc > best
        best = max(best, val.track_acc)
        save_state(epoch, steps, [0.0] * 5)
        if env.is_main:
            if improved:
                shutil.copyfile(os.path.join(run_dir, "last.pt"), best_path + ".tmp")
                os.replace(best_path + ".tmp", best_path)
            report.plot_curves(history, os.path.join(run_dir, "curves.png"))
        distributed.barrier(env)

    result = finish(args, env, model, ddp, spec, amp, classes, history, run_dir, best_path, loader_kw, manifest)
    distributed.teardown(env)
    return result


def find_resume_state(run_dir: str, log) -> tuple[dict | None, str | None]:
    """The newest readable checkpoint: last.pt, else prev.pt. Unreadable ones are skipped with a warning."""
    for name in ("last.pt", "prev.pt"):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        try:
            return checkpoint.load(path), path
        except checkpoint.CheckpointError as e:
            log(f"warning: skipping {e}", file=sys.stderr)
    return None, None


def check_compatible(state: dict, classes: list[str], spec: FeatureSpec, args: argparse.Namespace, path: str) -> None:
    if state["classes"] != classes:
        raise checkpoint.CheckpointError(f"{path}: classes {state['classes']} differ from the shards' {classes}")
    if state["feature_spec"] != spec.to_dict():
        diff = [k for k, v in spec.to_dict().items() if state["feature_spec"].get(k) != v]
        raise checkpoint.CheckpointError(f"{path}: FeatureSpec differs from this run's in {', '.join(diff)}")
    if state["model_name"] != args.model:
        raise checkpoint.CheckpointError(f"{path}: holds model '{state['model_name']}', this run asks for '{args.model}'")
    for k in ("batch_size", "crops_per_track"):  # they set the steps per epoch, so the schedule and data position
        was = state["args"].get(k, 1 if k == "crops_per_track" else None)
        if was != getattr(args, k):
            flag = "--" + k.replace("_", "-")
            raise checkpoint.CheckpointError(f"{path}: was trained with {flag} {was}; resume with the same value")


def finish(args, env, model, ddp, spec, amp, classes, history, run_dir, best_path, loader_kw, manifest) -> int:
    """Test-split accuracy of the best checkpoint, metrics.json, confusion matrix, summary."""
    metrics: dict = {"history": history, "classes": classes, "args": vars(args), "world_size": env.world_size,
                     "device": env.device.type, "precision": amp.name}
    if os.path.exists(best_path):
        best_state = checkpoint.load(best_path, map_location=env.device)
        checkpoint.load_model_weights(model, best_state, best_path)
        metrics["best_epoch"] = best_state["epoch"]
    if manifest["splits"]["test"]["count"]:
        test_loader = DaliLoader(args.shards, "test", spec, args.eval_batch_size, train=False, **loader_kw)
        test = evaluate(ddp, test_loader, spec, env, amp, len(classes))
        metrics["test"] = {"track_acc": test.track_acc, "segment_acc": test.segment_acc, "loss": test.loss,
                           "tracks": test.tracks, "per_class": test.per_class(classes),
                           "confusion": test.confusion.tolist()}
        if env.is_main:
            report.plot_confusion(test.confusion, classes, os.path.join(run_dir, "confusion.png"))
    if env.is_main:
        report.write_json(os.path.join(run_dir, "metrics.json"), metrics)
        last = history[-1] if history else {}
        print(f"\n== {run_dir} ==")
        print(f"best val acc {max((h['val_track_acc'] for h in history), default=float('nan')):.3f} "
              f"(epoch {metrics.get('best_epoch', '-')}), last train acc {last.get('train_acc', float('nan')):.3f}, "
              f"{last.get('samples_per_s', 0):.1f} samples/s, data wait {100 * last.get('data_wait', 0):.1f}%")
        if "test" in metrics:
            t = metrics["test"]
            print(f"test acc {t['track_acc']:.3f} on {t['tracks']} tracks (windows {t['segment_acc']:.3f})")
            worst = sorted(t["per_class"].items(), key=lambda kv: kv[1]["f1"])[:3]
            print("lowest F1: " + ", ".join(f"{k} {v['f1']:.2f}" for k, v in worst))
        print(f"checkpoints: {best_path}, {os.path.join(run_dir, 'last.pt')} | reports: metrics.json, curves.png, confusion.png")
    return 0


def strike_test_fault(epoch: int, done: int, rank: int) -> None:
    """Test aid: PT_TEST_FAULT=kill|stop:EPOCH:STEP:RANK makes that rank SIGKILL (SIGSTOP) itself
    once STEP steps of EPOCH are done, in the first attempt of a job only, so the fault tests strike
    a known point instead of racing the clock."""
    fault = os.environ.get("PT_TEST_FAULT")
    if not fault or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    how, *where = fault.split(":")
    if [int(v) for v in where] == [epoch, done, rank]:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)


def _bar(env, total: int, desc: str, initial: int = 0):
    if not env.is_main:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def cli() -> int:
    try:
        return main()
    except FloatingPointError as e:  # raised on every rank together (NonFiniteWatch); rank 0 reports
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train: error: {e}", file=sys.stderr)
        return 1
    except distributed.PlacementError as e:  # raised on every rank of a machine together; its first reports
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            print(f"train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
