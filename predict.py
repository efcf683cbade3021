"""Print the genre of songs: any length, any common format (WAV, FLAC, OGG, MP3, ...).

    python predict.py song.mp3 [more.wav dir/ ...] [--checkpoint runs/X/best.pt] [--top 3] [--json]
    python predict.py song.mp3 --checkpoint a/best.pt --checkpoint b/best.pt   # an ensemble
    python predict.py song.mp3 --timeline [--hop 1.5] [--plot-dir DIR]   # genre over time

Collection mode (--out; predict_collection.py): every track of a shard folder or of an audio
folder through the sharded DALI path, on every rank, into one file; resumable:

    python predict.py --shards SHARDS --out predictions.jsonl [--format jsonl|csv] [--timeline]
    python predict.py FOLDER --out predictions.csv              # shards FOLDER first, then the same
    python predict.py --nproc N ... / torchrun --nproc-per-node N predict.py --shards SHARDS --out ...

The song is decoded and resampled exactly as make_shards does, turned into log-mels with the
checkpoint's FeatureSpec (torchaudio; DALI is not needed), cut into windows that cover the whole
song, and the windows' logits are averaged. Exit code 2 if any file or the checkpoint fails.
Several --checkpoint make an ensemble (model/ensemble.py: the members' log-probabilities
averaged); they must share classes and feature parameters.

A file is checked as make_shards checks it (features.audio.validate, the one place): a clip
shorter than --min-seconds (default: make_shards' default, 1 s) is refused, as training never saw
one, unless --allow-short. Warnings (a truncated file: "truncated: header says X frames, file
holds Y"; a short clip predicted with --allow-short) are printed under the file's line
("  warning: ...") and listed in --json's "warnings" of each file.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from core import version  # light: imports neither torch nor DALI
from core.text import one_or_list, printable


def default_checkpoint() -> str | None:
    """runs/<newest run>/best.pt: the run whose best.pt was written last (core.checkpoint.newest_run)."""
    from core.checkpoint import newest_run
    run = newest_run("best.pt")
    return os.path.join(run, "best.pt") if run else None


def expand(paths: list[str]) -> list[str]:
    """Files as given; a directory contributes every non-hidden file below it, sorted."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
        else:
            out.append(p)
    return out


DIGITS = 4   # probabilities shown: 4 decimals (the collection mode writes 6)


class Predictor:
    """One model load, then any number of songs."""

    def __init__(self, ckpt_path: str | list[str], device: str = "cpu"):
        import torch

        from inference.classifier import load_classifier
        from features.torch_logmel import LogMel

        self.model, self.classes, self.spec = load_classifier(ckpt_path, device)
        self.logmel = LogMel(self.spec)
        self.device = device
        self.torch = torch

    def _logits(self, feats, hop_frames: int | None, batch_windows: int = 64):
        from features.windows import cut_windows, window_logits, window_starts

        clip = self.spec.clip_frames
        windows = cut_windows(feats, feats.shape[-1], clip, self.spec.floor_value, hop_frames)
        return (window_logits(self.model, windows, batch_windows, self.device),
                window_starts(feats.shape[-1], clip, hop_frames))

    def predict_file(self, path: str, timeline_hop: float | None = None, min_seconds: float | None = None,
                     allow_short: bool = False, max_seconds: float | None = None) -> dict:
        """Genre of one song (mean of window logits); with timeline_hop, also per-window probabilities.

        Raises AudioError for a file make_shards would reject (features.audio.validate; too short
        only with allow_short=False); result["warnings"] holds what validate reports, and a clip to
        `max_seconds` (default MAX_SECONDS, as make_shards; 0: only the decoder's own cap)."""
        from features.audio import MAX_SECONDS, MIN_SECONDS, AudioError, decode, validate
        from inference.scoring import hop_frames, ranked, timeline

        torch = self.torch
        d = decode(path, self.spec.sample_rate, MAX_SECONDS if max_seconds is None else max_seconds or None)
        warnings = validate(d, MIN_SECONDS if min_seconds is None else min_seconds, allow_short)
        if d.clipped:
            warnings.append(f"clipped: classified the first {d.seconds:.1f} s of {d.source_frames / d.source_rate:.1f} s "
                            f"(--max-seconds)")
        if len(d.samples) <= self.spec.n_fft // 2:  # even --allow-short: the centred STFT needs more
            raise AudioError("too_short", f"{len(d.samples)} samples, fewer than the {self.spec.n_fft // 2 + 1} "
                                          f"one feature frame needs")
        with torch.inference_mode():
            feats = self.logmel.long(torch.from_numpy(d.samples))[None]  # (1, mels, frames)
            logits, _ = self._logits(feats, None)
            probs = torch.softmax(logits.mean(0), dim=0)
            seconds = round(len(d.samples) / self.spec.sample_rate, 2)
            result = {"file": path, "seconds": seconds, "windows": len(logits),
                      **ranked(self.classes, probs, DIGITS), "warnings": warnings}
            if timeline_hop:
                wl, starts = self._logits(feats, hop_frames(self.spec, timeline_hop))
                result["timeline"] = timeline(self.spec, starts, torch.softmax(wl, 1), seconds, self.classes, DIGITS)
        return result


