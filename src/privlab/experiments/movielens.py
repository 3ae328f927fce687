r"""The StreamRec recipe on real ratings: a DP-SGD recommender on MovieLens (implicit feedback).

Data (:func:`prepare_movielens`, from :func:`privlab.datasets.load_movielens`):
a rating :math:`r_{ui} \ge 4` is a positive (*liked*), a lower rating a
negative. **Time-based split per user**: each user's last 20% of ratings (by
timestamp, at least one) are the test period. Training rows are the training
ratings plus, per rating, one item the user never rated, labelled 0 (implicit
feedback: unrated is weakly negative). **Ranking**: every test user with a
liked test item ranks its test items (relevant if liked) together with 100
items it never rated (label 0); Recall@20 and NDCG@20 come from that ranking
(:func:`privlab.metrics.evaluate`). Pointwise metrics (accuracy, AUC, F1) are
on the test ratings: liked or not.

Model (:class:`MovieLensRecommender`): user and item embeddings
(:math:`d = 16`) and the item's genre vector, concatenated, through
Linear-LayerNorm-ReLU blocks (64, 32) to one logit; every layer has a fast
per-example norm in :mod:`privlab.dpsgd`, so DP-SGD trains it directly.
The privacy unit is one row (a rating or a sampled non-rating): example-level
DP, as in StreamRec; user-level DP would need per-user clipping. The split
and the sampled negatives use the training data but release nothing.

Groups: users by training activity, ``light_users`` (bottom third of rating
counts), ``medium_users``, ``heavy_users`` -- the analogue of StreamRec's new
users, whose histories are sparse.

Used in: chapter 12.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from privlab._validate import check_epsilon, check_int, check_probability, check_rng

__all__ = ["MovieLensData", "MovieLensRecommender", "prepare_movielens", "run_movielens"]

METRICS = ("accuracy", "auc", "f1", "recall@20", "ndcg@20")


@dataclass(frozen=True, eq=False)
class MovieLensData:
    """Index arrays of the prepared data; users and items are 0-based codes."""

    n_users: int
    n_items: int
    genres: np.ndarray  # (I, G) float32 multi-hot
    train_user: np.ndarray
    train_item: np.ndarray
    y_train: np.ndarray
    test_user: np.ndarray
    test_item: np.ndarray
    y_test: np.ndarray
    cand_user: np.ndarray
    cand_item: np.ndarray
    cand_label: np.ndarray
    user_activity: np.ndarray  # (U,) training ratings per user

    def groups(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Users by activity tercile: ``{name: (test_mask, cand_mask)}``."""
        cuts = np.quantile(self.user_activity, [1 / 3, 2 / 3])
        tier = np.digitize(self.user_activity, cuts, right=True)
        names = ("light_users", "medium_users", "heavy_users")
        return {n: (tier[self.test_user] == j, tier[self.cand_user] == j) for j, n in enumerate(names)}


