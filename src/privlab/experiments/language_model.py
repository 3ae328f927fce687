r"""Language models: memorisation, DP fine-tuning (full and LoRA), user-level privacy, membership inference.

The experiment of the language-model chapter, on CPU at smoke and book scale:

1. a tiny GPT-2 built from a :class:`transformers.GPT2Config` (no pretrained
   weights, nothing downloaded), character-level, pretrained without privacy on
   the *public* half of :mod:`privlab.datasets.text`;
2. fine-tuned on the *private* half, which carries secret canaries repeated 1, 4,
   16 and 64 times, without privacy and with DP-SGD (:func:`privlab.dpsgd.train`,
   the exact fast path) at several :math:`\varepsilon`, updating all weights or
   only LoRA adapters (:mod:`peft`); each private run has a non-private control
   with the same method, unit and schedule, and clipping-only (no noise) ablations;
3. at the *example* level (one training sequence is the privacy unit) and at the
   *user* level (one user with all their sequences; Charles et al. 2024);
4. measured by the canaries' *exposure* (Carlini et al. 2019):
   :math:`\log_2 |\mathcal R| - \log_2 \mathrm{rank}`, the rank of the true canary
   among all :math:`|\mathcal R| = 10^4` codes by the model's loss, computed
   exactly over the whole canary space; by validation perplexity; and by a
   loss-threshold membership-inference attack (AUC, TPR at 1% FPR) against the DP
   bound :math:`\mathrm{TPR} \le e^\varepsilon \mathrm{FPR} + \delta`;
5. chosen runs repeated with further seeds, each with fresh canary codes
   (:func:`replicate_exposures`), so that comparisons between runs take their
   standard errors from replicates, and the seeds' models serve as shadow models
   for an offline LiRA on the canaries (Carlini et al. 2022, arXiv:2112.03570);
6. the standard shadow-model online LiRA on ordinary (non-canary) private sequences,
   each of several models fine-tuned on a random half of a pool (:func:`sequence_lira`,
   :func:`sequence_mia`), without privacy and with DP.

References: Carlini et al. (2019), arXiv:1802.08232; Hu et al. (2021), "LoRA",
arXiv:2106.09685; Yu et al. (2022), "Differentially private fine-tuning of
language models", arXiv:2110.06500; Charles et al. (2024), "Fine-tuning large
language models with user-level differential privacy", arXiv:2407.07737;
Yeom et al. (2018), "Privacy risk in machine learning" (loss-threshold attack).

Used in: the language-model chapter.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor, nn
from tqdm.auto import tqdm

from privlab.accounting import calibrate_noise
from privlab.config import get_device
from privlab.datasets.text import Canary, CharTokenizer, TextSplit, canary_text, make_text_split
from privlab.dpsgd import DPSGDConfig, lm_loss, steps_per_epoch, train
from privlab.provenance import write_json

__all__ = ["LMScale", "LM_SCALES", "training_schedule", "build_model", "sequence_losses", "canary_space_losses", "exposure",
           "canary_exposures", "recode_canaries", "replicate_exposures", "membership_attack", "sequence_lira",
           "sequence_mia", "pack_users", "UserLM",
           "add_lora", "user_lm_loss", "finetune", "pretrain", "evaluate_language_model", "default_runs", "run",
           "write_results"]


@dataclass(frozen=True)
class LMScale:
    """Sizes of one scale of the experiment."""

    seq_len: int = 32
    n_public: int = 400
    n_private: int = 400
    n_users: int = 20
    n_embd: int = 32
    n_layer: int = 1
    n_head: int = 2
    pretrain_epochs: int = 2
    finetune_epochs: int = 8
    canaries_per_repetition: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    max_rows_per_user: int = 64
    lora_rank: int = 8
    lira_models: int = 8  # shadow-model LiRA on ordinary sequences: models (each the target in turn)
    lira_pool: int = 128  # and the pool of non-canary private sequences they draw their halves from


LM_SCALES = {
    "smoke": LMScale(),
    # sized to run the chapter in about 5 minutes on 2 CPU cores (a larger model, more private text, users,
    # canaries and LiRA pool than smoke; seq_len 48 with 4,000 public sequences exceeded the corpus's
    # 3,929 public 48-character chunks and would have taken about an hour)
    "book": LMScale(seq_len=32, n_public=800, n_private=600, n_users=40, n_embd=48, n_layer=2, n_head=4,
                    pretrain_epochs=3, finetune_epochs=8, batch_size=32, canaries_per_repetition=4,
                    lira_pool=256),
    # GPT-2 small's shape (124M parameters with a BPE vocabulary; about 85M with characters): on the GPU
    # when one is available (privlab.config.get_device), else on the CPU (slow). Sized to the corpus:
    # the topics' random public/private assignment leaves as few as about 1,000 128-character chunks
    # on either side, and the private part also gives 10% for validation (tests: split seeds 0-99 build)
    "paper": LMScale(seq_len=128, n_public=900, n_private=800, n_users=40, n_embd=768, n_layer=12,
                     n_head=12, pretrain_epochs=5, finetune_epochs=8, batch_size=256, lr=5e-4,
                     # each shadow model trains on half the pool, at least one batch; at 512 that is
                     # one batch exactly (q = 1, 8 steps against the target's q ~ 0.24, 32 steps):
                     # the shadows' recipe differs from the target's (not run yet at this scale)
                     lira_pool=512),
}


def build_model(vocab_size: int, s: LMScale, *, seed: int = 0, tie_word_embeddings: bool = True) -> nn.Module:
    """A GPT-2 from a configuration class (random initial weights; nothing is downloaded).

    ``tie_word_embeddings=False`` gives the output layer its own weights (GPT-2 ties them to the
    token embedding; Opacus's ghost clipping refuses tied parameters)."""
    from transformers import GPT2Config, GPT2LMHeadModel  # an optional extra ([book], [dev]): imported on use

    torch.manual_seed(seed)  # transformers initialises from the global generator
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=s.seq_len, n_embd=s.n_embd, n_layer=s.n_layer,
                     n_head=s.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie_word_embeddings)
    return GPT2LMHeadModel(cfg)


