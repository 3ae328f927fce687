"""The language-model experiment: corpus split, canaries, exposure, user packing, the fast path on the
chapter's model, LoRA leaving the base weights alone, and the CLI."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from privlab.cli import main
from privlab.datasets.text import CharTokenizer, canary_text, make_text_split
from privlab.dpsgd import clipped_grad_sum, lm_loss
from privlab.experiments import language_model as lm

S = lm.LM_SCALES["smoke"]


@pytest.fixture(scope="module")
def split():
    return make_text_split(seq_len=S.seq_len, n_private=120, n_public=60, n_users=8,
                           repetitions=(1, 4), canaries_per_repetition=1, rng=np.random.default_rng(0))


def test_split_sizes_users_and_canaries(split):
    assert split.public.shape == (60, S.seq_len)
    assert split.private.shape == (120 + 1 + 4, S.seq_len)
    assert split.private_users.shape == (125,)
    # all copies of a canary are written by its one user
    tok = CharTokenizer()
    for c in split.canaries:
        rows = [i for i in range(len(split.private)) if tok.decode(split.private[i].tolist()).startswith(c.text)]
        assert len(rows) == c.repetitions and set(split.private_users[rows]) == {c.user}


def test_split_is_reproducible(split):
    again = make_text_split(seq_len=S.seq_len, n_private=120, n_public=60, n_users=8, repetitions=(1, 4),
                            canaries_per_repetition=1, rng=np.random.default_rng(0))
    assert torch.equal(again.private, split.private) and again.fingerprint == split.fingerprint


def test_canary_text_rejects_codes_outside_the_space():
    assert canary_text(7) == "my PIN is 0 0 0 7"
    with pytest.raises(ValueError, match="10000"):
        canary_text(10_000)


def test_exposure_of_a_uniform_rank_has_mean_one_over_ln2():
    rng = np.random.default_rng(1)
    values = [lm.exposure(rng.permutation(10_000).astype(float), 0) for _ in range(2_000)]
    assert abs(np.mean(values) - 1 / math.log(2)) < 4 * (1 / math.log(2)) / math.sqrt(2_000)


def test_user_loss_is_the_sum_of_the_users_row_losses(split):
    x, y, names = lm.pack_users(split.private, split.private_users, max_rows=64, rng=np.random.default_rng(0))
    model = lm.build_model(CharTokenizer().vocab_size, S).eval()
    with torch.no_grad():
        per_user = lm.user_lm_loss(lm.UserLM(model)(x[:2]), y[:2])
        for j in range(2):
            rows = x[j][(y[j] != -100).any(1)]
            np.testing.assert_allclose(per_user[j].item(), lm_loss(model(rows), rows).sum().item(), rtol=1e-5)


def test_fast_path_equals_the_loop_on_the_chapters_model(split):
    model = lm.build_model(CharTokenizer().vocab_size, S).double()
    xs = split.private[:6]
    fast = clipped_grad_sum(model, lm_loss, xs, xs, max_grad_norm=0.5, method="fast")
    loop = clipped_grad_sum(model, lm_loss, xs, xs, max_grad_norm=0.5, method="loop")
    for a, b in zip(fast, loop):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_lora_moves_the_adapters_and_not_the_base_weights(split):
    base = lm.build_model(CharTokenizer().vocab_size, S)
    small = lm.LMScale(finetune_epochs=1, batch_size=16)
    model, rec = lm.finetune(base, split, small, epsilon=8.0, method="lora", unit="example")
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and rec["trainable_parameters"] == sum(p.numel() for p in lora.values())
    assert any(float(p.detach().abs().sum()) > 0 for n, p in lora.items() if "lora_B" in n)  # B starts at 0
    base_now = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                for n, p in model.named_parameters() if "lora_" not in n}
    for n, p in base.named_parameters():
        torch.testing.assert_close(base_now[n], p, rtol=0, atol=0)


def test_finetune_reports_the_epsilon_it_was_calibrated_for(split):
    base = lm.build_model(CharTokenizer().vocab_size, S)
    _, rec = lm.finetune(base, split, lm.LMScale(finetune_epochs=1, batch_size=16), epsilon=3.0)
    assert rec["epsilon_spent"] <= 3.0 * (1 + 1e-3)
    assert rec["delta"] == pytest.approx(1 / (100 * rec["n_units"]), rel=1e-12)  # delta = 1/(100 N)


def test_user_level_runs_train_as_many_steps_as_example_level_runs(split):
    # the unit changes, not the training length: 125 rows / 16 -> 8 steps per epoch, 2 epochs;
    # 8 users, a quarter (2) per step -> 4 steps per user epoch, so 4 user epochs
    base = lm.build_model(CharTokenizer().vocab_size, S)
    small = lm.LMScale(finetune_epochs=2, batch_size=16)
    _, ex = lm.finetune(base, split, small, epsilon=math.inf)
    _, us = lm.finetune(base, split, small, epsilon=math.inf, unit="user", clip_only=True)
    assert ex["steps"] == us["steps"] == 16 and us["n_units"] == 8 and us["batch"] == 2


def test_user_level_members_are_the_rows_kept_under_the_cap(split):
    # a cap of 5 rows drops rows of the larger users: the rows returned are exactly those packed
    x, y, names, kept = lm.pack_users(split.private, split.private_users, max_rows=5,
                                      rng=np.random.default_rng(0), return_rows=True)
    assert len(kept) == int((y != -100).any(-1).sum()) < len(split.private)
    packed = {tuple(r.tolist()) for r in x[(y != -100).any(-1)]}
    assert {tuple(r.tolist()) for r in split.private[kept]} == packed
    # and finetune records them for the membership attack
    base = lm.build_model(CharTokenizer().vocab_size, S)
    small = lm.LMScale(finetune_epochs=1, batch_size=16, max_rows_per_user=5)
    _, rec = lm.finetune(base, split, small, epsilon=math.inf, unit="user", clip_only=True)
    assert rec["trained_rows"] == kept.tolist()


def test_the_membership_floor_scores_the_public_model_on_the_runs_own_members(split):
    # the floor is the same attack, same members and non-members, against the floor model:
    # a model as its own floor gives its own numbers, and the run's own numbers are unchanged
    model = lm.build_model(CharTokenizer().vocab_size, S)
    rows = np.arange(0, 100, 2)
    plain = lm.evaluate_language_model(model, split, S, rng=np.random.default_rng(3), trained_rows=rows)
    out = lm.evaluate_language_model(model, split, S, rng=np.random.default_rng(3), trained_rows=rows,
                                     floor_model=model)
    assert out["floor_auc"] == out["auc"] == plain["auc"]
    assert out["floor_tpr_at_10pct_fpr"] == out["tpr_at_10pct_fpr"]
    assert out["floor_noncanary_train_loss"] == out["noncanary_train_loss"]
    assert "floor_auc" not in plain


def test_finetune_rejects_unknown_method():
    with pytest.raises(ValueError, match="'adapter'"):
        lm.finetune(None, None, S, epsilon=1.0, method="adapter")


def test_cli_lm_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["lm", "--help"])
    assert "privlab lm --scale smoke" in capsys.readouterr().out


def test_write_results_writes_valid_json_and_the_figure(tmp_path):
    import json

    run = {"epsilon_target": math.inf, "method": "full", "unit": "example", "tpr_at_1pct_fpr": float("nan"),
           "exposure": {"1": [1.0], "64": [12.0]}}
    results = {"scale": "smoke", "runs": [run, {**run, "epsilon_target": 8.0}]}
    path = lm.write_results(results, tmp_path / "out")
    data = json.loads(path.read_text())          # strict JSON: no NaN or Infinity tokens
    assert data["runs"][0]["epsilon_target"] == "inf" and data["runs"][1]["epsilon_target"] == 8.0
    assert data["runs"][0]["tpr_at_1pct_fpr"] is None
    assert (tmp_path / "out" / "exposure.png").stat().st_size > 0


def test_fast_path_equals_the_loop_on_the_user_level_model(split):
    # UserLM (one user per example, rows summed) goes through the exact vmap fallback
    x, y, _ = lm.pack_users(split.private, split.private_users, max_rows=64, rng=np.random.default_rng(0))
    model = lm.UserLM(lm.build_model(CharTokenizer().vocab_size, S).double())
    order = torch.argsort((y != -100).any(-1).sum(1))    # the lightest users: rows of padding
    xs, ys = x[order[:3], :12], y[order[:3], :12]
    fast = clipped_grad_sum(model, lm.user_lm_loss, xs, ys, max_grad_norm=0.5, method="fast")
    loop = clipped_grad_sum(model, lm.user_lm_loss, xs, ys, max_grad_norm=0.5, method="loop")
    # finetune's user-level runs: the loop, on the non-padding rows only
    skip = clipped_grad_sum(lm.UserLM(model.lm, skip_padding=True), lm.user_lm_loss, xs, ys, max_grad_norm=0.5,
                            method="loop")
    assert (ys == -100).all(-1).any()  # some padding rows to skip
    for a, b, c in zip(fast, loop, skip):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(c, b, rtol=1e-6, atol=1e-9)


def test_clip_only_clips_without_noise_and_reports_the_clipped_fraction(split):
    base = lm.build_model(CharTokenizer().vocab_size, S)
    small = lm.LMScale(finetune_epochs=1, batch_size=16)
    _, rec = lm.finetune(base, split, small, epsilon=math.inf, clip_only=True)
    assert rec["sigma"] == 0 and rec["clip_only"] and 0 <= rec["clipped_fraction"] <= 1
    _, rec = lm.finetune(base, split, small, epsilon=math.inf)
    assert math.isnan(rec["clipped_fraction"]) and not rec["clip_only"]
    with pytest.raises(ValueError, match="inf"):
        lm.finetune(base, split, small, epsilon=8.0, clip_only=True)


def test_every_private_run_has_its_non_private_control():
    for scale in ("smoke", "book"):
        runs = lm.default_runs(scale)
        for eps, method, unit, *extra in runs:
            if math.isfinite(eps):
                assert (math.inf, method, unit) in runs or (math.inf, method, unit, "clip") in runs
        assert (math.inf, "full", "user", "clip") in runs and (math.inf, "full", "example", "clip") in runs


def test_replicates_draw_fresh_canary_codes_and_train_again(split):
    base = lm.build_model(CharTokenizer().vocab_size, S)
    small = lm.LMScale(finetune_epochs=1, batch_size=16)
    reps = lm.replicate_exposures(base, split, small, [(math.inf, "full", "example")], seeds=(1, 2))
    assert [r["seed"] for r in reps] == [1, 2] and all(r["run"] == [math.inf, "full", "example"] for r in reps)
    assert all(sorted(r["exposure"], key=int) == ["1", "4"] for r in reps)
    # each seed's split: the same rows and users, fresh codes in the canary rows only
    a, b = (lm.recode_canaries(split, np.random.default_rng([s, 20])) for s in (1, 2))
    assert [c.code for c in a.canaries] != [c.code for c in b.canaries]
    for new in (a, b):
        changed = (new.private != split.private).any(1)
        assert 0 < int(changed.sum()) <= 1 + 4 and np.array_equal(new.private_users, split.private_users)
        tok = CharTokenizer()
        for c in new.canaries:
            rows = [i for i in range(len(new.private)) if tok.decode(new.private[i].tolist()).startswith(c.text)]
            assert len(rows) == c.repetitions and set(new.private_users[rows]) == {c.user}


def test_build_model_can_untie_the_output_layer():
    tied = lm.build_model(CharTokenizer().vocab_size, S)
    untied = lm.build_model(CharTokenizer().vocab_size, S, tie_word_embeddings=False)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    extra = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert extra == CharTokenizer().vocab_size * S.n_embd


def test_sequence_lira_trains_each_model_on_its_half_of_the_pool(split):
    base = lm.build_model(CharTokenizer().vocab_size, S)
    small = lm.LMScale(finetune_epochs=1, batch_size=8)
    res = lm.sequence_lira(base, split, small, epsilon=math.inf, n_models=4, pool_size=16, seed=0)
    keep, losses = res["keep"], res["losses"]
    assert keep.shape == losses.shape == res["lira"].shape == (4, 16)
    assert (keep.sum(1) == 8).all() and all(r["n_units"] == 8 for r in res["runs"])
    # the pool is ordinary text: no canary row (the canaries come after the n_private rows)
    n_plain = len(split.private) - sum(c.repetitions for c in split.canaries)
    assert max(res["pool_rows"]) < n_plain and len(set(res["pool_rows"])) == 16
    # each model's loss on the pool is the loss of a fresh fine-tune on its own half
    again = lm.sequence_lira(base, split, small, epsilon=math.inf, n_models=4, pool_size=16, seed=0)
    np.testing.assert_allclose(again["losses"], losses)
    summary = lm.sequence_mia(res, n_boot=20)
    assert summary["n_members"] + summary["n_nonmembers"] + summary["n_dropped"] == 64
    assert 0 <= summary["lira_auc"] <= 1 and 0 <= summary["loss_tpr@0.1"] <= 1
    with pytest.raises(ValueError, match="pool_size"):
        lm.sequence_lira(base, split, small, epsilon=math.inf, n_models=4, pool_size=10_000)


@pytest.mark.parametrize("scale", ["smoke", "book", "paper"])
def test_every_scale_fits_the_corpus(scale):
    """Each scale's split builds for many split seeds (the paper scale once asked for more
    128-character chunks than the corpus has, so `privlab lm --scale paper` could not start)."""
    s = lm.LM_SCALES[scale]
    for seed in range(20):
        split = make_text_split(seq_len=s.seq_len, n_private=s.n_private, n_public=s.n_public,
                                n_users=s.n_users, canaries_per_repetition=s.canaries_per_repetition,
                                rng=np.random.default_rng(seed))
        assert len(split.public) == s.n_public


def test_the_user_level_schedule_does_not_depend_on_the_user_removed():
    """Review of chapter 14: the user-level steps (hence sigma) were computed from the private row
    count, which removing a user changes (by that user's rows). They now come from the split's planned
    row count, a configuration constant, and the number of users."""
    from privlab.datasets.text import make_text_split

    s = lm.LM_SCALES["smoke"]
    split = make_text_split(seq_len=s.seq_len, n_private=s.n_private, n_public=s.n_public, n_users=s.n_users,
                            canaries_per_repetition=s.canaries_per_repetition, rng=np.random.default_rng(0))
    assert split.planned_private_rows == len(split.private)
    users = np.unique(split.private_users)
    full = lm.training_schedule(s, unit="user", planned_rows=split.planned_private_rows, n_units=len(users),
                                batch=max(2, len(users) // 4))
    # a neighbour without one user: fewer rows, one user fewer, the same planned row count
    without = lm.training_schedule(s, unit="user", planned_rows=split.planned_private_rows,
                                   n_units=len(users) - 1, batch=max(2, (len(users) - 1) // 4))
    heavy = int(np.bincount(np.searchsorted(users, split.private_users)).max())
    rows_based = lm.training_schedule(s, unit="user", planned_rows=len(split.private) - heavy,
                                      n_units=len(users) - 1, batch=max(2, (len(users) - 1) // 4))
    assert without[1] == full[1]  # the steps do not move with the user removed ...
    assert rows_based[1] != full[1]  # ... where reading the rows did (the review's 160 -> 135 at smoke)
    assert full[1] == lm.training_schedule(s, unit="example", planned_rows=split.planned_private_rows,
                                           n_units=len(split.private), batch=s.batch_size)[1]
    no_plan = dataclasses.replace(split, planned_private_rows=None)
    with pytest.raises(ValueError, match="planned_private_rows"):
        lm.finetune(None, no_plan, s, epsilon=1.0, method="full", unit="user", seed=0)


def test_schedules_count_steps_as_train_does_and_lira_pools_hold_a_batch():
    """round(N / B) and train's round(1 / (B / N)) differ at N / B = x.5 (784 / 32: 24 against 25: sigma
    calibrated for 24 steps, 25 run); paper scale's LiRA pool of 128 gave each shadow model 64 sequences for a
    batch of 256 (q = 4), found after all the fine-tuning."""
    from privlab.dpsgd import steps_per_epoch
    from privlab.experiments import language_model as lm

    s = lm.LM_SCALES["smoke"]
    assert lm.training_schedule(s, unit="example", planned_rows=784, n_units=784, batch=32) == (
        s.finetune_epochs, s.finetune_epochs * steps_per_epoch(32 / 784)) == (s.finetune_epochs, 25 * s.finetune_epochs)
    for name, scale in lm.LM_SCALES.items():
        assert scale.batch_size <= scale.lira_pool // 2, name
    with pytest.raises(ValueError, match="lira_pool must be >= 512"):
        lm._check_lira_pool(lm.LM_SCALES["paper"], 128)
