"""Speed and tightness of privlab's accountants against Opacus and dp_accounting.

Prints, in one run, for two DP-SGD configurations

  (a) q = 0.01, sigma = 1, 10,000 steps, delta = 1e-5;
  (b) StreamRec: N = 5e7, batch 4096 (q = 8.192e-5), 15 epochs (183,105 steps), delta = 1e-7;

the time of one epsilon query and of one noise calibration for privlab's RDP and
PLD accountants, Opacus's RDP and PRV accountants and dp_accounting's PLD
accountant, the ratios ours / baseline, and privlab's PLD epsilon relative to
dp_accounting's PLD on a fine grid. Benchmarks never fail: a baseline that
errors is reported as such.

    python benchmarks/accounting.py            # everything (Opacus PRV calibration takes minutes)
    python benchmarks/accounting.py --quick    # one repeat, no Opacus PRV calibration, coarser fine grid

Timings are wall-clock medians; on a machine shared with other jobs they vary,
so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
import warnings

CONFIGS = {
    "a": dict(sample_rate=0.01, noise_multiplier=1.0, steps=10_000, delta=1e-5, target=2.0, fine_grid=3e-5),
    "b": dict(sample_rate=4096 / 50e6, noise_multiplier=0.879, steps=183_105, delta=1e-7, target=1.0,
              fine_grid=1e-5),
}


def timed(fn, repeats: int):
    """(result of the last call, median seconds); an exception becomes (exception, nan)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
            return exc, math.nan
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def methods(cfg: dict, args):
    """name -> (epsilon query, calibration or None)."""
    from privlab.accounting import calibrate_noise, dpsgd_epsilon
    from privlab.accounting.rdp import subsampled_gaussian_rdp as rdp_curve

    q, s, k, d, target = cfg["sample_rate"], cfg["noise_multiplier"], cfg["steps"], cfg["delta"], cfg["target"]
    out = {}
    for acc in ("rdp", "pld"):  # the RDP curve cache is cleared so that every repeat pays in full
        out[f"privlab {acc.upper()}"] = (
            lambda acc=acc: rdp_curve.cache_clear() or dpsgd_epsilon(
                noise_multiplier=s, sample_rate=q, steps=k, delta=d, accountant=acc),
            lambda acc=acc: rdp_curve.cache_clear() or calibrate_noise(
                target_epsilon=target, delta=d, sample_rate=q, steps=k, accountant=acc))
    try:
        from opacus.accountants import PRVAccountant, RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier

        def opacus_eps(cls):
            acc = cls()
            acc.history = [(s, q, k)]
            return acc.get_epsilon(delta=d)

        for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
            calib = (lambda name=name: get_noise_multiplier(target_epsilon=target, target_delta=d, sample_rate=q,
                                                            steps=k, accountant=name))
            skip = name == "prv" and (args.skip_prv_calibration or args.quick)
            out[f"Opacus {name.upper()}"] = (lambda cls=cls: opacus_eps(cls), None if skip else calib)
    except ImportError as exc:  # pragma: no cover
        print(f"  (Opacus not available: {exc})")
    try:
        import dp_accounting
        from dp_accounting.pld import PLDAccountant

        def dp_eps(grid=1e-4, sigma=s):
            acc = PLDAccountant(value_discretization_interval=grid)
            acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), k)
            return acc.get_epsilon(d)

        def dp_calibrate():
            return dp_accounting.calibrate_dp_mechanism(
                lambda: PLDAccountant(value_discretization_interval=1e-4),
                lambda sigma: dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), k),
                target, d, bracket_interval=dp_accounting.ExplicitBracketInterval(0.2, 5.0), tol=5e-4)

        out["dp_accounting PLD (grid 1e-4)"] = (dp_eps, dp_calibrate)
        grid = cfg["fine_grid"] * (3 if args.quick else 1)
        out[f"dp_accounting PLD (fine grid {grid:g})"] = (lambda grid=grid: dp_eps(grid), None)
    except ImportError as exc:  # pragma: no cover
        print(f"  (dp_accounting not available: {exc})")
    return out


def run_config(key: str, args) -> None:
    cfg = CONFIGS[key]
    print(f"\nconfiguration ({key}): q = {cfg['sample_rate']:.6g}, sigma = {cfg['noise_multiplier']}, "
          f"steps = {cfg['steps']:,}, delta = {cfg['delta']:g}; calibration target epsilon = {cfg['target']}")
    print(f"  {'method':34s} {'epsilon':>10s} {'query [s]':>10s} {'sigma*':>9s} {'calibration [s]':>16s}")
    rows = {}
    for name, (query, calib) in methods(cfg, args).items():
        slow = name.startswith(("Opacus PRV", "dp_accounting"))
        eps, t_eps = timed(query, 1 if (slow or args.quick) else args.repeats)
        sigma, t_cal = (None, math.nan) if calib is None else timed(calib, 1 if (slow or args.quick) else
                                                                    max(1, args.repeats // 2))
        rows[name] = (eps, t_eps, sigma, t_cal)
        show = lambda v: f"{v:.6f}" if isinstance(v, float) else ("-" if v is None else type(v).__name__)  # noqa
        print(f"  {name:34s} {show(eps):>10s} {t_eps:10.4f} {show(sigma):>9s} {t_cal:16.3f}", flush=True)

    def ratio(a: str, b: str, i: int) -> str:
        x, y = rows.get(a, (None,) * 4)[i], rows.get(b, (None,) * 4)[i]
        return f"{x / y:.3g}" if isinstance(x, float) and isinstance(y, float) and y > 0 else "n/a"

    print("  ratios (time, ours / baseline; < 1 means privlab is faster):")
    for ours, base in (("privlab RDP", "Opacus RDP"), ("privlab PLD", "dp_accounting PLD (grid 1e-4)"),
                       ("privlab PLD", "Opacus PRV")):
        print(f"    {ours} / {base}: query {ratio(ours, base, 1)}, calibration {ratio(ours, base, 3)}")
    fine = next((n for n in rows if n.startswith("dp_accounting PLD (fine")), None)
    ours = rows.get("privlab PLD", (None,))[0]
    if fine and isinstance(ours, float) and isinstance(rows[fine][0], float):
        rel = ours / rows[fine][0] - 1
        print(f"  privlab PLD epsilon vs {fine}: {ours:.6f} vs {rows[fine][0]:.6f} ({rel:+.3%}; target: within 1%)")
    rdp = rows.get("privlab RDP", (None,))[0]
    if isinstance(rdp, float) and isinstance(ours, float):
        print(f"  RDP / PLD epsilon: {rdp / ours:.2f}x looser")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, no Opacus PRV calibration, a 3x coarser 'fine' grid")
    parser.add_argument("--skip-prv-calibration", action="store_true",
                        help="skip Opacus's PRV calibration (15-50 s on configuration b)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast measurements (median)")
    parser.add_argument("--configs", default="ab", help="which configurations to run: a, b or ab")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print(f"privlab accounting benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPU cores, "
          f"load average {load[0]:.1f} (timings are wall clock; other jobs on the machine inflate them)")
    for key in args.configs:
        if key in CONFIGS:
            run_config(key, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
