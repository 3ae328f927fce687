r"""The DP StreamRec case study: the epsilon sweep, the batch-size, clip-norm and accounting studies.

The published configuration (COURSE.md, "Recurring example"): the
:class:`privlab.models.StreamRecClickPredictor` trained with DP-SGD (Poisson
sampling, :math:`C = 1`, Adam, lr :math:`5\cdot10^{-4}`, batch 4096, 15
epochs, :math:`\delta = 10^{-7}`) for :math:`\varepsilon \in \{1, 3, 8, \infty\}`.
For each target the noise multiplier is the smallest meeting it under the PLD
accountant, :math:`\sigma = \min\{\sigma : \varepsilon_{\mathrm{PLD}}(\sigma, q, T, \delta) \le \varepsilon\}`,
with :math:`q = b/N`, :math:`T = \mathrm{epochs}\cdot\mathrm{round}(1/q)`; the
RDP epsilon of the same :math:`\sigma` is reported beside it.

**Scale profiles** (:func:`streamrec_profile`). The paper *and book* profiles
run the published configuration (batch 4096, 15 epochs, :math:`C = 1`, Adam
lr :math:`5\cdot10^{-4}`); paper on 50 million rows with :math:`\delta = 10^{-7}`,
book on 200,000 interactions with :math:`\delta = 1/N`. The smoke profile
(the whole chapter in about 60 s) shrinks what must shrink: 20,000
interactions, a batch of 1024 (its 16,000 training rows would give 4 steps an
epoch at 4096), 2 epochs and lr :math:`2\cdot10^{-3}`, because a hundred Adam
steps at :math:`5\cdot10^{-4}` stop far from convergence. The batch study
compares 512 with 4096 (256 with 1024 at smoke scale) and the clip-norm
study :math:`C \in \{0.1, 0.5, 1, 2, 5\}` (0.1 tests the published "C = 0.1
lost 60%"; only 0.1, 1, 5 at smoke scale), both at :math:`\varepsilon = 3`
for ``study_epochs`` epochs (5 at book scale, to fit its time budget; else the
sweep's). Their rows compare with each other, not with the sweep; the batch
study's large-batch run is the clip study's :math:`C = 1` run, which is the
sweep's own run where ``study_epochs`` equals the sweep's epochs. The seed
replicates repeat the sweep's :math:`\varepsilon = 3` run with other seeds.

**Threads.** The model is small (16,065 parameters): torch's intra-op threads
gain little on its matrix products and, on shared cores, spin against other
processes (a batch-4096 step measured 10 times slower with 2 threads than with
1 on a loaded 2-core machine), so :func:`run_sweep` uses one thread by default
and restores torch's setting afterwards (:func:`torch_threads`).

**Per run** (:func:`run_one`): every metric of :func:`privlab.metrics.evaluate`
overall and per segment and market, the loss per epoch and the final loss, the
*convergence epoch* (:func:`convergence_epoch`: the first epoch from which
the training loss stays within 1% of its final value), the wall-clock training
seconds, and the gradient-norm profile of the unclipped per-example norms seen
in training (median, p95, fraction above :math:`C`).

**Business threshold** (:func:`threshold_table`): a model passes in a group
when its Recall@20 is at least 90% of the non-private model's in that group.

Used in: chapter 12.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch

from privlab._validate import (
    check_epsilon,
    check_int,
    check_positive,
    check_probability,
)
from privlab.config import Scale, get_scale, make_rng, make_torch_generator, spawn_seeds

__all__ = [
    "METRICS", "StreamRecProfile", "accounting_study", "calibrate_sigma", "clip_study", "convergence_epoch",
    "run_one", "run_sweep", "streamrec_profile", "threshold_table", "torch_threads",
]  # fmt: skip

METRICS = ("accuracy", "auc", "f1", "recall@20", "ndcg@20")
ACCOUNTING_METHODS = ("basic", "advanced", "rdp", "pld")


@dataclass(frozen=True)
class StreamRecProfile:
    """Sizes and hyperparameters of the case study at one scale (see the module docstring)."""

    scale: str
    n_interactions: int
    n_users: int
    n_items: int
    n_eval_users: int
    batch_size: int
    small_batch_size: int  # the batch study: small vs batch_size at epsilon 3
    epochs: int
    lr: float = 5e-4
    max_grad_norm: float = 1.0
    clip_norms: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0)
    delta: float | None = None  # None: 1/N
    seed_replicates: int = 2  # extra seeds of the epsilon-3 run, for the seed variation
    study_epsilon: float = 3.0
    study_epochs: int | None = None  # epochs of the batch and clip studies; None: the sweep's epochs

    def delta_for(self, n: int) -> float:
        """The profile's delta, or :math:`1/N`."""
        return self.delta if self.delta is not None else 1.0 / n


