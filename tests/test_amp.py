import pytest
import torch

from training.amp import Amp


def test_fp16_overflow_is_skipped_by_the_grad_scaler():
    """An fp16 step whose gradients overflow is skipped and the scale backs off; the next one applies."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = Amp("cpu", torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 4)
    with amp.autocast():
        loss = model(x).float().sum() * 1e38  # scaled by 2^16 this overflows to inf
    real_get_scale = torch.amp.GradScaler.get_scale
    torch.amp.GradScaler.get_scale = lambda self: pytest.fail("get_scale() in a step: a host sync")
    try:
        applied0 = amp.step(loss, opt)
    finally:
        torch.amp.GradScaler.get_scale = real_get_scale
    assert isinstance(applied0, torch.Tensor) and not bool(applied0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert amp.scaler.get_scale() < 2.0 ** 16
    applied = []
    for _ in range(8):  # the scaler halves its scale after each overflow until fp16 gradients fit
        with amp.autocast():
            loss = model(x).float().sum()
        applied.append(bool(amp.step(loss, opt)))
        if applied[-1]:
            break
    assert applied[-1] is True and amp.scaler.get_scale() <= 2.0 ** 12
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_amp_policy_by_device():
    assert Amp.create(torch.device("cpu"), True).name == "bf16"
    assert Amp.create(torch.device("cpu"), False).name == "fp32"
    assert Amp.create(torch.device("cpu"), True).scaler is None
