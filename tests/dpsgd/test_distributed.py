"""Distributed DP-SGD: 2 gloo processes on CPU give the single-process result (same seed) to 1e-5."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privlab.dpsgd import DPSGDConfig, train
from privlab.dpsgd.distributed import (
    DistributedDPOptimizer,
    local_slice,
    train_distributed,
)

WORKER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from privlab.dpsgd import DPSGDConfig
    from privlab.dpsgd.distributed import init_distributed, train_distributed
    sys.path.insert(0, {here!r})
    from _ddp_case import make_case
    torch.set_num_threads(1)
    rank, world, device = init_distributed("gloo")
    assert world == 2, world
    model, X, y, loss_fn, cfg = make_case()
    res = train_distributed(model, X, y, loss_fn=loss_fn, config=cfg, generator=torch.Generator().manual_seed(7))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.save({{"params": flat, "losses": res.losses, "steps": res.steps}}, {out!r} + f".{{rank}}")
    torch.distributed.destroy_process_group()
    """
)

CASE = textwrap.dedent(
    """
    import torch
    from torch import nn
    from privlab.dpsgd import DPSGDConfig

    def loss_fn(out, t):
        return nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), t, reduction="none")

    def make_case():
        g = torch.Generator().manual_seed(0)
        X = torch.randn(300, 6, generator=g)
        y = (X[:, 0] + 0.5 * torch.randn(300, generator=g) > 0).float()
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1))
        cfg = DPSGDConfig(noise_multiplier=1.1, max_grad_norm=0.5, batch_size=40, epochs=2, lr=0.2,
                          accountant=None, progress=False)
        return model, X, y, loss_fn, cfg
    """
)


def _launch_two_ranks(script):
    """Run both ranks against a TCPStore this test holds (so no other process can take its port
    between its choice and its bind); each rank joins it as a client (TORCHELASTIC_USE_AGENT_STORE,
    as under torchrun's agent)."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    procs = []
    try:
        for rank in range(2):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(store.port), TORCHELASTIC_USE_AGENT_STORE="True", OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen([sys.executable, str(script)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return procs, [p.communicate(timeout=240)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        del store


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "_ddp_case.py").write_text(CASE)
    return d


def _single_process(case_dir):
    sys.path.insert(0, str(case_dir))
    try:
        from _ddp_case import make_case
    finally:
        sys.path.remove(str(case_dir))
    return make_case()


def test_two_gloo_processes_equal_single_process(case_dir):
    out = str(case_dir / "params")
    script = case_dir / "worker.py"
    script.write_text(WORKER.format(here=str(case_dir), out=out))
    procs, outputs = _launch_two_ranks(script)
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    r0, r1 = (torch.load(f"{out}.{r}") for r in range(2))

    model, X, y, loss_fn, cfg = _single_process(case_dir)
    ref = train(model, X, y, loss_fn=loss_fn, config=cfg, generator=torch.Generator().manual_seed(7))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    # the replicas are identical (same summed gradient, same noise) ...
    torch.testing.assert_close(r0["params"], r1["params"], rtol=0, atol=0)
    # ... and equal the single-process run with the same seed, up to summation order
    np.testing.assert_allclose(r0["params"].numpy(), flat.numpy(), rtol=0, atol=1e-5)
    assert r0["steps"] == ref.steps
    np.testing.assert_allclose(r0["losses"], ref.losses, rtol=1e-5)
    # the noise is really there: the run differs from a noiseless one by far more than 1e-5
    model0, *_ = _single_process(case_dir)
    cfg0 = DPSGDConfig(noise_multiplier=0.0, max_grad_norm=0.5, batch_size=40, epochs=2, lr=0.2,
                       accountant=None, progress=False)
    train(model0, X, y, loss_fn=loss_fn, config=cfg0, generator=torch.Generator().manual_seed(7))
    flat0 = torch.cat([p.detach().reshape(-1) for p in model0.parameters()])
    assert (flat0 - flat).abs().max() > 1e-2


def test_ranks_with_different_seeds_are_refused(case_dir):
    """Each rank draws the global batch from its own generator: different seeds would let an example
    be summed twice. Both ranks refuse, naming what differs."""
    out = str(case_dir / "unused")
    script = case_dir / "worker_seeds.py"
    text = WORKER.format(here=str(case_dir), out=out)
    script.write_text(text.replace("torch.Generator().manual_seed(7)", "torch.Generator().manual_seed(7 + rank)"))
    procs, outputs = _launch_two_ranks(script)
    for p, text in zip(procs, outputs):
        assert p.returncode != 0 and "differs from rank 0 in its generator state" in text, text[-2000:]


def test_an_optimizer_factory_is_the_same_on_every_rank(case_dir):
    """A lambda's repr holds a per-process address: the ranks' consistency check compares its name."""
    out = str(case_dir / "factory")
    script = case_dir / "worker_factory.py"
    text = WORKER.format(here=str(case_dir), out=out).replace(
        "model, X, y, loss_fn, cfg = make_case()",
        "model, X, y, loss_fn, cfg = make_case()\n"
        "import dataclasses\n"
        "cfg = dataclasses.replace(cfg, optimizer=lambda p: torch.optim.SGD(p, lr=0.2))")
    script.write_text(text)
    procs, outputs = _launch_two_ranks(script)
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-2000:]


def test_single_process_equals_train():
    """Without a process group, train_distributed is train (same seed, same result)."""
    def loss_fn(out, t):
        return (out.squeeze(1) - t) ** 2

    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(60, 3, generator=g), torch.randn(60, generator=g)
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=10, epochs=2, accountant="rdp",
                      progress=False)
    torch.manual_seed(0)
    a = nn.Linear(3, 1)
    b = nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    ra = train(a, X, y, loss_fn=loss_fn, config=cfg, generator=torch.Generator().manual_seed(5))
    rb = train_distributed(b, X, y, loss_fn=loss_fn, config=cfg, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-7)
    assert ra.epsilon == rb.epsilon and ra.steps == rb.steps


def test_reduce_is_identity_without_group():
    opt = DistributedDPOptimizer(torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1), noise_multiplier=0.0,
                                 max_grad_norm=1.0, expected_batch_size=1.0)
    g = [torch.ones(2)]
    assert opt.reduce(g) is g


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 50), world=st.integers(1, 5))
def test_local_slices_partition_the_batch(n, world):
    idx = torch.arange(n) * 3
    parts = [local_slice(idx, rank=r, world_size=world) for r in range(world)]
    assert torch.equal(torch.cat(parts), idx)
    assert max(p.numel() for p in parts) - min(p.numel() for p in parts) <= 1


@given(rank=st.integers(-3, 10))
def test_bad_rank_rejected(rank):
    if 0 <= rank < 2:
        return
    with pytest.raises(ValueError, match="rank"):
        local_slice(torch.arange(4), rank=rank, world_size=2)


def test_bad_input_rejected():
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=2, progress=False, record_grad_norms=True)
    with pytest.raises(ValueError, match="record_grad_norms"):
        train_distributed(nn.Linear(2, 1), torch.zeros(4, 2), torch.zeros(4), loss_fn=lambda o, t: o,
                          config=cfg, generator=torch.Generator())
    cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="generator"):
        train_distributed(nn.Linear(2, 1), torch.zeros(4, 2), torch.zeros(4), loss_fn=lambda o, t: o,
                          config=cfg, generator=0)


def test_cli_help(capsys):
    from privlab.dpsgd.distributed import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "torchrun" in capsys.readouterr().out
