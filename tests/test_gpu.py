"""GPU checks: the DALI graph's CUDA stages and mixed-precision training steps on a CUDA device.

    pytest -m gpu tests/test_gpu.py          # on a machine with a GPU (tools/gpu_check.sh runs it)

Every test here is marked `gpu` (pytest.ini) and the whole module is skipped where
torch.cuda.is_available() is False, so `pytest -q tests` on a CPU-only machine (CI) reports it
as skipped. The DALI tests also need nvidia.dali (they are skipped without it).
"""
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device: torch.cuda.is_available() is False", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

from model import build_model  # noqa: E402
from core.spec import FeatureSpec  # noqa: E402
from training.amp import Amp  # noqa: E402

pytestmark = pytest.mark.gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA0 = torch.device("cuda", 0)


def _dali_loader():
    pytest.importorskip("nvidia.dali", reason="nvidia.dali is not installed (tools/gpu_check.sh installs it)")
    from loading.loader import DaliLoader
    return DaliLoader


def test_dali_cuda_matches_dali_cpu(train_shards):
    """The same graph with its log-mel stages on the GPU (cuFFT) gives the CPU graph's features."""
    DaliLoader = _dali_loader()
    shards, _, m = train_shards
    spec = FeatureSpec()
    feats = {}
    for name, dev in (("cpu", torch.device("cpu")), ("cuda", CUDA0)):
        out = {}
        for b in DaliLoader(shards, "train", spec, 4, train=False, device=dev, num_threads=2):
            assert b.x.device == dev and b.x.dtype == torch.float32
            assert b.y.device == dev and b.weight.device == dev
            assert b.x.shape[:3] == (4, 1, spec.n_mels)
            for i, (u, w) in enumerate(zip(b.uid.tolist(), b.weight.tolist())):
                if w:
                    valid = spec.valid_frames(int(b.n_samples[i]))
                    out[u] = b.x[i, 0, :, :valid].float().cpu()
        feats[name] = out
    assert sorted(feats["cpu"]) == sorted(s["uid"] for s in m["samples"] if s["split"] == "train")
    assert sorted(feats["cuda"]) == sorted(feats["cpu"])
    errs = torch.cat([((feats["cuda"][u] - feats["cpu"][u]).abs() * spec.norm_std).flatten() for u in feats["cpu"]])
    # dB after undoing the normalisation; the same bound as test_dali_matches_torchaudio on CPU.
    assert errs.max() < 0.02, f"max abs difference {errs.max():.4f} dB"
    print(f"DALI cuda vs cpu: max {errs.max():.5f} dB, median {errs.median():.6f} dB over {errs.numel()} bins")


@pytest.mark.parametrize("crops", [1, 3])
def test_dali_cuda_training_crops(train_shards, crops):
    """train=True on the GPU: shuffled 3 s crops of the right shape, labels on the device, every track once."""
    DaliLoader = _dali_loader()
    shards, _, m = train_shards
    spec = FeatureSpec()
    ld = DaliLoader(shards, "train", spec, 8, train=True, device=CUDA0, num_threads=2, crops=crops)
    counted: dict[int, float] = {}
    for b in ld:
        assert b.x.is_cuda and b.x.shape == (8 * crops, 1, spec.n_mels, spec.clip_frames)
        assert torch.isfinite(b.x).all()
        assert b.y.is_cuda and b.y.dtype == torch.int64
        for u, w in zip(b.uid.tolist(), b.weight.tolist()):
            counted[u] = counted.get(u, 0.0) + w
    assert counted == {s["uid"]: float(crops) for s in m["samples"] if s["split"] == "train"}


def test_dali_cuda_speed_perturbation(tmp_path):
    """--speed on the GPU (fn.audio_resample's CUDA backend): each crop's pitch moves within the range."""
    _dali_loader()
    from helpers import tone_pitch_ratios, tone_shards
    shards, f_of = tone_shards(tmp_path)
    moved = tone_pitch_ratios(shards, f_of, 0.2, device=CUDA0)
    assert all(0.8 - 0.03 < r < 1.2 + 0.03 for r in moved), moved
    assert max(moved) - min(moved) > 0.15, moved


def _train_steps(amp: Amp, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    model = build_model("resnet", 4).to(CUDA0).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(steps):
        with amp.autocast():
            logits = model(x.contiguous(memory_format=torch.channels_last))
        if amp.dtype is not None:
            assert logits.dtype == amp.dtype
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        amp.step(loss, opt, clip_norm=1.0)
        losses.append(float(loss))
    torch.cuda.synchronize()
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "no parameter changed"
    return losses


@pytest.fixture
def batch():
    spec = FeatureSpec()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, spec.n_mels, spec.clip_frames, generator=g).to(CUDA0)
    y = torch.randint(0, 4, (8,), generator=g).to(CUDA0)
    return x, y


def test_amp_create_on_cuda():
    amp = Amp.create(CUDA0, True)
    if torch.cuda.is_bf16_supported():
        assert (amp.dtype, amp.scaler, amp.name) == (torch.bfloat16, None, "bf16")
    else:
        assert amp.dtype == torch.float16 and amp.scaler is not None
    assert Amp.create(CUDA0, False).name == "fp32"


def test_amp_step_bf16(batch):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    _train_steps(Amp("cuda", torch.bfloat16, None), *batch)


def test_amp_step_fp16_gradscaler(batch):
    """The fp16 path of older GPUs (Amp.create picks it where bf16 is missing), forced here."""
    amp = Amp("cuda", torch.float16, torch.amp.GradScaler("cuda"))
    assert amp.name == "fp16+GradScaler"
    scale0 = amp.scaler.get_scale()
    _train_steps(amp, *batch, steps=4)
    assert amp.scaler.get_scale() > 0
    state = amp.state_dict()
    assert state and state["scale"] > 0 and scale0 > 0


def test_amp_step_on_dali_batch(train_shards):
    """One AMP step on a batch straight from the CUDA DaliLoader (no host round trip)."""
    DaliLoader = _dali_loader()
    shards, _, _ = train_shards
    b = next(iter(DaliLoader(shards, "train", FeatureSpec(), 8, train=True, device=CUDA0, num_threads=2)))
    _train_steps(Amp.create(CUDA0, True), b.x, b.y, steps=1)


def test_train_py_one_epoch_on_gpu(train_shards, tmp_path):
    """train.py end to end on the GPU (one process, --amp): channels_last, AMP, evaluation, checkpoints."""
    _dali_loader()
    shards, _, _ = train_shards
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--shards", shards, "--run-dir", str(run_dir),
                        "--epochs", "1", "--batch-size", "8", "--amp", "--threads", "2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "on cuda" in p.stdout, p.stdout[-2000:]
    assert (run_dir / "best.pt").exists() and (run_dir / "metrics.json").exists()


def test_train_step_never_waits_for_the_gpu(train_shards, tmp_path):
    """With torch's sync debug mode set to 'error' around each step's body (PT_CUDA_SYNC_DEBUG), any
    host-device sync there (an .item(), a float(), a pageable copy, a boolean-mask index) raises."""
    _dali_loader()
    shards, _, _ = train_shards
    for extra in ([], ["--mixup", "0.2", "--gain-db", "6", "--specaugment", "--eq-db", "6"]):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--shards", shards, "--run-dir",
                            str(tmp_path / f"r{len(extra)}"), "--epochs", "1", "--batch-size", "8", "--amp",
                            "--threads", "2", "--sync-every", "1000000", "--ckpt-every", "0", *extra],
                           capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env={**os.environ, "PT_CUDA_SYNC_DEBUG": "error"})
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