def streamrec_profile(scale: str | Scale | None = None, **overrides) -> StreamRecProfile:
    """The profile of a scale (``$PRIVLAB_SCALE`` by default), with optional overrides.

    >>> p = streamrec_profile("paper")
    >>> (p.n_interactions, p.batch_size, p.epochs, p.lr, p.delta)
    (50000000, 4096, 15, 0.0005, 1e-07)
    >>> b = streamrec_profile("book")
    >>> (b.batch_size, b.epochs, b.lr, b.max_grad_norm, b.study_epochs)
    (4096, 15, 0.0005, 1.0, 5)
    >>> streamrec_profile("smoke").batch_size
    1024
    """
    s = get_scale(scale)
    base = StreamRecProfile(
        scale=s.name,
        n_interactions=s.pick(smoke=20_000, book=200_000, paper=50_000_000),
        n_users=s.pick(smoke=1_000, book=10_000, paper=1_000_000),
        n_items=s.pick(smoke=300, book=2_000, paper=50_000),
        n_eval_users=s.pick(smoke=300, book=2_000, paper=50_000),
        batch_size=s.pick(smoke=1024, book=4096, paper=4096),
        small_batch_size=s.pick(smoke=256, book=512, paper=512),
        epochs=s.pick(smoke=2, book=15, paper=15),
        lr=s.pick(smoke=2e-3, book=5e-4, paper=5e-4),
        study_epochs=s.pick(smoke=None, book=5, paper=None),
        delta=s.pick(smoke=None, book=None, paper=1e-7),
        seed_replicates=s.pick(smoke=2, book=2, paper=0),
        clip_norms=s.pick(smoke=(0.1, 1.0, 5.0), book=(0.1, 0.5, 1.0, 2.0, 5.0), paper=(0.1, 0.5, 1.0, 2.0, 5.0)),
    )
    return replace(base, **overrides)


def convergence_epoch(losses: Sequence[float], *, rel_tol: float = 0.01) -> int:
    r"""First epoch (1-based) from which the loss stays within ``rel_tol`` of the final loss.

    .. math:: k^\star = \min\{k : |L_j - L_E| \le \mathrm{rel\_tol}\cdot|L_E| \ \forall j \ge k\}

    >>> convergence_epoch([1.0, 0.6, 0.502, 0.5])
    3
    >>> convergence_epoch([0.5, 0.7, 0.5])
    3

    Raises:
        ValueError: empty or non-finite losses, ``rel_tol`` not positive.
    """
    arr = np.asarray(losses, dtype=float)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"losses must be a non-empty sequence of finite numbers, got {list(losses)!r}")
    check_positive("rel_tol", rel_tol)
    outside = np.abs(arr - arr[-1]) > rel_tol * abs(arr[-1])
    idx = np.flatnonzero(outside)
    return int(idx[-1] + 2) if idx.size else 1


def threshold_table(recall: pd.DataFrame, *, baseline: str = "inf", fraction: float = 0.9) -> pd.DataFrame:
    r"""Which models meet the business threshold: Recall@20 :math:`\ge` ``fraction`` :math:`\times` baseline.

    Args:
        recall: groups as rows, models (columns, e.g. ``"1"``, ``"3"``, ``"inf"``) as Recall@20 values.
        baseline: the column of the non-private model.
        fraction: the threshold as a fraction of the baseline (0.9: no more than 10% below).

    Returns:
        Columns ``threshold`` and, per model, ``<model>`` (the recall), ``<model>_ratio`` and ``<model>_pass``.

    >>> df = pd.DataFrame({"1": [0.15, 0.2], "inf": [0.2, 0.2]}, index=["overall", "new"])
    >>> threshold_table(df)[["threshold", "1_pass"]].values.tolist()
    [[0.18000000000000002, False], [0.18000000000000002, True]]
    """
    check_probability("fraction", fraction)
    if baseline not in recall.columns:
        raise ValueError(f"baseline column {baseline!r} not in {list(recall.columns)}")
    out = pd.DataFrame({"threshold": fraction * recall[baseline]}, index=recall.index)
    for col in recall.columns:
        if col == baseline:
            continue
        out[col] = recall[col]
        out[f"{col}_ratio"] = recall[col] / recall[baseline]
        out[f"{col}_pass"] = recall[col] >= out["threshold"] - 1e-12  # exactly at the threshold passes
    return out


