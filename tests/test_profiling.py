"""privlab.profiling: the timers and the peak-memory measure the chapters and benchmarks share."""

import pytest
import torch

from privlab import profiling


def test_timed_calls_warmup_then_reps_and_validates():
    calls = []
    assert profiling.timed(lambda: calls.append(1), 4, warmup=2) >= 0
    assert len(calls) == 6
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=str(bad)):
            profiling.timed(lambda: None, bad)
    with pytest.raises(ValueError, match="-1"):
        profiling.timed(lambda: None, 1, warmup=-1)


def test_time_steps_runs_each_step():
    seen = []
    wall, cpu = profiling.time_steps(lambda x, y: seen.append((x, y)), 1, 2, 3, torch.device("cpu"))
    assert seen == [(1, 2)] * 3 and wall >= 0 and cpu >= 0


def test_cpu_peak_counts_the_step_allocation_only():
    held = torch.empty(4_000_000, dtype=torch.uint8)  # live before the step: not counted
    peak = profiling.step_peak_bytes(lambda x, y: torch.empty(1_000_000, dtype=torch.uint8), lambda: None,
                                     None, None, "cpu")
    assert 1_000_000 <= peak < 4_000_000
    del held


@pytest.mark.parametrize("name", ["non-private", "privlab fast", "opacus ghost"])
def test_steps_train_the_streamrec_mlp(name):
    torch.manual_seed(0)
    net = profiling.streamrec_mlp().train()
    before = [p.detach().clone() for p in net.parameters()]
    step, release = profiling.STEPS[name](net, batch=16, device="cpu")
    g = torch.Generator().manual_seed(0)
    step(torch.randn(16, 40, generator=g), torch.randint(0, 2, (16,), generator=g).float())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    release()
