"""Device-side epoch sums and the non-finite watch (training/stats.py): same figures and the same
NaN report as reading every step on the host, with one read per --sync-every steps."""
import math

import pytest
import torch

from training.distributed import DistEnv
from training.stats import NonFiniteWatch, RunningSums

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_running_sums_equal_host_sums_and_round_trip_a_checkpoint():
    g = torch.Generator().manual_seed(0)
    sums, host = RunningSums(ENV.device), [0.0, 0.0, 0.0]
    for step in range(7):
        loss = torch.rand(6, generator=g) * 3
        correct = torch.rand(6, generator=g) > 0.5
        w = (torch.rand(6, generator=g) > 0.2).float()
        sums.add(loss, correct, w)
        host[0] += float((loss * w).sum())
        host[1] += float((correct * w).sum())
        host[2] += float(w.sum())
        if step == 3:  # a mid-epoch checkpoint and a resume from it
            sums.data_wait, sums.seconds = 0.5, 2.0
            sums = RunningSums(ENV.device, sums.snapshot(extra_seconds=1.0))
    assert sums.sums.tolist() == host  # the same float64 sums of the same float32 terms
    st = sums.reduce(ENV)
    assert st.loss == pytest.approx(host[0] / host[2]) and st.acc == pytest.approx(host[1] / host[2])
    assert st.samples == host[2] and st.seconds == 3.0 and st.data_wait == pytest.approx(0.5 / 3.0)


def test_watch_names_the_first_bad_step_and_its_batch_at_a_later_check():
    keys = {i: f"track{i}" for i in range(100)}
    w = NonFiniteWatch(ENV, keys)
    for step in range(3):
        w.note(torch.tensor(1.0), step, torch.tensor([step]))
    w.check(epoch=2)  # all finite: passes and forgets those batches
    assert not w.batches
    for step, value in zip(range(3, 9), [1.0, 2.0, math.nan, math.inf, 1.0, math.nan]):
        w.note(torch.tensor(value), step, torch.tensor([10 + step, 20 + step]))
    with pytest.raises(FloatingPointError) as e:
        w.check(epoch=2)
    assert str(e.value) == "non-finite loss at epoch 2 step 5 (rank 0 batch: track15, track25)"