def calibrate_sigma(epsilon: float, *, sample_rate: float, steps: int, delta: float) -> dict[str, float]:
    """PLD-calibrated noise multiplier for a target epsilon, with the PLD and RDP epsilon it spends.

    ``epsilon = inf`` gives sigma 0 (the non-private baseline).
    """
    from privlab.accounting import calibrate_noise
    from privlab.accounting import epsilon as eps_of

    epsilon = check_epsilon(epsilon, allow_inf=True)
    if math.isinf(epsilon):
        return {"sigma": 0.0, "epsilon_pld": math.inf, "epsilon_rdp": math.inf}
    sigma = calibrate_noise(target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=steps,
                            accountant="pld")  # fmt: skip
    run = {"noise_multiplier": sigma, "sample_rate": sample_rate, "steps": steps, "delta": delta}
    return {"sigma": float(sigma), "epsilon_pld": float(eps_of(**run, accountant="pld")),
            "epsilon_rdp": float(eps_of(**run, accountant="rdp"))}  # fmt: skip


def accounting_study(*, sigma: float, sample_rate: float, steps: int, delta: float) -> dict[str, float]:
    """Epsilon of one and the same training under basic, advanced, RDP and PLD accounting."""
    from privlab.accounting import epsilon as eps_of

    return {m: float(eps_of(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta,
                            accountant=m)) for m in ACCOUNTING_METHODS}  # fmt: skip


def _steps(n: int, batch_size: int, epochs: int) -> tuple[float, int]:
    q = batch_size / n
    return q, epochs * max(1, round(1 / q))


def run_one(data, *, epsilon: float, profile: StreamRecProfile, seed: int, batch_size: int | None = None,
            max_grad_norm: float | None = None, progress: bool = True, device=None) -> dict:  # fmt: skip
    """Train and evaluate one model of the sweep; returns its record (see the module docstring).

    Args:
        data: a :class:`privlab.datasets.StreamRecData`.
        epsilon: target epsilon (``inf``: non-private, no clipping, no noise).
        profile: a :class:`StreamRecProfile`.
        seed: the run's seed (initialisation, sampling, noise, dropout).
        batch_size, max_grad_norm: overrides of the profile's (for the studies).
        progress: a tqdm bar for the run.
        device: torch device (``None``: CUDA if available, else CPU).
    """
    from privlab.config import get_device
    from privlab.dpsgd import DPSGDConfig, summarize_grad_norms, train
    from privlab.metrics import evaluate

    epsilon = check_epsilon(epsilon, allow_inf=True)
    b = check_int("batch_size", batch_size if batch_size is not None else profile.batch_size)
    c = check_positive("max_grad_norm", max_grad_norm if max_grad_norm is not None else profile.max_grad_norm)
    dev = get_device(device)
    n = data.n_train
    q, steps = _steps(n, b, profile.epochs)
    delta = profile.delta_for(n)
    cal = calibrate_sigma(epsilon, sample_rate=q, steps=steps, delta=delta)
    private = not math.isinf(epsilon)
    cfg = DPSGDConfig(noise_multiplier=cal["sigma"], max_grad_norm=c if private else None, epochs=profile.epochs,
                      batch_size=b, lr=profile.lr, optimizer="adam", delta=delta, accountant=None,
                      progress=progress, device=str(dev), record_grad_norms=private)  # fmt: skip
    gen = make_torch_generator(seed)
    model = _model(seed)
    X, y = data.tensors("train", device=dev)
    start = time.perf_counter()
    result = train(model, X, y, loss_fn=torch.nn.BCEWithLogitsLoss(reduction="none"), config=cfg, generator=gen)
    wall = time.perf_counter() - start
    del X, y
    model.eval()
    with torch.no_grad():
        s_test = torch.cat([model(xb) for xb, _ in data.iter_chunks("test", device=dev)]).cpu().numpy()
        s_cand = torch.cat([model(xb) for xb, _ in data.iter_chunks("cand", device=dev)]).cpu().numpy()
    table = evaluate(data.y_test, s_test, data.cand_user, data.cand_label, s_cand, k=20, threshold=0.0,
                     groups=data.groups())  # fmt: skip
    record = {
        "epsilon_target": epsilon, "sigma": cal["sigma"], "epsilon_pld": cal["epsilon_pld"],
        "epsilon_rdp": cal["epsilon_rdp"], "delta": delta, "sample_rate": q, "steps": result.steps,
        "batch_size": b, "max_grad_norm": c if private else None, "epochs": profile.epochs, "lr": profile.lr,
        "seed": seed, "n_train": n,
        "metrics": {m: float(table.loc["overall", m]) for m in METRICS},
        "segments": {g: {m: float(table.loc[g, m]) for m in METRICS} for g in table.index if g != "overall"},
        "losses": list(result.losses), "final_loss": float(result.losses[-1]),
        "convergence_epoch": convergence_epoch(result.losses), "wall_seconds": wall, "hours": wall / 3600,
        "grad_norms": None,
    }  # fmt: skip
    if private and result.grad_norms is not None and result.grad_norms.size:
        prof = summarize_grad_norms(result.grad_norms, clip_norms=sorted({c, *profile.clip_norms}),
                                    percentiles=(50.0, 95.0))  # fmt: skip
        record["grad_norms"] = {"median": prof.median, "p95": prof.percentiles[95.0],
                                "fraction_clipped": prof.fraction_clipped[c], "count": prof.count,
                                "fraction_clipped_at": {str(k): v for k, v in prof.fraction_clipped.items()}}  # fmt: skip
    return record


