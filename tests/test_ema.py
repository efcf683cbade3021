"""training/ema.py: the weight average against a direct computation, its warm-up, buffers copied,
its state round-trip."""
import pytest
import torch

from model import build_model
from training.ema import ModelEMA


def test_the_average_follows_the_formula_and_buffers_are_copied():
    torch.manual_seed(0)
    model = build_model("tiny", 3)
    ema = ModelEMA(model, decay=0.9)
    want = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 30):
        model.train()
        loss = model(torch.randn(4, 1, 64, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = min(0.9, (1 + step) / (10 + step))
        want = [d * w + (1 - d) * p.detach() for w, p in zip(want, model.parameters())]
        ema.update(model)
    for w, e in zip(want, ema.module.parameters()):
        torch.testing.assert_close(e, w, rtol=1e-5, atol=1e-6)
    for b_ema, b in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(b_ema, b)  # BatchNorm statistics: the model's, not averaged
    assert ema.current_decay() == pytest.approx(30 / 39) and not any(p.requires_grad for p in ema.module.parameters())
    again = ModelEMA(build_model("tiny", 3), decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 29
    for a, b in zip(again.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_a_decay_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="must lie in"):
        ModelEMA(build_model("tiny", 2), decay=1.0)