@torch.no_grad()
def sequence_losses(model: nn.Module, ids: Tensor, *, batch: int = 128) -> np.ndarray:
    """Each sequence's mean next-token loss (nats), shape ``(N,)``."""
    model.eval()
    dev = next(model.parameters()).device
    out = [lm_loss(model(b), b).cpu() for b in (ids[i:i + batch].to(dev) for i in range(0, len(ids), batch))]
    return torch.cat(out).double().numpy()


def canary_space_losses(model: nn.Module, *, tokenizer: CharTokenizer, seq_len: int) -> np.ndarray:
    """The model's mean loss on the canary sentence for every code 0000-9999, shape ``(10000,)``."""
    ids = torch.tensor([tokenizer.encode(canary_text(c).ljust(seq_len)) for c in range(10_000)])
    return sequence_losses(model, ids)


def exposure(space_losses: np.ndarray, code: int) -> float:
    r"""Exposure of a canary, computed exactly over all :math:`10^4` codes (Carlini et al. 2019, Def. 4).

    :math:`\log_2 10^4 - \log_2 \mathrm{rank}`, rank 1 for the lowest loss (ties counted against
    the canary). 13.3 bits is the maximum (the canary is the model's first choice); for a model
    that knows nothing the rank is uniform and the exposure is about
    :math:`-\log_2 U`, :math:`U` uniform: mean and standard deviation :math:`1/\ln 2 = 1.44` bits.

    >>> exposure(np.arange(10_000.0), 0)        # the lowest loss of all: maximal exposure
    13.287712379549449
    """
    losses = np.asarray(space_losses)
    rank = int(np.sum(losses <= losses[code]))
    return math.log2(losses.size) - math.log2(rank)


