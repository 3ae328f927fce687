"""Per-step time and peak memory of DP-SGD on the tiny GPT-2 of chapter 14, full and LoRA-only, in one run.

The model is :func:`privlab.experiments.language_model.build_model` at the chapter's ``book``
scale (2 layers, width 96, 4 heads; random weights, nothing downloaded) with ``--seq-len``
positions (default 128) and a ``--vocab`` of characters (default 96); batch ``--batch``
(default 32) of random ids; next-token loss (:func:`privlab.dpsgd.lm_loss`, the mean over each
sequence's predicted tokens); SGD; sigma = 1, C = 1. "lora" wraps the model with the chapter's
peft LoRA adapters (rank 8 on ``c_attn``, ``c_proj``, ``c_fc``): only the adapters are trainable.

Rows, for each of "full" and "lora": a non-private step (the baseline of the ratios), privlab's
fast path, privlab's fast path as it was before issue 18 ("prev", loaded from git by
``benchmarks/dpsgd.py``), and Opacus 1.6 ghost clipping (``grad_sample_mode="ghost"``) where it
accepts the model (a refusal is printed as a result).

Timing and memory exactly as in ``benchmarks/dpsgd.py`` (interleaved rounds; median wall-clock and
process-CPU ms per step; peak of torch's CPU allocator during one step). Benchmarks are not tests.

Usage: python benchmarks/dpsgd_lm.py [--batch 32] [--seq-len 128] [--threads 1] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import statistics
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from dpsgd import disable_heap_trimming, previous_fast, step_peak_bytes, time_steps  # noqa: E402


def tiny_gpt(vocab: int, seq_len: int, lora: bool) -> nn.Module:
    from dataclasses import replace

    from privlab.experiments.language_model import LM_SCALES, _lora, build_model

    s = replace(LM_SCALES["book"], seq_len=seq_len)
    model = build_model(vocab, s, seed=0)
    return _lora(model, s.lora_rank) if lora else model


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
                         generator=torch.Generator().manual_seed(0), method="fast")
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
    from opacus.grad_sample.utils import prepare_module
    from opacus.optimizers import get_optimizer_class
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    gsm = prepare_module(model, grad_sample_mode="ghost", batch_first=True, loss_reduction="mean", max_grad_norm=1.0)
    opt = get_optimizer_class("flat", False, "ghost")(
        optimizer=torch.optim.SGD([p for p in gsm.parameters() if p.requires_grad], lr=0.01), noise_multiplier=1.0,
        max_grad_norm=1.0, expected_batch_size=args.batch, loss_reduction="mean",
        generator=torch.Generator().manual_seed(0))
    criterion = DPLossFastGradientClipping(gsm, opt, nn.CrossEntropyLoss(), "mean")

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        logits = gsm(x).logits[:, :-1]
        b, t, v = logits.shape
        criterion(logits.reshape(b * t, v), y[:, 1:].reshape(-1), shape=(b, t, v)).backward()
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
    parser.add_argument("--variants", nargs="*", default=["full", "lora"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--no-heap-trim", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.no_heap_trim:
        disable_heap_trimming()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen)
    runs, failed = {}, {}
    for variant in args.variants:
        base = tiny_gpt(args.vocab, args.seq_len, variant == "lora").train()
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
    print(f"DP-SGD step on the tiny GPT-2 of chapter 14 (book scale), batch {args.batch}, T = {args.seq_len}, "
          f"vocab {args.vocab}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    print(f"{'variant: method':28s} {'wall ms':>9s} {'x wall':>7s} {'CPU ms':>9s} {'x CPU':>7s} {'peak MB':>9s} {'x mem':>7s}")
    nan = float("nan")
    for key, r in results.items():
        base = results.get(key.split(":")[0] + ": non-private")
        r.update(time_ratio=r["ms_per_step"] / base["ms_per_step"] if base else nan,
                 cpu_time_ratio=r["cpu_ms_per_step"] / base["cpu_ms_per_step"] if base else nan,
                 memory_ratio=r["peak_mb"] / base["peak_mb"] if base and base["peak_mb"] else nan)
        print(f"{key:28s} {r['ms_per_step']:9.1f} {r['time_ratio']:7.2f} {r['cpu_ms_per_step']:9.1f} "
              f"{r['cpu_time_ratio']:7.2f} {r['peak_mb']:9.1f} {r['memory_ratio']:7.2f}")
    for key, why in failed.items():
        print(f"{key:28s} failed: {why}")
    out = dict(batch=args.batch, seq_len=args.seq_len, threads=torch.get_num_threads(), torch=torch.__version__,
               results=results, failed=failed)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
