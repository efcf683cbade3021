"""Print the genre of songs: any length, any common format (WAV, FLAC, OGG, MP3, ...).

    python predict.py song.mp3 [more.wav dir/ ...] [--checkpoint runs/X/best.pt] [--top 3] [--json]

The song is decoded and resampled exactly as make_shards does, turned into log-mels with the
checkpoint's FeatureSpec (torchaudio; DALI is not needed), cut into windows that cover the whole
song, and the windows' logits are averaged. Exit code 2 if any file or the checkpoint fails.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def default_checkpoint() -> str | None:
    found = glob.glob(os.path.join("runs", "*", "best.pt"))
    return max(found, key=os.path.getmtime) if found else None


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


class Predictor:
    """One model load, then any number of songs."""

    def __init__(self, ckpt_path: str, device: str = "cpu"):
        import torch

        from model import build_model
        from pipeline.features_torch import LogMel
        from pipeline.spec import FeatureSpec
        from training import checkpoint

        state = checkpoint.load(ckpt_path, map_location=device)
        self.classes: list[str] = state["classes"]
        self.spec = FeatureSpec.from_dict(state["feature_spec"])
        try:
            self.model = build_model(state["model_name"], len(self.classes))
        except ValueError as e:
            raise checkpoint.CheckpointError(f"{ckpt_path}: {e}") from None
        checkpoint.load_model_weights(self.model, state, ckpt_path)
        self.model.eval().to(device)
        self.logmel = LogMel(self.spec)
        self.device = device
        self.torch = torch

    def predict_file(self, path: str, batch_windows: int = 64) -> dict:
        from pipeline.audio import decode
        from pipeline.windows import cut_windows

        torch = self.torch
        d = decode(path, self.spec.sample_rate)
        audio = torch.from_numpy(d.samples)
        with torch.inference_mode():
            feats = self.logmel.long(audio)[None]  # (1, mels, frames)
            windows = cut_windows(feats, feats.shape[-1], self.spec.clip_frames, self.spec.floor_value)
            logits = torch.cat([self.model(windows[i:i + batch_windows].to(self.device)).float()
                                for i in range(0, len(windows), batch_windows)])
            probs = torch.softmax(logits.mean(0), dim=0)
        order = probs.argsort(descending=True).tolist()
        return {"file": path, "genre": self.classes[order[0]], "seconds": round(len(d.samples) / self.spec.sample_rate, 2),
                "windows": len(windows), "probabilities": {self.classes[i]: round(float(probs[i]), 4) for i in order}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="audio files or folders")
    p.add_argument("--checkpoint", default=None, help="default: the newest runs/*/best.pt")
    p.add_argument("--top", type=int, default=3, help="probabilities to show per file")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    a = p.parse_args(argv)

    from pipeline.audio import AudioError
    from training.checkpoint import CheckpointError

    ckpt = a.checkpoint or default_checkpoint()
    if ckpt is None:
        print("predict: error: no checkpoint given and none found in runs/*/best.pt (train first)", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(ckpt, a.device)
    except CheckpointError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    results, failed = [], 0
    for path in expand(a.paths):
        try:
            r = predictor.predict_file(path)
        except AudioError as e:
            print(f"predict: error: {path}: {e.message}", file=sys.stderr)
            failed += 1
            continue
        results.append(r)
        if not a.json:
            top = list(r["probabilities"].items())[: a.top]
            print(f"{path}: {r['genre']}  ({', '.join(f'{g} {pr:.1%}' for g, pr in top)})")
    if a.json:
        for r in results:
            r["probabilities"] = dict(list(r["probabilities"].items())[: a.top])
        json.dump({"checkpoint": ckpt, "results": results}, sys.stdout, indent=1)
        print()
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
