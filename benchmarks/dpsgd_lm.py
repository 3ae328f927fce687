"""Per-step time and peak memory of DP-SGD on the tiny GPT-2 of chapter 14, full and LoRA-only, in one run.

The model is :func:`privlab.experiments.language_model.build_model` at the chapter's ``book``
scale (2 layers, width 48, 4 heads; random weights, nothing downloaded; ``--scale paper``: GPT-2
small's shape, 12 layers, width 768, 12 heads, for a GPU) with ``--seq-len``
positions (default 128) and a ``--vocab`` of characters (default 96); batch ``--batch``
(default 32) of random ids; next-token loss (:func:`privlab.dpsgd.lm_loss`, the mean over each
sequence's predicted tokens); SGD; sigma = 1, C = 1. "lora" wraps the model with the chapter's
peft LoRA adapters (rank 8 on ``c_attn``, ``c_proj``, ``c_fc``): only the adapters are trainable.
"full-untied" is the same model built with ``tie_word_embeddings=False`` (the output layer gets its
own weights: vocab x width more parameters, printed): Opacus refuses GPT-2's tied
embeddings under ghost clipping ("Parameter tying is not supported with Ghost Clipping"), so this
is the variant on which Opacus ghost clipping runs, and its ratios are read against this variant's
own non-private step.

Opacus, as its 1.6 source does it (``opacus/utils/fast_gradient_clipping_utils.py``):
``DPLossFastGradientClipping`` is called on the flattened ``(B (T-1), V)`` logits with
``shape=(B, T-1, V)``, so it averages each sequence's token losses into a per-sample loss of shape
``(B,)`` (the same loss as :func:`privlab.dpsgd.lm_loss`). Its ``backward`` multiplies that tensor
by the ``(B,)`` clipping coefficients: a ``(B, 1)`` loss would broadcast to ``(B, B)`` and weight
every example by the sum of all coefficients, i.e. not clip per example. GPT-2 computes its position
ids as one ``(1, T)`` row broadcast over the batch; Opacus's embedding norm sampler needs one row per
example, so the Opacus step passes ``position_ids`` of shape ``(B, T)`` (the same positions, the
same outputs).

``--no-check`` skips the first step, which verifies on one float64 batch of the untied model, with
sigma = 0, that Opacus ghost clipping's per-example gradient norms and clipped gradient sum equal
privlab's (:func:`privlab.dpsgd.per_example_grad_norms`, :func:`privlab.dpsgd.clipped_grad_sum`),
and prints the largest relative differences (Opacus divides by ``norm + 1e-6``, privlab by the
norm: a relative difference of about ``1e-6 / norm`` in the clipped sum), and that the same
losses shaped ``(B, 1)`` make Opacus return the sum of the clip factors times the *unclipped* sum.
Measured (float64, batch 8, T = 32, all 8 examples clipped at C = 1): norms equal to 3.8e-16, the
clipped sums to 2.2e-7 (the 1e-6), the ``(B, 1)`` result equal to that product to 1.4e-15.

Rows, for each of "full", "lora" and "full-untied": a non-private step (the baseline of the ratios), privlab's
fast path, privlab's fast path as it was before issue 18 ("prev", loaded from git by
``benchmarks/dpsgd.py``), and Opacus 1.6 ghost clipping (``grad_sample_mode="ghost"``) where it
accepts the model (a refusal is printed as a result: it refuses "full", the tied GPT-2). Opacus has
no ghost-norm rule (nor a per-sample one) for ``transformers``' ``Conv1D``, which holds most of
GPT-2's weights: in "ghost" mode it computes those layers' per-sample gradients with functorch, so
its "full-untied" row is mostly not ghost clipping; on "lora" every trainable layer is on ghost norms.

Timing and memory exactly as in ``benchmarks/dpsgd.py`` (interleaved rounds; median wall-clock and
process-CPU ms per step; peak of torch's CPU allocator during one step). Benchmarks are not tests.

Usage: python benchmarks/dpsgd_lm.py [--batch 32] [--seq-len 128] [--threads 1] [--rounds 5] [--no-check] [--device cuda]
                                    [--scale book|paper]
                                    [--variants full lora full-untied] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from dpsgd import disable_heap_trimming, previous_fast, step_peak_bytes, time_steps  # noqa: E402


def tiny_gpt(vocab: int, seq_len: int, lora: bool, tied: bool = True, scale: str = "book") -> nn.Module:
    from dataclasses import replace

    from privlab.experiments.language_model import LM_SCALES, add_lora, build_model

    s = replace(LM_SCALES[scale], seq_len=seq_len)
    model = build_model(vocab, s, seed=0, tie_word_embeddings=tied)
    return add_lora(model, s.lora_rank) if lora else model


VARIANTS = {"full": dict(lora=False), "lora": dict(lora=True), "full-untied": dict(lora=False, tied=False)}


def opacus_ghost_parts(model, noise_multiplier=1.0, batch=32, max_grad_norm=1.0, device="cpu"):
    """Opacus 1.6 ghost clipping around ``model``: (module, optimizer, a function computing the wrapped loss)."""
    from opacus.grad_sample.utils import prepare_module
    from opacus.optimizers import get_optimizer_class
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    gsm = prepare_module(model, grad_sample_mode="ghost", batch_first=True, loss_reduction="mean",
                         max_grad_norm=max_grad_norm)
    opt = get_optimizer_class("flat", False, "ghost")(
        optimizer=torch.optim.SGD([p for p in gsm.parameters() if p.requires_grad], lr=0.01),
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, expected_batch_size=batch,
        loss_reduction="mean", generator=torch.Generator(device=device).manual_seed(0))
    criterion = DPLossFastGradientClipping(gsm, opt, nn.CrossEntropyLoss(), "mean")

    def loss(x, y):
        # one row of position ids per example: Opacus's embedding norms need the batch dimension
        positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1).contiguous()
        logits = gsm(x, position_ids=positions).logits[:, :-1]
        b, t, v = logits.shape
        out = criterion(logits.reshape(b * t, v), y[:, 1:].reshape(-1), shape=(b, t, v))
        assert out.loss_per_sample.shape == (b,), out.loss_per_sample.shape  # not (B, 1): see the docstring
        return out

    return gsm, opt, loss


def check_opacus_equals_privlab(vocab: int, seq_len: int, batch: int) -> dict:
    """Per-example norms and clipped sum of Opacus ghost clipping against privlab's, one float64 batch."""
    from privlab.dpsgd import clipped_grad_sum, lm_loss, per_example_grad_norms

    model = tiny_gpt(vocab, seq_len, lora=False, tied=False).double().train()
    x = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(1))
    ours_norms = per_example_grad_norms(model, lm_loss, x, x)
    ours_sum = clipped_grad_sum(model, lm_loss, x, x, max_grad_norm=1.0, method="fast")
    gsm, opt, loss = opacus_ghost_parts(copy.deepcopy(model), noise_multiplier=0.0, batch=batch)
    opt.zero_grad(set_to_none=True)
    loss(x, x).backward()
    theirs_norms = gsm.get_norm_sample()
    theirs_sum = [p.grad.clone() for p in gsm.parameters() if p.requires_grad]
    # the pitfall: the same per-sample losses as (B, 1) give (sum of the coefficients) x (unclipped sum)
    opt.zero_grad(set_to_none=True)
    wrapped = loss(x, x)
    wrapped.loss_per_sample = wrapped.loss_per_sample[:, None]
    wrapped.backward()
    coef = (1.0 / (theirs_norms + 1e-6)).clamp(max=1.0)
    unclipped = clipped_grad_sum(model, lm_loss, x, x, max_grad_norm=1e30, method="fast")
    column = [p.grad for p in gsm.parameters() if p.requires_grad]
    return dict(clipped_fraction=float((ours_norms > 1.0).double().mean()),
                norm_rel_diff=float(((theirs_norms - ours_norms).abs() / ours_norms).max()),
                sum_rel_diff=max(float((a - b).norm() / b.norm()) for a, b in zip(theirs_sum, ours_sum)),
                column_loss_rel_diff=max(float((a - coef.sum() * b).norm() / (coef.sum() * b).norm())
                                         for a, b in zip(column, unclipped)),
                parameters=len(theirs_sum))