def _model(seed: int):
    """The click predictor with a seeded initialisation that leaves the global RNG as it was."""
    from privlab.models import StreamRecClickPredictor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StreamRecClickPredictor()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads and restore the previous number (``None``: leave it).

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if n is None:
        yield
        return
    n = check_int("threads", n, minimum=1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def clip_study(data, *, profile: StreamRecProfile, seed: int, reuse: dict | None = None, progress: bool = True,
               device=None) -> list[dict]:  # fmt: skip
    """One run per :math:`C` in ``profile.clip_norms`` at ``profile.study_epsilon``, for ``profile.study_epochs`` epochs.

    Each record carries the gradient-norm profile of *its own* run, so its
    ``grad_norms["fraction_clipped"]`` is the fraction of per-example norms
    above its own :math:`C`. ``reuse`` (a :func:`run_one` record of the sweep)
    stands in for the row of its :math:`C` when the study's configuration
    (epsilon, epochs, batch size, seed) is the record's.
    """
    epochs = profile.study_epochs if profile.study_epochs is not None else profile.epochs
    prof = replace(profile, epochs=epochs)
    out = []
    for c in profile.clip_norms:
        same = reuse is not None and (reuse["epsilon_target"], reuse["epochs"], reuse["batch_size"],
                                      reuse["seed"], reuse["max_grad_norm"]) == (
            profile.study_epsilon, epochs, profile.batch_size, seed, c)  # fmt: skip
        out.append(reuse if same else run_one(data, epsilon=profile.study_epsilon, profile=prof, seed=seed,
                                              max_grad_norm=c, progress=progress, device=device))  # fmt: skip
    return out


def run_sweep(scale: str | Scale | None = None, *, epsilons: Sequence[float] = (1, 3, 8, math.inf),
              seed: int = 0, studies: bool = True, progress: bool = True, device=None,
              profile: StreamRecProfile | None = None, threads: int | None = 1) -> dict:  # fmt: skip
    """The epsilon sweep and (optionally) the studies; returns the results dict :func:`write_results` writes.

    ``threads``: torch intra-op threads while it runs (1 by default, see the module docstring;
    ``None`` leaves torch's setting).

    Keys: ``configuration``, ``data``, ``runs`` (one record per epsilon), ``studies``
    (``batch_size``, ``clip_norm``, ``accounting``, ``seed_replicates``), ``threshold``
    (a list of rows of :func:`threshold_table`, if ``inf`` is swept), ``timing``,
    ``machine``, ``versions``, ``commit``.
    """
    with torch_threads(threads):
        out = _run_sweep(scale, epsilons=epsilons, seed=seed, studies=studies, progress=progress, device=device,
                         profile=profile)  # fmt: skip
    out["configuration"]["torch_threads"] = threads if threads is not None else torch.get_num_threads()
    return out


def _run_sweep(scale, *, epsilons, seed, studies, progress, device, profile) -> dict:
    from privlab.datasets.streamrec import StreamRecConfig, generate_streamrec

    from .provenance import git_commit, library_versions, machine_info

    prof = profile if profile is not None else streamrec_profile(scale)
    eps_list = [check_epsilon(e, allow_inf=True) for e in epsilons]
    if not eps_list:
        raise ValueError("epsilons must name at least one epsilon, got none")
    t0 = time.perf_counter()
    gen_cfg = StreamRecConfig.for_scale(prof.scale, n_interactions=prof.n_interactions, n_users=prof.n_users,
                                        n_items=prof.n_items, n_eval_users=prof.n_eval_users)  # fmt: skip
    data = generate_streamrec(prof.scale, rng=make_rng(seed), config=gen_cfg, progress=progress)
    gen_seconds = time.perf_counter() - t0
    kw = {"profile": prof, "seed": seed, "progress": progress, "device": device}
    t1 = time.perf_counter()
    runs = [run_one(data, epsilon=e, **kw) for e in eps_list]
    sweep_seconds = time.perf_counter() - t1
    out: dict = {"runs": runs, "studies": {}}
    q, steps = _steps(data.n_train, prof.batch_size, prof.epochs)
    delta = prof.delta_for(data.n_train)
    if studies:
        t2 = time.perf_counter()
        e_s = prof.study_epsilon
        base = next((r for r in runs if r["epsilon_target"] == e_s), None) or run_one(data, epsilon=e_s, **kw)
        clip = clip_study(data, reuse=base, **kw)
        large = next((r for r in clip if r["max_grad_norm"] == prof.max_grad_norm), None)
        s_prof = replace(prof, epochs=prof.study_epochs or prof.epochs)
        if large is None:
            large = base if s_prof.epochs == prof.epochs else run_one(data, epsilon=e_s, **{**kw, "profile": s_prof})
        small = run_one(data, epsilon=e_s, batch_size=prof.small_batch_size, **{**kw, "profile": s_prof})
        reps = [run_one(data, epsilon=e_s, profile=prof, seed=s, progress=progress, device=device)
                for s in spawn_seeds(seed, prof.seed_replicates)] if prof.seed_replicates else []  # fmt: skip
        acc = [{"epsilon_target": e, "sigma": r["sigma"], "sample_rate": q, "steps": steps, "delta": delta,
                **accounting_study(sigma=r["sigma"], sample_rate=q, steps=steps, delta=delta)}
               for e, r in zip(eps_list, runs) if not math.isinf(e)]  # fmt: skip
        out["studies"] = {"batch_size": [small, large], "clip_norm": clip, "seed_replicates": [base, *reps],
                          "accounting": acc, "seconds": time.perf_counter() - t2,
                          "seconds_by_study": {"batch_size": small["wall_seconds"],
                                               "clip_norm": sum(r["wall_seconds"] for r in clip if r is not base),
                                               "seed_replicates": sum(r["wall_seconds"] for r in reps)}}  # fmt: skip
    if math.inf in eps_list:
        rec = pd.DataFrame({_label(r["epsilon_target"]): {"overall": r["metrics"]["recall@20"],
                            **{g: v["recall@20"] for g, v in r["segments"].items()}} for r in runs})  # fmt: skip
        out["threshold"] = threshold_table(rec).reset_index(names="group").to_dict(orient="records")
    out["configuration"] = {**asdict(prof), "epsilons": eps_list, "seed": seed, "delta_used": delta,
                            "sample_rate": q, "steps": steps, "accountant": "pld", "optimizer": "adam",
                            "sampler": "poisson", "model": "StreamRecClickPredictor"}  # fmt: skip
    out["data"] = {"n_train": data.n_train, "n_test": data.n_test, "n_candidates": int(data.cand_user.size),
                   "n_users": prof.n_users, "n_items": prof.n_items}  # fmt: skip
    out["timing"] = {"generate_seconds": gen_seconds, "sweep_seconds": sweep_seconds}
    out |= {"machine": machine_info(), "versions": library_versions(), "commit": git_commit()}
    return out


def _label(eps: float) -> str:
    """Column label of a model: ``"1"``, ``"3"``, ``"inf"``."""
    return "inf" if math.isinf(eps) else f"{eps:g}"
