r"""Tables, figures and the results file of the StreamRec sweep (:func:`privlab.experiments.streamrec.run_sweep`).

Relative degradation of a metric :math:`m` at :math:`\varepsilon` is
:math:`(m_\varepsilon - m_\infty)/m_\infty` (negative: worse than non-private).

Used in: chapter 13.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from privlab.provenance import write_json

from .streamrec import METRICS, epsilon_label, threshold_table

__all__ = ["aggregate_table", "clip_table", "degradation_table", "save_figures", "segment_recall", "write_results"]


def aggregate_table(runs: list[dict]) -> pd.DataFrame:
    """One row per run: sigma, PLD and RDP epsilon, the five metrics, loss, convergence epoch, clipping, time."""
    rows = {}
    for r in runs:
        rows[epsilon_label(r["epsilon_target"])] = {
            "sigma": r["sigma"], "eps_pld": r["epsilon_pld"], "eps_rdp": r["epsilon_rdp"],
            **r["metrics"], "final_loss": r["final_loss"], "conv_epoch": r["convergence_epoch"],
            "fraction_clipped": r.get("fraction_clipped"), "mean_logit": r.get("mean_logit"),
            "seconds": r["wall_seconds"], "hours": r["hours"],
        }  # fmt: skip
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "epsilon"
    return df


def degradation_table(runs: list[dict]) -> pd.DataFrame:
    """Relative change of each metric against the non-private run (needs an ``inf`` run)."""
    agg = aggregate_table(runs)
    if "inf" not in agg.index:
        raise ValueError(f"degradation needs the non-private run (epsilon inf), got {list(agg.index)}")
    metrics = agg[list(METRICS)]
    return (metrics - metrics.loc["inf"]) / metrics.loc["inf"]


def segment_recall(runs: list[dict], *, metric: str = "recall@20") -> pd.DataFrame:
    """Groups (overall, segments, markets) as rows, one column per run, the given metric."""
    cols = {}
    for r in runs:
        cols[epsilon_label(r["epsilon_target"])] = {"overall": r["metrics"][metric],
                                             **{g: v[metric] for g, v in r["segments"].items()}}  # fmt: skip
    return pd.DataFrame(cols)


def clip_table(clip_runs: list[dict], *, baseline_recall: float) -> pd.DataFrame:
    r"""The clip-norm study, one row per :math:`C`, each row read from its own run.

    Columns: ``C``, ``epochs``, ``sigma``, ``recall@20``, ``auc``, ``median norm`` and
    ``fraction clipped`` (the run's own per-example norms, the fraction above the run's own :math:`C`),
    ``loss vs non-private`` (:math:`1 - \mathrm{Recall@20} / \mathrm{baseline}`).

    >>> runs = [{"max_grad_norm": c, "epochs": 1, "sigma": 1.0, "metrics": {"recall@20": r, "auc": 0.7},
    ...          "grad_norms": {"median": 2.0, "fraction_clipped": f}} for c, r, f in [(0.1, 0.1, 0.99), (5.0, 0.2, 0.2)]]
    >>> clip_table(runs, baseline_recall=0.25)["fraction clipped"].tolist()
    [0.99, 0.2]
    """
    rows = []
    for r in clip_runs:
        gn = r.get("grad_norms") or {}
        rows.append({"C": r["max_grad_norm"], "epochs": r["epochs"], "sigma": r["sigma"],
                     "recall@20": r["metrics"]["recall@20"], "auc": r["metrics"]["auc"],
                     "median norm": gn.get("median", float("nan")),
                     "fraction clipped": gn.get("fraction_clipped", float("nan")),
                     "loss vs non-private": 1 - r["metrics"]["recall@20"] / baseline_recall})  # fmt: skip
    return pd.DataFrame(rows)


def write_results(results: dict, out_dir) -> Path:
    """Write ``out_dir/results.json`` (inf as ``"inf"``, NaN as ``null``); returns the path."""
    return write_json(results, Path(out_dir) / "results.json")


def save_figures(results: dict, out_dir) -> list[Path]:
    """PNG figures: metrics against epsilon, segment Recall@20 with the threshold, loss curves."""
    import matplotlib  # imported here: the Agg backend is chosen before pyplot (and privlab.plotting) load

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from privlab.plotting import figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    agg = aggregate_table(runs)
    paths = []
    finite = [e for e in agg.index if e != "inf"]
    fig, ax = figure(title="StreamRec: utility against privacy", xlabel="target epsilon (log scale)",
                     ylabel="metric value")  # fmt: skip
    for m in METRICS:
        x = [float(e) for e in finite]
        line = ax.plot(x, agg.loc[finite, m], marker="o", label=m)[0]
        if "inf" in agg.index:
            ax.axhline(agg.loc["inf", m], color=line.get_color(), ls=":", lw=1)
    if finite:
        ax.set_xscale("log")
    ax.legend(title="dotted: non-private", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    paths.append(out / "utility_vs_epsilon.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    seg = segment_recall(runs)
    fig, ax = figure(title="Recall@20 per group", xlabel="group", ylabel="Recall@20", figsize=(9, 4))
    seg.plot.bar(ax=ax, rot=30)
    if "inf" in seg.columns:
        thr = threshold_table(seg)["threshold"]
        ax.scatter(range(len(thr)), thr, marker="_", s=400, color="k", zorder=3, label="90% of non-private")
    ax.legend(title="epsilon", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    paths.append(out / "segment_recall.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = figure(title="Training loss per epoch", xlabel="epoch", ylabel="mean BCE loss")
    for r in runs:
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], marker="o",
                label=f"eps {epsilon_label(r['epsilon_target'])}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    paths.append(out / "loss_curves.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