def lm_loss_mean(out, y):
    from privlab.dpsgd import lm_loss

    return lm_loss(out, y).mean()


def nonprivate(model, args):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        lm_loss_mean(model(x), y).backward()
        opt.step()

    return step, lambda: opt.zero_grad(set_to_none=True)


def privlab(previous: bool):
    def factory(model, args):
        from privlab.dpsgd import DPOptimizer, clipping, lm_loss

        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        dp = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=float(args.batch),
                         generator=torch.Generator(device=args.device).manual_seed(0), method="fast")
        kernel = previous_fast() if previous else clipping.fast_norms_and_clipped_sum

        def step(x, y):
            current, clipping.fast_norms_and_clipped_sum = clipping.fast_norms_and_clipped_sum, kernel
            try:
                dp.step(model, lm_loss, x, y)
            finally:
                clipping.fast_norms_and_clipped_sum = current

        return step, lambda: opt.zero_grad(set_to_none=True)

    return factory


def opacus_ghost(model, args):
    _, opt, loss = opacus_ghost_parts(model, batch=args.batch, device=args.device)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss(x, y).backward()
        opt.step()

    return step, lambda: opt.zero_grad(set_to_none=True)


METHODS = {"non-private": nonprivate, "privlab fast": privlab(False), "privlab fast prev": privlab(True),
           "opacus ghost": opacus_ghost}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the check runs on the CPU either way)")
    parser.add_argument("--scale", default="book", choices=["book", "paper"],
                        help="the chapter's model at this scale: book (2 layers, width 48) or paper "
                             "(GPT-2 small's shape, 12 layers, width 768: for a GPU)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the check that Opacus ghost clipping's norms and clipped sum equal privlab's")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--no-heap-trim", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.no_heap_trim:
        disable_heap_trimming()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen).to(device)
    check = None
    if args.check:
        check = check_opacus_equals_privlab(args.vocab, min(args.seq_len, 32), 8)
        print(f"check, untied GPT-2, float64, batch 8, T = {min(args.seq_len, 32)}, C = 1 "
              f"({check['clipped_fraction']:.0%} clipped): Opacus ghost against privlab, largest relative "
              f"difference of the per-example norms {check['norm_rel_diff']:.1e}, of the clipped sum "
              f"{check['sum_rel_diff']:.1e} over {check['parameters']} parameter tensors; with the losses "
              f"shaped (B, 1) instead, Opacus returns (sum of the clip factors) x (the unclipped sum), "
              f"relative difference {check['column_loss_rel_diff']:.1e}: no per-example clipping")
    runs, failed, params = {}, {}, {}
    for variant in args.variants:
        base = tiny_gpt(args.vocab, args.seq_len, **VARIANTS[variant], scale=args.scale).to(device).train()
        params[variant] = sum(p.numel() for p in base.parameters() if p.requires_grad)
        for name in args.methods:
            key = f"{variant}: {name}"
            model = copy.deepcopy(base)
            try:
                step, release = METHODS[name](model, args)
                for _ in range(args.warmup):
                    step(x, x)
                runs[key] = dict(step=step, release=release, times=[])
            except Exception as exc:  # a library refusing this model is a result too
                failed[key] = f"{type(exc).__name__}: {exc}"[:200]
    for _ in range(args.rounds):
        for r in runs.values():
            r["times"].append(time_steps(r["step"], x, x, args.steps, device))
    results = {key: dict(ms_per_step=1e3 * statistics.median(t[0] for t in r["times"]),
                         cpu_ms_per_step=1e3 * statistics.median(t[1] for t in r["times"]),
                         peak_mb=step_peak_bytes(r["step"], r["release"], x, x, device) / 2**20)
               for key, r in runs.items()}
    print(f"DP-SGD step on the GPT-2 of chapter 14 ({args.scale} scale), batch {args.batch}, T = {args.seq_len}, "
          f"vocab {args.vocab}, torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU thread(s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine slows every row)")
    if "full-untied" in args.variants:
        print("full-untied: the same GPT-2 built with tie_word_embeddings=False, so that Opacus ghost clipping "
              "runs; its ratios are against its own non-private step")
    print(f"{'variant: method':28s} {'wall ms':>9s} {'x wall':>7s} {'CPU ms':>9s} {'x CPU':>7s} {'peak MB':>9s} {'x mem':>7s}")
    nan = float("nan")
    for key, r in results.items():
        base = results.get(key.split(":")[0] + ": non-private")
        r.update(time_ratio=r["ms_per_step"] / base["ms_per_step"] if base else nan,
                 cpu_time_ratio=r["cpu_ms_per_step"] / base["cpu_ms_per_step"] if base else nan,
                 memory_ratio=r["peak_mb"] / base["peak_mb"] if base and base["peak_mb"] else nan)
        print(f"{key:28s} {r['ms_per_step']:9.1f} {r['time_ratio']:7.2f} {r['cpu_ms_per_step']:9.1f} "
              f"{r['cpu_time_ratio']:7.2f} {r['peak_mb']:9.1f} {r['memory_ratio']:7.2f}")
    print("trainable parameters: " + ", ".join(f"{v} {n:,}" for v, n in params.items()))
    for key, why in failed.items():
        print(f"{key:28s} failed: {why}")
    out = dict(device=str(device), scale=args.scale, batch=args.batch, seq_len=args.seq_len, threads=torch.get_num_threads(), torch=torch.__version__,
               load_average=os.getloadavg()[0], check=check, trainable_parameters=params, results=results, failed=failed)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