def timeline_segments(timeline: list[dict], seconds: float) -> list[tuple[float, float, str, float]]:
    """Merge consecutive windows with the same top genre: (start, end, genre, mean probability).

    Windows overlap; each owns the time closer to its centre than to its neighbours', so the
    segments tile [0, seconds] without gaps or overlaps.
    """
    centres = [(w["start"] + w["end"]) / 2 for w in timeline]
    bounds = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [seconds]
    segs: list[list] = []
    for i, w in enumerate(timeline):
        p = w["probabilities"][w["genre"]]
        if segs and segs[-1][2] == w["genre"]:
            segs[-1][1] = bounds[i + 1]
            segs[-1][3].append(p)
        else:
            segs.append([bounds[i], bounds[i + 1], w["genre"], [p]])
    return [(round(a, 2), round(b, 2), g, sum(p) / len(p)) for a, b, g, p in segs]


def plot_timeline(result: dict, classes: list[str], path: str) -> None:
    """Genre probabilities over time as a stacked area chart."""
    from training.report import pyplot, save_figure
    plt = pyplot()
    tl = result["timeline"]
    t = [(w["start"] + w["end"]) / 2 for w in tl]
    fig, ax = plt.subplots(figsize=(12, 3.5))
    ax.stackplot(t, [[w["probabilities"][c] for w in tl] for c in classes], labels=classes,
                 colors=plt.cm.tab10.colors[: len(classes)] if len(classes) <= 10 else None)
    ax.set_xlim(0, result["seconds"])
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(f"{printable(os.path.basename(result['file']))}: {result['genre']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _mmss(s: float) -> str:
    return f"{int(s // 60)}:{s % 60:04.1f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from features.audio import MAX_SECONDS, MIN_SECONDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="audio files or folders (with --out: one folder, sharded first)")
    p.add_argument("--checkpoint", action="append", default=None,
                   help="default: the newest runs/*/best.pt; give it again for an ensemble of the checkpoints")
    p.add_argument("--top", type=int, default=3, help="probabilities to show per file")
    p.add_argument("--version", action="version", version=f"ParallelTunes {version()}")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--timeline", action="store_true", help="genre of each window over the whole song")
    p.add_argument("--hop", type=float, default=1.5, help="timeline hop in seconds (window: the clip length)")
    p.add_argument("--plot-dir", default=None, help="with --timeline: write <file>.timeline.png here")
    p.add_argument("--min-seconds", type=float, default=MIN_SECONDS,
                   help="refuse clips shorter than this, as make_shards rejects them (default: make_shards' "
                        "default, %(default)g; the checkpoint does not record the value its shards used)")
    p.add_argument("--allow-short", action="store_true",
                   help="predict clips shorter than --min-seconds anyway, with a warning (shards made with the "
                        "same --min-seconds hold none)")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help="classify only the first N seconds of longer files, as make_shards keeps them (default "
                        "%(default)g; 0: only the decoder's own cap, 600 s at 192 kHz); a clipped file says so")
    _collection_args(p.add_argument_group("collection mode (--out): the sharded DALI path on every rank, resumable"))
    args = p.parse_args(argv)
    if args.min_seconds < 0 or args.max_seconds < 0:
        p.error("--min-seconds and --max-seconds must not be negative")
    if args.manifest_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", args.manifest_sha256):
        p.error("--manifest-sha256 takes the 64 hex digits of a sha256")
    if args.nproc == "auto":
        from training.distributed import auto_nproc
        args.nproc = auto_nproc(args.cpu)
    elif not args.nproc.isdigit() or int(args.nproc) < 1:
        p.error(f"--nproc {args.nproc}: give a number >= 1 or 'auto'")
    args.nproc = int(args.nproc)
    if args.out is None and args.shards is None and not args.paths:
        p.error("give audio files or folders, or --out FILE with --shards DIR or a folder")
    return args