def membership_attack(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> dict:
    """Loss-threshold membership inference (Yeom et al. 2018): AUC and TPR at 1% and 10% FPR."""
    y = np.r_[np.ones(member_losses.size), np.zeros(nonmember_losses.size)]
    score = -np.r_[member_losses, nonmember_losses]
    fpr, tpr, _ = roc_curve(y, score)
    return {"auc": float(roc_auc_score(y, score)),
            "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
            "tpr_at_10pct_fpr": float(np.interp(0.10, fpr, tpr))}


def sequence_lira(base: nn.Module, split: TextSplit, s: LMScale, *, epsilon: float, n_models: int,
                  pool_size: int, seed: int = 0) -> dict:
    r"""Shadow-model LiRA on ordinary private sequences (Carlini et al. 2022, arXiv:2112.03570).

    A pool of ``pool_size`` non-canary private sequences (drawn at random; the canaries are left
    out, so the pool is ordinary text). ``n_models`` :math:`M` models are fine-tuned from ``base``
    with :func:`finetune`'s recipe (full fine-tuning, example level, the same epochs, learning
    rate and batch size; for a finite ``epsilon``, :math:`C = 1`, :math:`\delta = 1/(100N)` and :math:`\sigma` calibrated to
    ``epsilon`` for the :math:`N = \lfloor P/2 \rfloor` sequences each trains on), model
    :math:`m` on its own random half of the pool (:func:`privlab.attacks.lira.random_halves`), with
    training seed ``1000 seed + m``. Each model's mean token loss on every pool sequence is
    recorded; the attack statistic is :math:`\phi = -\text{loss}` (the logit of a sequence's
    probability :math:`p = e^{-T\,\text{loss}}` is :math:`\log p - \log(1 - p) \approx
    -T\,\text{loss}` for such small :math:`p`, and LiRA with one global variance is unchanged by
    the factor :math:`T`). Online LiRA with global variances (unbiased, ``ddof=1``), each model
    the target in turn, the others its shadows (:func:`privlab.attacks.lira.lira_scores`).

    The privacy unit of the DP runs is one sequence (add/remove), as for the chapter's
    example-level runs. Each model trains on exactly half the pool, so "in" against "out" replaces
    one sequence by another: the bound on a membership test is that of replace-one,
    :math:`(2\varepsilon, (1 + e^\varepsilon)\delta)` (:func:`privlab.attacks.lira.random_halves`). Returns ``{"epsilon", "pool_rows" (indices into split.private), "keep"
    (M, P), "losses" (M, P), "lira" (M, P) scores, "runs" (one record per model: sigma, delta,
    epsilon spent, clipped fraction, steps, first and last epoch's training loss, seconds),
    "base_losses" (P,): ``base``'s losses on the pool, the floor a fine-tune should beat}``.
    """
    from privlab.attacks.lira import lira_scores, random_halves

    n_plain = len(split.private) - sum(c.repetitions for c in split.canaries)
    if not 4 <= pool_size <= n_plain:
        raise ValueError(f"pool_size must be in [4, {n_plain}] (the non-canary private rows), got {pool_size}")
    _check_lira_pool(s, pool_size)
    if n_models < 3:
        raise ValueError(f"n_models must be at least 3 (a target and two shadows), got {n_models}")
    rng = np.random.default_rng([seed, 30])
    rows = np.sort(rng.choice(n_plain, pool_size, replace=False))
    pool = split.private[rows]
    keep = random_halves(n_models, pool_size, rng)
    losses, records = np.empty((n_models, pool_size)), []
    for m in range(n_models):
        sub = dataclasses.replace(split, private=pool[keep[m]], private_users=split.private_users[rows][keep[m]],
                                  canaries=[])
        model, rec = finetune(base, sub, s, epsilon=epsilon, seed=1000 * seed + m)
        losses[m] = sequence_losses(model, pool)
        records.append({k: rec[k] for k in ("sigma", "delta", "epsilon_spent", "clipped_fraction", "steps",
                                             "n_units", "seconds")}
                       | {"train_loss_first": rec["train_loss"][0], "train_loss_last": rec["train_loss"][-1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan where the shadows are all in or all out
        scores = lira_scores(-losses, keep, online=True, global_variance=True, ddof=1)
    return {"epsilon": epsilon, "pool_rows": rows.tolist(), "keep": keep, "losses": losses, "lira": scores,
            "base_losses": sequence_losses(base, pool), "runs": records}


def sequence_mia(res: dict, *, fprs=(0.01, 0.1), n_boot: int = 200, seed: int = 0) -> dict:
    r"""AUC and TPR at each FPR of LiRA and of the loss threshold, on the same guesses of :func:`sequence_lira`.

    Every model is the target in turn: :math:`M \times P` guesses, one threshold over all of them
    (pooled), the members those with ``keep``; guesses with a ``nan`` LiRA score (no "in" or no
    "out" shadow) are dropped from both attacks. For each attack and FPR: the TPR, its binomial
    standard error :math:`\sqrt{\mathrm{TPR}(1-\mathrm{TPR})/n_{\rm in}}` over the member
    guesses (which treats them as independent), and the two-way bootstrap standard error over
    models and sequences (:func:`privlab.attacks.lira.bootstrap_tpr`, ``n_boot`` replicates, the
    two attacks paired), which also counts that the :math:`M` guesses about one sequence share its
    difficulty and the :math:`P` guesses against one model share its training run; and the
    bootstrap standard error of the difference LiRA minus loss. The AUCs (Mann-Whitney, ties
    halved) come with the same bootstrap's standard errors, of each and of the difference. ``n_nonmembers``: the number of
    non-member guesses, so that an FPR below :math:`1/n` is not resolved.
    """
    from privlab.attacks.lira import auc_flat, bootstrap_auc, bootstrap_tpr, tpr_at_fpr

    keep, lira, loss_score = np.asarray(res["keep"]), np.asarray(res["lira"]), -np.asarray(res["losses"])
    ok = ~np.isnan(lira)
    loss_score = np.where(ok, loss_score, np.nan)
    out = {"n_members": int((keep & ok).sum()), "n_nonmembers": int((~keep & ok).sum()),
           "n_dropped": int((~ok).sum())}
    rng = np.random.default_rng(seed)
    boot = bootstrap_auc([lira, loss_score], keep, n_boot=n_boot, rng=rng)
    for j, (name, sc) in enumerate((("lira", lira), ("loss", loss_score))):
        out[f"{name}_auc"] = auc_flat(sc, keep)
        out[f"{name}_auc_se_boot"] = float(np.nanstd(boot[:, j], ddof=1))
    out["diff_auc_se_boot"] = float(np.nanstd(boot[:, 0] - boot[:, 1], ddof=1))
    for f in fprs:
        boot = bootstrap_tpr([lira, loss_score], keep, f, n_boot=n_boot, rng=rng)
        for j, (name, sc) in enumerate((("lira", lira), ("loss", loss_score))):
            tpr = tpr_at_fpr(sc, keep, f)
            out[f"{name}_tpr@{f:g}"] = tpr
            out[f"{name}_se_binom@{f:g}"] = math.sqrt(tpr * (1 - tpr) / out["n_members"])
            out[f"{name}_se_boot@{f:g}"] = float(boot[:, j].std(ddof=1))
        out[f"diff_se_boot@{f:g}"] = float((boot[:, 0] - boot[:, 1]).std(ddof=1))
    return out


# ----------------------------------------------------------------------------- user level


class UserLM(nn.Module):
    """One *user* per example: input ``(B, R, T)`` (R rows per user, padded) -> logits ``(B, R, T, V)``.

    ``skip_padding=True`` runs the language model on the non-padding rows only (padding rows, all
    token 0, get logits 0; their labels are -100, so they add nothing to the loss either way):
    the same gradients at a fraction of the cost, for the per-example loop (the selection is data
    dependent, so not under ``vmap``).
    """

    def __init__(self, lm: nn.Module, *, skip_padding: bool = False):
        super().__init__()
        self.lm = lm
        self.skip_padding = skip_padding

    def forward(self, x: Tensor) -> Tensor:
        b, r, t = x.shape
        rows = x.reshape(b * r, t)
        if not self.skip_padding:
            return self.lm(rows).logits.reshape(b, r, t, -1)
        keep = rows.ne(0).any(1).nonzero(as_tuple=True)[0]
        out = self.lm(rows[keep]).logits
        return out.new_zeros(b * r, t, out.shape[-1]).index_put((keep,), out).reshape(b, r, t, -1)


def user_lm_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-user loss: the sum of the user's rows' mean token losses (padding rows are all -100: loss 0)."""
    b, r, t, v = outputs.shape
    return lm_loss(outputs.reshape(b * r, t, v), targets.reshape(b * r, t)).reshape(b, r).sum(1)


def pack_users(ids: Tensor, users: np.ndarray, *, max_rows: int, rng: np.random.Generator,
               return_rows: bool = False):
    """Rows grouped per user ``(U, R, T)``, at most ``max_rows`` each (a public cap), labels -100 on padding.

    A user with more rows keeps a random subset (drawn from ``rng``). Returns ``x, y, names``, and
    with ``return_rows`` also the sorted indices into ``ids`` of the rows kept (the rows a
    user-level run trains on: its membership-inference members)."""
    names = np.unique(users)
    r = min(max_rows, max(int(np.sum(users == u)) for u in names))
    x = torch.zeros(len(names), r, ids.shape[1], dtype=torch.long)
    y = torch.full_like(x, -100)
    kept = []
    for j, u in enumerate(names):
        rows = np.flatnonzero(users == u)
        if rows.size > r:
            rows = rng.choice(rows, r, replace=False)
        x[j, :rows.size] = ids[rows]
        y[j, :rows.size] = ids[rows]
        kept.append(rows)
    return (x, y, names, np.sort(np.concatenate(kept))) if return_rows else (x, y, names)


# ----------------------------------------------------------------------------- training


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    """``model`` wrapped by peft with the chapter's LoRA adapters (rank ``rank``, alpha ``2 rank``, on
    GPT-2's ``c_attn``, ``c_proj`` and ``c_fc``): only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model  # an optional extra ([book], [dev]): imported on use

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["c_attn", "c_proj", "c_fc"],
                     fan_in_fan_out=True, lora_dropout=0.0, bias="none")
    return get_peft_model(model, cfg)


def finetune(base: nn.Module, split: TextSplit, s: LMScale, *, epsilon: float, method: str = "full",
             unit: str = "example", clip_only: bool = False, seed: int = 0,
             progress: bool = False) -> tuple[nn.Module, dict]:
    r"""Fine-tune a copy of ``base`` on the private part; ``epsilon = inf`` trains without privacy.

    Clipping norm :math:`C = 1` for every private run; :math:`\sigma` calibrated by the PLD
    accountant for ``epsilon`` at :math:`\delta = 1/(100N)` (:math:`N` examples or users; as in
    chapters 2 and 13: the mechanism that publishes each unit's data outright with probability
    :math:`\delta` exposes some unit with probability :math:`1 - (1 - \delta)^N \approx 1\%`), Poisson
    sampling, Adam. ``clip_only=True`` (with ``epsilon = inf``) clips at :math:`C = 1` and adds no
    noise: the clipping-only ablation (no privacy). Full fine-tuning and LoRA use the same learning
    rate ``s.lr``, chosen for LoRA on public data only (smoke: a model pretrained on 200 public
    sequences, LoRA on 150 others, loss on the last 50): from 3.559, lr 3e-3 reached 3.540, 1e-2
    3.544 and 3e-2, the usual 10x step, 3.556 after rising to 3.63 in its first 5 steps. User-level
    runs compute each user's clipped gradient with the per-example loop: the same result as the
    fast path, which falls back to ``vmap`` for the user wrapper, at half the time on a CPU. They
    sample a quarter of the users per step and take as many steps as the example-level runs
    (``s.finetune_epochs`` epochs over the private rows, rounded to whole epochs over the users),
    so that a user-level run and an example-level run differ in the unit, not in training length;
    each user's rows are capped at ``s.max_rows_per_user`` (a random subset, fixed for the run). Returns the model and a record (sigma, delta, epsilon spent, losses,
    fraction of per-example (per-user) gradients clipped, seconds, trainable parameters).
    """
    if method not in ("full", "lora") or unit not in ("example", "user"):
        raise ValueError(f"method must be 'full' or 'lora' and unit 'example' or 'user', got {method!r}, {unit!r}")
    if clip_only and math.isfinite(epsilon):
        raise ValueError(f"clip_only trains without noise: epsilon must be inf, got {epsilon}")
    model = copy.deepcopy(base)
    if method == "lora":
        model = add_lora(model, s.lora_rank)
    rng = np.random.default_rng(seed)
    if unit == "user":
        x, y, names, trained_rows = pack_users(split.private, split.private_users, max_rows=s.max_rows_per_user,
                                               rng=rng, return_rows=True)
        net, loss_fn, n = UserLM(model, skip_padding=True), user_lm_loss, len(names)
        batch = max(2, n // 4)
    else:
        x, y, net, loss_fn, n, batch = split.private, split.private, model, lm_loss, len(split.private), s.batch_size
        trained_rows = np.arange(len(split.private))
    delta = 1.0 / (100 * n)
    # as many steps as the example-level runs take (s.finetune_epochs over the private rows):
    # user-level runs differ from them in the unit, not in how long they train. The row count is the
    # scale's planned one (private examples plus canary copies), a constant of the configuration: at
    # the user level the data's own row count changes with the user added or removed, and a step
    # count (or sigma) computed from it would reveal that user's number of rows
    planned_rows = split.planned_private_rows
    if planned_rows is None:
        if unit == "user":
            raise ValueError("a user-level run needs split.planned_private_rows (make_text_split sets it): "
                             "a schedule read from the rows would depend on the user removed")
        planned_rows = len(split.private)  # example level: N treated as public, as in train
    epochs, steps = training_schedule(s, unit=unit, planned_rows=planned_rows, n_units=n, batch=batch)
    private = math.isfinite(epsilon)
    sigma = calibrate_noise(target_epsilon=epsilon, delta=delta, sample_rate=batch / n, steps=steps) if private else 0.0
    clip = 1.0 if (private or clip_only) else None
    cfg = DPSGDConfig(noise_multiplier=sigma, max_grad_norm=clip, batch_size=batch,
                      epochs=epochs, lr=s.lr, optimizer="adam", delta=delta,
                      method="loop" if unit == "user" else "fast",
                      accountant="pld" if private else None, progress=progress, device=str(get_device()),
                      record_grad_norms=clip is not None)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = train(net, x, y, loss_fn=loss_fn, config=cfg, generator=torch.Generator().manual_seed(seed))
    if res.steps != steps:  # sigma was calibrated for `steps`
        raise RuntimeError(f"training ran {res.steps} steps, the noise was calibrated for {steps}")
    seconds = time.perf_counter() - t0
    model.eval()
    norms = res.grad_norms
    record = {"epsilon_target": epsilon, "clip_only": bool(clip_only), "sigma": sigma, "delta": delta,
              "n_units": n, "batch": batch, "steps": res.steps, "epsilon_spent": res.epsilon if private else math.inf,
              "clipped_fraction": float(np.mean(norms > clip)) if clip is not None and norms is not None and norms.size
              else math.nan,
              "train_loss": list(res.losses), "seconds": seconds, "seconds_per_step": seconds / max(1, res.steps),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "trained_rows": trained_rows.tolist()}
    return model, record


def pretrain(split: TextSplit, s: LMScale, *, seed: int = 0) -> nn.Module:
    """The public model: non-private training on the public part."""
    model = build_model(split.tokenizer.vocab_size, s, seed=seed)
    cfg = DPSGDConfig(noise_multiplier=0.0, max_grad_norm=None, batch_size=s.batch_size, epochs=s.pretrain_epochs,
                      lr=s.lr, optimizer="adam", accountant=None, progress=False, device=str(get_device()))
    train(model, split.public, split.public, loss_fn=lm_loss, config=cfg,
          generator=torch.Generator().manual_seed(seed))
    return model.eval()


def canary_exposures(model: nn.Module, split: TextSplit, s: LMScale, *,
                     space: np.ndarray | None = None) -> dict[str, list[float]]:
    """The exposure of every canary of ``split``, by repetition count: ``{"1": [...], "4": [...], ...}``
    (``space``: the model's :func:`canary_space_losses`, computed when not given)."""
    if space is None:
        space = canary_space_losses(model, tokenizer=split.tokenizer, seq_len=s.seq_len)
    out = {str(c.repetitions): [] for c in split.canaries}
    for c in split.canaries:
        out[str(c.repetitions)].append(exposure(space, c.code))
    return out


def recode_canaries(split: TextSplit, rng: np.random.Generator) -> TextSplit:
    """``split`` with every canary given a fresh random code (distinct, uniform over the 10^4), in
    the same rows and by the same user: a replicate of the canary experiment on the same data.

    >>> from privlab.datasets.text import make_text_split
    >>> a = make_text_split(seq_len=32, n_private=40, n_public=10, n_users=4, repetitions=(1, 4),
    ...                     canaries_per_repetition=1, rng=np.random.default_rng(0))
    >>> b = recode_canaries(a, np.random.default_rng(1))
    >>> [c.repetitions for c in b.canaries] == [c.repetitions for c in a.canaries]
    True
    >>> bool((a.private != b.private).any(1).sum() == 1 + 4)   # exactly the canary rows change
    True
    """
    codes = rng.choice(10_000, size=len(split.canaries), replace=False)
    private = split.private.clone()
    canaries = []
    for c, code in zip(split.canaries, codes):
        new = Canary(int(code), c.repetitions, c.user)
        old_ids = torch.tensor(split.tokenizer.encode(c.text.ljust(private.shape[1])))
        rows = (split.private == old_ids).all(1)
        if int(rows.sum()) != c.repetitions:
            raise ValueError(f"canary {c} found in {int(rows.sum())} rows, not {c.repetitions}")
        private[rows] = torch.tensor(split.tokenizer.encode(new.text.ljust(private.shape[1])))
        canaries.append(new)
    return dataclasses.replace(split, private=private, canaries=canaries)


def replicate_exposures(base: nn.Module, split: TextSplit, s: LMScale, runs, seeds) -> list[dict]:
    """Canary exposures of each ``(epsilon, method, unit[, "clip"])`` in ``runs``, once per seed in
    ``seeds``: each seed draws fresh canary codes (:func:`recode_canaries`) and a fresh training
    seed (Poisson batches, noise), on the same data and public model, so the seeds are independent
    replicates of the whole canary experiment. Records ``{"seed", "run", "canaries", "exposure",
    "canary_space_losses"}`` (the last, float32 ``(10^4,)``, for LiRA: each seed's model is a
    shadow model that did not train on the other seeds' canaries)."""
    out = []
    for seed in seeds:
        split_s = recode_canaries(split, np.random.default_rng([seed, 20]))
        for eps, method, unit, *extra in runs:
            model, _ = finetune(base, split_s, s, epsilon=eps, method=method, unit=unit,
                                clip_only=extra == ["clip"], seed=seed)
            space = canary_space_losses(model, tokenizer=split_s.tokenizer, seq_len=s.seq_len)
            out.append({"seed": seed, "run": [eps, method, unit, *extra],
                        "canaries": [asdict(c) for c in split_s.canaries],
                        "exposure": canary_exposures(model, split_s, s, space=space),
                        "canary_space_losses": space.astype(np.float32)})
    return out


def evaluate_language_model(model: nn.Module, split: TextSplit, s: LMScale, *,
                            rng: np.random.Generator, keep_space_losses: bool = False,
                            trained_rows=None, floor_model: nn.Module | None = None) -> dict:  # fmt: skip
    """Exposure of every canary, validation perplexity (and each validation sequence's loss, for
    paired comparisons between models), the mean loss on non-canary private rows
    (``"noncanary_train_loss"``), and the loss-threshold attack; with ``keep_space_losses``,
    also the model's loss on every code (``"canary_space_losses"``, float32 ``(10^4,)``).

    The attack's members are non-canary private rows the model trained on: ``trained_rows``
    (indices into ``split.private``; :func:`finetune` records them, and a user-level run trains
    only on the rows kept under the per-user cap), all of them when ``None``. With ``floor_model``
    (the public model, which trained on none of these rows), the same attack against it on the same
    members and non-members: ``floor_auc`` and ``floor_tpr_at_10pct_fpr``, the floor each run's
    attack is read against (the member sets differ between runs and alone move the AUC), and
    ``floor_noncanary_train_loss``, its mean loss on the same rows as ``noncanary_train_loss``."""
    n_plain = len(split.private) - sum(c.repetitions for c in split.canaries)   # canaries come last
    rows = np.arange(n_plain) if trained_rows is None else np.asarray(trained_rows)
    members = split.private[rows[rows < n_plain]]                        # non-canary rows trained on
    pick = rng.choice(len(members), size=min(len(members), len(split.validation)), replace=False)
    val = sequence_losses(model, split.validation)
    space = canary_space_losses(model, tokenizer=split.tokenizer, seq_len=s.seq_len)
    out = {"perplexity": float(np.exp(val.mean())), "validation_losses": val.tolist(),
           "exposure": canary_exposures(model, split, s, space=space)}
    if keep_space_losses:
        out["canary_space_losses"] = space.astype(np.float32)
    member_losses = sequence_losses(model, members[pick])
    # the training loss without the canaries (per row, in eval mode; a random subset of the
    # non-canary private rows, the attack's members)
    out["noncanary_train_loss"] = float(member_losses.mean())
    out.update(membership_attack(member_losses, val))
    if floor_model is not None:
        floor_members = sequence_losses(floor_model, members[pick])
        floor = membership_attack(floor_members, sequence_losses(floor_model, split.validation))
        out["floor_auc"], out["floor_tpr_at_10pct_fpr"] = floor["auc"], floor["tpr_at_10pct_fpr"]
        out["floor_noncanary_train_loss"] = float(floor_members.mean())  # the same rows
    return out


def default_runs(scale: str, epsilons=None) -> list[tuple]:
    """The ``(epsilon, method, unit)`` runs of a scale, and ``(inf, method, unit, "clip")`` for the
    clipping-only ablations: full fine-tuning at every epsilon and without noise but clipped; LoRA
    without privacy and at the largest finite epsilon; user level clipped only and at the largest
    finite epsilon (smoke: epsilons 1 and 8; book and paper: 1, 3 and 8). Each private run has a
    non-private control with the same method, unit and schedule: at the user level, the clipped-only
    run, which is user-level DP-SGD without its noise."""
    eps = list(epsilons) if epsilons is not None else ([1.0, 8.0] if scale == "smoke" else [1.0, 3.0, 8.0])
    eps = sorted({float(e) for e in eps} | {math.inf}, key=lambda e: (math.isinf(e), e))
    finite = [e for e in eps if math.isfinite(e)]
    runs = [(e, "full", "example") for e in eps] + [(math.inf, "full", "example", "clip")]
    runs.append((math.inf, "lora", "example"))
    runs.append((math.inf, "full", "user", "clip"))
    if finite:
        runs += [(finite[-1], "lora", "example"), (finite[-1], "full", "user")]
    return runs


def training_schedule(s: LMScale, *, unit: str, planned_rows: int, n_units: int, batch: int) -> tuple[int, int]:
    """``(epochs, steps)`` of a fine-tuning run: ``s.finetune_epochs`` over the examples, and at the user
    level as many steps as that (user-level runs differ in the unit, not in how long they train).

    Reads the planned row count (a configuration constant), never the rows: at the user level the
    rows change with the user a neighbouring data set removes, and the number of users ``n_units``
    is the public size there.

    >>> s = LM_SCALES["smoke"]
    >>> training_schedule(s, unit="user", planned_rows=655, n_units=20, batch=5)   # smoke: 655 planned rows
    (40, 160)
    """
    # steps per epoch as privlab.dpsgd.train counts them, round(1 / q) (round(N / B) can differ by one at
    # N / B = x.5, where 1 / (B / N) rounds the other way: sigma calibrated for fewer steps than run)
    per_epoch = steps_per_epoch(batch / n_units)
    example_steps = s.finetune_epochs * steps_per_epoch(s.batch_size / planned_rows)
    if unit == "example":
        return s.finetune_epochs, s.finetune_epochs * per_epoch
    epochs = max(1, round(example_steps / per_epoch))
    return epochs, epochs * per_epoch


def _check_lira_pool(s: LMScale, pool_size: int) -> None:
    """Each shadow model trains on half the pool with the scale's batch size: q = batch / (pool / 2) <= 1."""
    if s.batch_size > pool_size // 2:
        raise ValueError(f"the LiRA pool of {pool_size} sequences gives each shadow model {pool_size // 2}, "
                         f"fewer than one batch of {s.batch_size}: lira_pool must be >= {2 * s.batch_size}")


def run(scale: str = "smoke", *, runs=None, seed: int = 0, progress: bool = True, replicate_runs=(),
        replicate_seeds=(), lira_epsilons=()) -> dict:
    """The whole experiment: the public model, then one record per ``(epsilon, method, unit[, "clip"])``
    in ``runs`` (``"clip"``: clipped at C = 1 without noise); then, in ``results["replicates"]``,
    the canary exposures of ``replicate_runs`` again for each of ``replicate_seeds`` (fresh canary
    codes and training seed each: :func:`replicate_exposures`); then, in
    ``results["sequence_lira"]``, for each epsilon of ``lira_epsilons``, the shadow-model LiRA on
    ordinary sequences (:func:`sequence_lira` with the scale's ``lira_models`` and ``lira_pool``,
    summarised by :func:`sequence_mia` under ``"summary"``)."""
    if scale not in LM_SCALES:
        raise ValueError(f"scale must be one of {sorted(LM_SCALES)}, got {scale!r}")
    s = LM_SCALES[scale]
    if lira_epsilons:  # checked before hours of fine-tuning, not after
        _check_lira_pool(s, s.lira_pool)
    runs = default_runs(scale) if runs is None else runs
    rng = np.random.default_rng(seed)
    split = make_text_split(seq_len=s.seq_len, n_private=s.n_private, n_public=s.n_public, n_users=s.n_users,
                            canaries_per_repetition=s.canaries_per_repetition, rng=rng)
    t0 = time.perf_counter()
    base = pretrain(split, s, seed=seed)
    results = {"scale": scale, "config": asdict(s), "corpus_fingerprint": split.fingerprint,
               "device": str(get_device()), "canaries": [asdict(c) for c in split.canaries],
               "users": {u: int(n) for u, n in zip(*np.unique(split.private_users, return_counts=True))},
               "public_model": evaluate_language_model(base, split, s, rng=np.random.default_rng(seed)),
               "pretrain_seconds": time.perf_counter() - t0, "runs": []}
    for eps, method, unit, *extra in tqdm(runs, desc="fine-tuning", disable=not progress):
        clip_only = extra == ["clip"]
        if extra and not clip_only:
            raise ValueError(f"a run is (epsilon, method, unit) or (inf, method, unit, 'clip'), got {extra}")
        model, rec = finetune(base, split, s, epsilon=eps, method=method, unit=unit, clip_only=clip_only, seed=seed)
        rec.update({"method": method, "unit": unit})
        keep = [eps, method, unit, *extra] in [list(r) for r in replicate_runs]  # for LiRA's shadow models
        rec.update(evaluate_language_model(model, split, s, rng=np.random.default_rng(seed), keep_space_losses=keep,
                                           trained_rows=rec["trained_rows"], floor_model=base))
        results["runs"].append(rec)
    results["replicates"] = replicate_exposures(base, split, s, replicate_runs, replicate_seeds)
    results["sequence_lira"] = []
    for eps in lira_epsilons:
        t1 = time.perf_counter()
        res = sequence_lira(base, split, s, epsilon=float(eps), n_models=s.lira_models, pool_size=s.lira_pool,
                            seed=seed)
        res["summary"] = sequence_mia(res, seed=seed)
        res["seconds"] = time.perf_counter() - t1
        results["sequence_lira"].append(res)
    return results


def write_results(results: dict, out_dir) -> Path:
    """``out_dir/results.json`` (:func:`privlab.provenance.write_json`: infinite
    epsilons as ``"inf"``) and ``out_dir/exposure.png``."""
    import matplotlib  # imported here: the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    path = write_json(results, out / "results.json")
    fig, ax = plt.subplots(figsize=(7, 4))
    for rec in results["runs"]:
        reps = sorted(rec["exposure"], key=int)
        eps = rec["epsilon_target"]
        label = f"{rec['method']}, {rec['unit']}, eps={'inf' if math.isinf(eps) else f'{eps:g}'}"
        label += ", clipped only" if rec.get("clip_only") else ""
        ax.plot([int(r) for r in reps], [np.mean(rec["exposure"][r]) for r in reps], marker="o", label=label)
    ax.set(xscale="log", xlabel="copies of the canary in the private data", ylabel="exposure (bits)",
           title="Canary exposure after fine-tuning")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.savefig(out / "exposure.png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    return path
