"""benchmarks/dpsgd.py's hand-written kernels compute the clipped sum privlab's fast path computes.

They are the floors the benchmark's kernel table compares privlab against; a wrong floor would make
the table's ratios wrong without anything failing, so each is checked against the fast path here
(float64, the same dropout draws).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from privlab.dpsgd import clip_factors
from privlab.dpsgd.fast import fast_norms_and_clipped_sum
from privlab.losses import bce_losses
from privlab.profiling import streamrec_mlp

_path = Path(__file__).resolve().parents[2] / "benchmarks" / "dpsgd.py"
_spec = importlib.util.spec_from_file_location("privlab_benchmark_dpsgd", _path)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("kernel", ["handwritten_kernel", "twopass_kernel", "remat_kernel"])
def test_hand_written_kernels_equal_the_fast_path(kernel):
    torch.manual_seed(0)
    model = streamrec_mlp().double().train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 40, generator=gen, dtype=torch.float64)  # C = 5 below: some examples clipped, some not
    y = torch.randint(0, 2, (256,), generator=gen).double()
    torch.manual_seed(5)
    ours = getattr(bench, kernel)(model, x, y, max_grad_norm=5.0)
    torch.manual_seed(5)  # the same dropout draws
    want, norms, _ = fast_norms_and_clipped_sum(model, bce_losses, (x,), y,
                                                lambda n: clip_factors(n, max_grad_norm=5.0))
    assert (norms > 5.0).any() and (norms < 5.0).any()
    params = list(model.parameters())
    if kernel == "handwritten_kernel":  # it returns the Linears' (weight, bias) first, then the LayerNorms'
        layers = [m for m in model if isinstance(m, torch.nn.Linear)] + \
                 [m for m in model if isinstance(m, torch.nn.LayerNorm)]
        by_param = {id(p): g for m, k in zip(layers, range(0, len(ours), 2))
                    for p, g in ((m.weight, ours[k]), (m.bias, ours[k + 1]))}
        ours = [by_param[id(p)] for p in params]
    assert len(ours) == len(want)
    for got, expected, p in zip(ours, want, params):
        torch.testing.assert_close(got.reshape(p.shape), expected, rtol=1e-10, atol=1e-12)


def test_the_rematerialising_kernel_refuses_a_forward_that_changes():
    torch.manual_seed(0)
    model = streamrec_mlp().double().train()
    x, y = torch.randn(64, 40, dtype=torch.float64), torch.randint(0, 2, (64,)).double()
    calls = []
    model[0].register_forward_hook(lambda m, a, out: calls.append(1) or out * (1 + 1e-3 * len(calls)))
    with pytest.raises(RuntimeError, match="re-run forward differs"):
        bench.remat_kernel(model, x, y)