def _sample_unrated(users: np.ndarray, rated: set, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``users`` that the user never rated (rejection sampling)."""
    items = rng.integers(0, n_items, size=users.size)
    for _ in range(100):
        bad = np.array([(u, i) in rated for u, i in zip(users.tolist(), items.tolist())], dtype=bool)
        if not bad.any():
            break
        items[bad] = rng.integers(0, n_items, size=int(bad.sum()))
    return items


def prepare_movielens(df: pd.DataFrame, *, rng: np.random.Generator, test_fraction: float = 0.2,
                      n_negatives: int = 100, like_threshold: float = 4.0) -> MovieLensData:  # fmt: skip
    """Implicit feedback, per-user time split, sampled negatives, ranking candidates (module docstring).

    Args:
        df: ratings with columns ``userId, movieId, rating, timestamp, genres``.
        rng: numpy Generator for the sampled negatives.
        test_fraction: share of each user's latest ratings held out.
        n_negatives: unrated items added to each test user's candidates.
        like_threshold: a rating at or above it is a positive.
    """
    rng = check_rng(rng)
    check_probability("test_fraction", test_fraction, open_low=True, open_high=True)
    n_negatives = check_int("n_negatives", n_negatives, minimum=1)
    df = df.sort_values(["userId", "timestamp", "movieId"], kind="stable").reset_index(drop=True)
    user = pd.factorize(df["userId"], sort=True)[0].astype(np.int64)
    item_codes, item_ids = pd.factorize(df["movieId"], sort=True)
    item = item_codes.astype(np.int64)
    n_users, n_items = int(user.max()) + 1, len(item_ids)
    first = df.groupby(item, sort=True)["genres"].first()
    genre_lists = first.str.split("|")
    vocab = sorted({g for gs in genre_lists for g in gs})
    genres = np.zeros((n_items, len(vocab)), np.float32)
    for i, gs in zip(first.index, genre_lists):
        genres[i, [vocab.index(g) for g in gs]] = 1.0
    liked = (df["rating"].to_numpy() >= like_threshold).astype(np.float32)
    pos = df.groupby(user).cumcount().to_numpy()
    count = np.bincount(user)[user]
    n_test = np.maximum(1, np.ceil(test_fraction * count)).astype(int)
    is_test = pos >= count - n_test
    rated = set(zip(user.tolist(), item.tolist()))
    tr_u, tr_i, tr_y = user[~is_test], item[~is_test], liked[~is_test]
    neg_i = _sample_unrated(tr_u, rated, n_items, rng)
    train_user = np.concatenate([tr_u, tr_u])
    train_item = np.concatenate([tr_i, neg_i])
    y_train = np.concatenate([tr_y, np.zeros_like(tr_y)])
    te_u, te_i, te_y = user[is_test], item[is_test], liked[is_test]
    eval_users = np.unique(te_u[te_y > 0])
    keep = np.isin(te_u, eval_users)
    neg_u = np.repeat(eval_users, n_negatives)
    cu = np.concatenate([te_u[keep], neg_u])
    ci = np.concatenate([te_i[keep], _sample_unrated(neg_u, rated, n_items, rng)])
    cl = np.concatenate([te_y[keep], np.zeros(neg_u.size, np.float32)])
    order = np.lexsort((rng.random(cu.size), cu))
    return MovieLensData(n_users=n_users, n_items=n_items, genres=genres, train_user=train_user,
                         train_item=train_item, y_train=y_train, test_user=te_u, test_item=te_i, y_test=te_y,
                         cand_user=cu[order], cand_item=ci[order], cand_label=cl[order],
                         user_activity=np.bincount(tr_u, minlength=n_users))  # fmt: skip


class MovieLensRecommender(nn.Module):
    r"""Embeddings and genres to a like-logit: :math:`z = \mathrm{MLP}([e_u; e_i; g_i])`, shape ``(B,)``.

    >>> m = MovieLensRecommender(5, 7, np.zeros((7, 3), np.float32))
    >>> m(torch.tensor([0, 1]), torch.tensor([2, 3])).shape
    torch.Size([2])
    """

    def __init__(self, n_users: int, n_items: int, genres: np.ndarray, *, dim: int = 16,
                 hidden: Sequence[int] = (64, 32)) -> None:  # fmt: skip
        super().__init__()
        self.user_emb = nn.Embedding(check_int("n_users", n_users), check_int("dim", dim))
        self.item_emb = nn.Embedding(check_int("n_items", n_items), dim)
        self.register_buffer("genres", torch.as_tensor(genres, dtype=torch.float32))
        blocks: list[nn.Module] = []
        width = 2 * dim + self.genres.shape[1]
        for h in hidden:
            blocks += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*blocks, nn.Linear(width, 1))

    def forward(self, user, item):
        x = torch.cat([self.user_emb(user), self.item_emb(item), self.genres[item]], dim=1)
        return self.mlp(x).squeeze(-1)


def run_movielens(data: MovieLensData, *, epsilons: Sequence[float] = (1, 3, 8, math.inf), epochs: int = 3,
                  batch_size: int = 1024, lr: float = 2e-3, max_grad_norm: float = 1.0, seed: int = 0,
                  progress: bool = False, threads: int | None = 1) -> list[dict]:  # fmt: skip
    """Train one model per epsilon (PLD-calibrated sigma, delta = 1/N) and evaluate; one record each.

    Records: ``epsilon_target, sigma, epsilon_rdp, delta, steps, metrics, segments, final_loss, wall_seconds``.
    ``threads``: torch intra-op threads while it runs (see :func:`privlab.experiments.streamrec.torch_threads`).
    """
    from .streamrec import torch_threads

    with torch_threads(threads):
        return _run_movielens(data, epsilons=epsilons, epochs=epochs, batch_size=batch_size, lr=lr,
                              max_grad_norm=max_grad_norm, seed=seed, progress=progress)  # fmt: skip


def _run_movielens(data, *, epsilons, epochs, batch_size, lr, max_grad_norm, seed, progress) -> list[dict]:
    from privlab.dpsgd import DPSGDConfig, train
    from privlab.metrics import evaluate

    from .streamrec import _steps, calibrate_sigma

    n = int(data.train_user.size)
    q, steps = _steps(n, check_int("batch_size", batch_size), check_int("epochs", epochs))
    delta = 1.0 / n
    X = (torch.from_numpy(data.train_user), torch.from_numpy(data.train_item))
    y = torch.from_numpy(data.y_train)
    records = []
    for eps in epsilons:
        eps = check_epsilon(eps, allow_inf=True)
        cal = calibrate_sigma(eps, sample_rate=q, steps=steps, delta=delta)
        private = not math.isinf(eps)
        cfg = DPSGDConfig(noise_multiplier=cal["sigma"], max_grad_norm=max_grad_norm if private else None,
                          epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", delta=delta,
                          accountant=None, progress=progress)  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MovieLensRecommender(data.n_users, data.n_items, data.genres)
        start = time.perf_counter()
        res = train(model, X, y, loss_fn=nn.BCEWithLogitsLoss(reduction="none"), config=cfg,
                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
        wall = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            s_test = model(torch.from_numpy(data.test_user), torch.from_numpy(data.test_item)).numpy()
            s_cand = model(torch.from_numpy(data.cand_user), torch.from_numpy(data.cand_item)).numpy()
        table = evaluate(data.y_test, s_test, data.cand_user, data.cand_label, s_cand, k=20, threshold=0.0,
                         groups=data.groups())  # fmt: skip
        records.append({
            "epsilon_target": eps, "sigma": cal["sigma"], "epsilon_rdp": cal["epsilon_rdp"], "delta": delta,
            "steps": res.steps, "metrics": {m: float(table.loc["overall", m]) for m in METRICS},
            "segments": {g: {m: float(table.loc[g, m]) for m in METRICS} for g in table.index if g != "overall"},
            "final_loss": float(res.losses[-1]), "losses": list(res.losses), "wall_seconds": wall,
        })  # fmt: skip
    return records