def _collection_args(g) -> None:
    g.add_argument("--out", default=None, metavar="FILE",
                   help="write every track's prediction here (one line per track: .jsonl, or .csv); a rerun with "
                        "the same --out finishes what is missing; summary in FILE-stem.summary.json/.genres.png")
    g.add_argument("--shards", default=None, metavar="DIR",
                   help="predict every track of this shard folder (make_shards.py --unlabeled, or labeled shards)")
    g.add_argument("--allow-unverified", action="store_true",
                   help="read a remote --shards folder whose manifest lacks file checksums (taken as served)")
    g.add_argument("--manifest-sha256", default=None, metavar="HEX",
                   help="refuse --shards unless its manifest.json has this sha256")
    g.add_argument("--format", choices=("jsonl", "csv"), default=None, help="default: from --out's extension, else jsonl")
    g.add_argument("--nproc", default="1", help="launch N local ranks (like torchrun --nproc-per-node N); 'auto': "
                                                 "one per GPU, 2 on a CPU. Never two ranks on one GPU")
    g.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is present")
    g.add_argument("--batch-size", type=int, default=None,
                   help="whole tracks per DALI batch and rank (default: 32 on a GPU; 1 on a CPU, where it costs a "
                        "few %% and gives the single-file mode's features exactly: the DALI graph pads a batch's "
                        "audio, which moves the last 2 frames of its shorter tracks). Windows reach the model in "
                        "batches of their own (256 on a GPU, 8 on a CPU), across tracks")
    g.add_argument("--threads", type=int, default=None, help="DALI threads per rank (default: cores / local ranks)")
    g.add_argument("--source-root", default=None, metavar="DIR",
                   help="prefix the manifest's source paths with DIR in the output (default for a folder: the folder)")
    g.add_argument("--amp", action="store_true",
                   help="bf16/fp16 autocast (GPU speed; probabilities move: up to 2e-4 with bf16 on a CPU, "
                        "untrained models)")
    g.add_argument("--eager", action="store_true", help="on a CPU, skip the TorchScript-frozen model (slower)")
    g.add_argument("--sharded-from", default=None, help=argparse.SUPPRESS)  # ranks started for a folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt = args.checkpoint or [c for c in [default_checkpoint()] if c]
    if not ckpt:
        print("predict: error: no checkpoint given and none found in runs/*/best.pt (train first)", file=sys.stderr)
        return 2
    if args.out is not None or args.shards is not None:
        from predict_collection import run
        return run(args, ckpt)
    return predict_files(args, ckpt)


def predict_files(args: argparse.Namespace, ckpt: list[str]) -> int:
    """The single-file mode: each file decoded and predicted here, one line (or one JSON document)."""
    from core.checkpoint import CheckpointError
    from features.audio import AudioError

    try:
        predictor = Predictor(ckpt, args.device)
    except CheckpointError as e:
        print(f"predict: error: {printable(str(e))}", file=sys.stderr)
        return 2
    results, failed = [], 0
    for path in expand(args.paths):
        try:
            r = predictor.predict_file(path, args.hop if args.timeline else None, args.min_seconds, args.allow_short,
                                         args.max_seconds)
        except AudioError as e:
            hint = "" if e.reason != "too_short" or args.allow_short else "; --allow-short predicts it anyway"
            what = "too short: " if e.reason == "too_short" else ""
            print(f"predict: error: {printable(path)}: {what}{e.message}{hint}", file=sys.stderr)
            failed += 1
            continue
        results.append(r)
        if not args.json:
            show(r, path, args.top, args.timeline)
        if args.timeline and args.plot_dir:
            os.makedirs(args.plot_dir, exist_ok=True)
            plot_timeline(r, predictor.classes, os.path.join(args.plot_dir, os.path.basename(path) + ".timeline.png"))
    if args.json:
        for r in results:
            r["probabilities"] = dict(list(r["probabilities"].items())[: args.top])
        json.dump({"checkpoint": one_or_list(ckpt), "results": results}, sys.stdout, indent=1)  # ASCII: escapes any odd name
        print()
    return 2 if failed else 0


def show(result: dict, path: str, top: int, timeline: bool) -> None:
    """One file's verdict for a person: genre and top probabilities, warnings, the timeline's segments."""
    best = list(result["probabilities"].items())[:top]
    print(f"{printable(path)}: {result['genre']}  ({', '.join(f'{g} {pr:.1%}' for g, pr in best)})")
    for w in result["warnings"]:
        print(f"  warning: {w}")
    if timeline:
        for s0, s1, g, pr in timeline_segments(result["timeline"], result["seconds"]):
            print(f"  {_mmss(s0)}-{_mmss(s1)}  {g} ({pr:.0%})")


if __name__ == "__main__":
    sys.exit(main())
