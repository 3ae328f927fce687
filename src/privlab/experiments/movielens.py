r"""The StreamRec recipe on real ratings: a user-level DP-SGD recommender on MovieLens (implicit feedback).

**Privacy unit: one user with all their ratings** (add/remove-one-user
neighbouring datasets). Example-level DP would be the wrong unit here twice
over: each training rating brings one sampled negative (removing a rating
removes two rows), and the per-user time split below looks at a user's count.
Both are *per-user* transformations (a user's rows depend on that user's
ratings only), so under user-level DP they cost nothing: removing a user
leaves the distribution of every other user's rows unchanged (the cap's order and
the negatives come from one shared random stream, so with a fixed seed the draws
shift; the guarantee needs only the distribution). What the release assumes public: the item
catalogue (ids and genres; a service's catalogue is public) and the user-id
space. The user table has one row per id in a public range ``1..max_user_id``
(pass ``max_user_id``; MovieLens numbers its users 1..max), and a user's row is
``userId - 1``: adding or removing a user changes neither the table's shape nor
another user's row. Without ``max_user_id`` the table is sized and indexed from
the users in ``df`` (``pd.factorize``), which is only right if that set of ids
is public. The catalogue must
not be computed from the private users' ratings: the embedding rows, the
``genres`` buffer and the negative-sampling universe all depend on it, and a
movie with a single rater would appear or vanish with that user. Pass it as
``catalogue`` to :func:`prepare_movielens` (items nobody in ``df`` rated keep
their rows); without it the catalogue is the movies rated in ``df``, which is
only right if that set is public.

Data (:func:`prepare_movielens`, from :func:`privlab.datasets.load_movielens`):
a rating :math:`r_{ui} \ge 4` is a positive (*liked*), a lower rating a
negative. A random ``public_fraction`` of users (chosen by ``rng`` from the
user ids alone) play *public* users, an opt-in panel whose data may be used
without privacy cost: their rows choose :math:`C` and the prior; they are in
neither training nor evaluation. **Time-based split per user**: each user's
last 20% of ratings (by timestamp, at least one) are the test period.
Training rows are the training ratings plus, per rating, one item the user
had not rated in the training period, labelled 0 (the test period is not looked
at: it may be an item the user rates later). **Ranking**: every test user with a
liked test item ranks its test items (relevant if liked) together with 100 items
it never rated (label 0; drawn independently, so one can repeat). Training has about 26% positives (half the rows are sampled
negatives) and the test ratings about half: a *prior shift*, so thresholded
metrics (accuracy, F1 at logit 0) mislead and the chapter reads AUC, Recall@20
and NDCG@20, which do not depend on a threshold.

Models: :class:`MovieLensRecommender`, user and item embeddings
(:math:`d = 16`) and the item's genres through Linear-LayerNorm-ReLU blocks;
with DP every embedding coordinate gets noise. The remedy measured in chapter
13, ``model="features"``: no ID embeddings; a user is the mean genre vector of
the items they liked in training (computed from their own history, an input
of the model, not a parameter: the released model holds no per-user state),
so the private part is a small MLP.

Groups: users by training activity, ``light_users`` (bottom third of rating
counts), ``medium_users``, ``heavy_users``: the analogue of StreamRec's new
users, whose histories are sparse.

Used in: chapter 13.
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
from privlab.dpsgd import DPSGDConfig, steps_per_epoch, summarize_grad_norms
from privlab.metrics import metrics_table

from .streamrec import METRICS, calibrate_sigma, prior_log_odds, torch_threads
from .user_level import pack_by_user, train_user_level

__all__ = ["MovieLensData", "MovieLensFeatureModel", "MovieLensRecommender", "prepare_movielens", "run_movielens"]


@dataclass(frozen=True, eq=False)
class MovieLensData:
    """Index arrays of the prepared data; users and items are 0-based codes."""

    n_users: int
    n_items: int
    genres: np.ndarray  # (I, G) float32 multi-hot, the public catalogue
    train_user: np.ndarray  # private users' training rows: ratings, then one sampled negative each
    train_item: np.ndarray
    y_train: np.ndarray
    test_user: np.ndarray
    test_item: np.ndarray
    y_test: np.ndarray
    cand_user: np.ndarray
    cand_item: np.ndarray
    cand_label: np.ndarray
    user_activity: np.ndarray  # (U,) training ratings per user
    user_profile: np.ndarray  # (U, G) float32: mean genres of the user's liked training items
    public_user: np.ndarray  # (U,) bool: the public panel
    pub_user: np.ndarray  # the public users' training rows (same construction)
    pub_item: np.ndarray
    y_pub: np.ndarray

    def groups(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Private users by activity tercile: ``{name: (test_mask, cand_mask)}``."""
        act = self.user_activity[~self.public_user]
        cuts = np.quantile(act, [1 / 3, 2 / 3])
        tier = np.digitize(self.user_activity, cuts, right=True)
        names = ("light_users", "medium_users", "heavy_users")
        return {n: (tier[self.test_user] == j, tier[self.cand_user] == j) for j, n in enumerate(names)}


def _sample_unrated(users: np.ndarray, rated: set, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``users`` that is not in ``rated`` for that user (rejection sampling).

    Draws are independent, so a user's sampled items can repeat.

    Raises:
        ValueError: a user for whom 100 rounds of draws found no such item (one who rated almost
            every item); a rated item would otherwise be returned as a negative.
    """
    items = rng.integers(0, n_items, size=users.size)
    for attempt in range(101):
        bad = np.array([(u, i) in rated for u, i in zip(users.tolist(), items.tolist())], dtype=bool)
        if not bad.any():
            return items
        if attempt < 100:
            items[bad] = rng.integers(0, n_items, size=int(bad.sum()))
    u = int(users[np.flatnonzero(bad)[0]])
    raise ValueError(f"user row {u} (userId {u + 1} when ids start at 1) has (almost) no unrated item "
                     f"among {n_items}: no negative to sample")


def prepare_movielens(df: pd.DataFrame, *, rng: np.random.Generator, test_fraction: float = 0.2,
                      n_negatives: int = 100, like_threshold: float = 4.0, public_fraction: float = 0.1,
                      catalogue: pd.DataFrame | None = None,
                      max_user_id: int | None = None) -> MovieLensData:  # fmt: skip
    """Implicit feedback, public panel, per-user time split, sampled negatives, candidates (module docstring).

    Args:
        df: ratings with columns ``userId, movieId, rating, timestamp, genres``.
        rng: numpy Generator for the public panel and the sampled negatives.
        test_fraction: share of each user's latest ratings held out.
        n_negatives: unrated items added to each test user's candidates.
        like_threshold: a rating at or above it is a positive.
        public_fraction: share of users in the public panel (at least one).
        catalogue: the public item catalogue, columns ``movieId, genres`` (one row per movie);
            every rated movie must be in it. ``None``: the movies rated in ``df`` (module docstring).
        max_user_id: the public user-id range ``1..max_user_id``: the user table has that many
            rows and user ``u`` is row ``u - 1`` (the public panel is drawn from the range).
            ``None``: the ids in ``df``, factorized (module docstring).

    Raises:
        ValueError: a bad fraction or count, missing columns, a rated movie not in the catalogue,
            or a user id outside ``1..max_user_id``.

    >>> df = pd.DataFrame({"userId": [1, 1, 1, 2, 2, 2], "movieId": [10, 11, 12, 10, 11, 13],
    ...                    "rating": [5, 2, 4, 4, 1, 5], "timestamp": [1, 2, 3, 1, 2, 3],
    ...                    "genres": ["A", "B", "A|B", "A", "B", "B"]})
    >>> d = prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=1, public_fraction=0.5)
    >>> d.n_users, d.n_items, int(d.public_user.sum()), d.train_user.size, d.pub_user.size
    (2, 4, 1, 4, 4)
    >>> cat = pd.DataFrame({"movieId": [10, 11, 12, 13, 14], "genres": ["A", "B", "A|B", "B", "C"]})
    >>> prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=1, public_fraction=0.5,
    ...                   catalogue=cat).n_items
    5
    >>> prepare_movielens(df, rng=np.random.default_rng(0), n_negatives=1, public_fraction=0.5,
    ...                   max_user_id=10).n_users
    10
    """
    rng = check_rng(rng)
    check_probability("test_fraction", test_fraction, open_low=True, open_high=True)
    check_probability("public_fraction", public_fraction, open_low=True, open_high=True)
    n_negatives = check_int("n_negatives", n_negatives, minimum=1)
    missing = {"userId", "movieId", "rating", "timestamp", "genres"} - set(df.columns)
    if missing:
        raise ValueError(f"df lacks the columns {sorted(missing)}")
    df = df.sort_values(["userId", "timestamp", "movieId"], kind="stable").reset_index(drop=True)
    if max_user_id is None:
        user = pd.factorize(df["userId"], sort=True)[0].astype(np.int64)
    else:
        max_user_id = check_int("max_user_id", max_user_id, minimum=1)
        user = df["userId"].to_numpy().astype(np.int64) - 1
        if ((user < 0) | (user >= max_user_id)).any():
            raise ValueError(f"user ids must lie in the public range 1..{max_user_id}")
    if catalogue is None:
        catalogue = df[["movieId", "genres"]]
    cat = catalogue.drop_duplicates("movieId").sort_values("movieId", kind="stable").reset_index(drop=True)
    item_ids = pd.Index(cat["movieId"])
    item = item_ids.get_indexer(df["movieId"]).astype(np.int64)
    if (item < 0).any():
        raise ValueError(f"{int((item < 0).sum())} ratings name movies that are not in the catalogue")
    n_users = int(user.max()) + 1 if max_user_id is None else max_user_id
    n_items = len(item_ids)
    first = cat["genres"].astype(str)
    genre_lists = first.str.split("|")
    vocab = sorted({g for gs in genre_lists for g in gs})
    genres = np.zeros((n_items, len(vocab)), np.float32)
    for i, gs in zip(first.index, genre_lists):
        genres[i, [vocab.index(g) for g in gs]] = 1.0
    public = np.zeros(n_users, bool)  # chosen from the user ids alone
    public[rng.choice(n_users, size=max(1, round(public_fraction * n_users)), replace=False)] = True
    liked = (df["rating"].to_numpy() >= like_threshold).astype(np.float32)
    pos = df.groupby(user).cumcount().to_numpy()
    count = np.bincount(user, minlength=n_users)[user]
    n_test = np.maximum(1, np.ceil(test_fraction * count)).astype(int)
    is_test = pos >= count - n_test  # per user: depends on that user's ratings only
    rated = set(zip(user.tolist(), item.tolist()))
    tr_mask = ~is_test
    # training negatives avoid the training period's ratings only: avoiding the held-out ones too would
    # use the test period to build the training set (a user's test items never drawn as negatives)
    rated_train = set(zip(user[tr_mask].tolist(), item[tr_mask].tolist()))

    def rows(mask):
        u, i, y = user[mask], item[mask], liked[mask]
        neg = _sample_unrated(u, rated_train, n_items, rng)
        return np.concatenate([u, u]), np.concatenate([i, neg]), np.concatenate([y, np.zeros_like(y)])

    train_user, train_item, y_train = rows(tr_mask & ~public[user])
    pub_user, pub_item, y_pub = rows(tr_mask & public[user])
    like_tr = tr_mask & (liked > 0)
    n_liked = np.bincount(user[like_tr], minlength=n_users)
    profile = np.zeros((n_users, genres.shape[1]), np.float32)
    np.add.at(profile, user[like_tr], genres[item[like_tr]])
    profile /= np.maximum(n_liked, 1)[:, None]
    te = is_test & ~public[user]
    te_u, te_i, te_y = user[te], item[te], liked[te]
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
                         user_activity=np.bincount(user[tr_mask], minlength=n_users), user_profile=profile,
                         public_user=public, pub_user=pub_user, pub_item=pub_item, y_pub=y_pub)  # fmt: skip


def _mlp(width: int, hidden: Sequence[int]) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for h in hidden:
        blocks += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
        width = h
    return nn.Sequential(*blocks, nn.Linear(width, 1))


class MovieLensRecommender(nn.Module):
    r"""Embeddings and genres to a like-logit: :math:`z = \mathrm{MLP}([e_u; e_i; g_i])`.

    Inputs: user and item ids of any shape ``(...)``; output logits of the same shape.

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
        self.mlp = _mlp(2 * dim + self.genres.shape[1], hidden)

    def forward(self, user, item):
        x = torch.cat([self.user_emb(user), self.item_emb(item), self.genres[item]], dim=-1)
        return self.mlp(x).squeeze(-1)


class MovieLensFeatureModel(nn.Module):
    r"""No ID embeddings: :math:`z = \mathrm{MLP}([p_u; g_i; p_u \odot g_i])`, :math:`p_u` the user's genre profile.

    The genres are the public catalogue (a buffer); the profile :math:`p_u` is an
    input computed from the user's own history, so the released model holds no
    per-user state and its private part is the MLP only.

    >>> m = MovieLensFeatureModel(np.zeros((7, 3), np.float32))
    >>> m(torch.zeros(2, 3), torch.tensor([2, 3])).shape
    torch.Size([2])
    """

    def __init__(self, genres: np.ndarray, *, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.register_buffer("genres", torch.as_tensor(genres, dtype=torch.float32))
        self.mlp = _mlp(3 * self.genres.shape[1], hidden)

    def forward(self, profile, item):
        g = self.genres[item]
        return self.mlp(torch.cat([profile, g, profile * g], dim=-1)).squeeze(-1)


def _make_model(kind: str, data: MovieLensData, seed: int, bias: float) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (MovieLensRecommender(data.n_users, data.n_items, data.genres) if kind == "embedding"
                 else MovieLensFeatureModel(data.genres))  # fmt: skip
    with torch.no_grad():
        model.mlp[-1].bias.fill_(bias)
    return model


def _inputs(kind: str, data: MovieLensData, user: np.ndarray, item: np.ndarray) -> list[torch.Tensor]:
    first = torch.from_numpy(user) if kind == "embedding" else torch.from_numpy(data.user_profile[user])
    return [first, torch.from_numpy(item)]


def run_movielens(data: MovieLensData, *, epsilons: Sequence[float] = (1, 3, 8, math.inf), epochs: int = 3,
                  batch_size: int = 64, lr: float = 2e-3, max_rows: int = 64, model: str = "embedding",
                  clip_quantile: float = 0.5, seed: int = 0, progress: bool = False,
                  threads: int | None = 1) -> list[dict]:  # fmt: skip
    r"""Train one user-level DP model per epsilon and evaluate; one record each.

    Users are Poisson-sampled (``batch_size`` users expected per step), each
    contributes at most ``max_rows`` rows and its summed gradient is clipped to
    :math:`C` (:mod:`privlab.experiments.user_level`); :math:`\sigma` is
    PLD-calibrated with :math:`N = U` users and :math:`\delta = 1/(100U)`.
    :math:`C` is the ``clip_quantile`` of the per-user gradient norms of a
    non-private run on the public panel, and the output bias starts at the
    panel's prior log-odds: neither spends privacy. ``epsilon = inf`` trains
    the same packed data without clipping or noise.

    Args:
        model: ``"embedding"`` (:class:`MovieLensRecommender`) or ``"features"``
            (:class:`MovieLensFeatureModel`, the remedy for dense noise on embeddings).

    Returns:
        Records: ``privacy_unit, model, epsilon_target, sigma, epsilon_pld, epsilon_rdp, delta,
        sample_rate, steps, n_units, max_grad_norm, n_parameters, metrics, segments, train_loss``
        (per row, per epoch), ``loss_falls, mean_logit, prior_log_odds, output_bias`` (the output bias
        after training; it starts at ``prior_log_odds``), ``fraction_predicted_positive,
        fraction_clipped, wall_seconds``.
    """
    if model not in ("embedding", "features"):
        raise ValueError(f"model must be 'embedding' or 'features', got {model!r}")
    with torch_threads(threads):
        return _run_movielens(data, epsilons=epsilons, epochs=check_int("epochs", epochs),
                              batch_size=check_int("batch_size", batch_size), lr=lr,
                              max_rows=check_int("max_rows", max_rows), kind=model,
                              quantile=check_probability("clip_quantile", clip_quantile), seed=seed,
                              progress=progress)  # fmt: skip


def _run_movielens(data, *, epsilons, epochs, batch_size, lr, max_rows, kind, quantile, seed, progress):
    bce = nn.BCEWithLogitsLoss(reduction="none")
    prior = prior_log_odds(data.y_pub)
    rng = np.random.default_rng(seed)
    pub = pack_by_user(data.pub_user, _inputs(kind, data, data.pub_user, data.pub_item), data.y_pub,
                       max_rows=max_rows, rng=rng)  # fmt: skip
    cfg0 = DPSGDConfig(noise_multiplier=0.0, max_grad_norm=None, epochs=epochs,
                       batch_size=min(batch_size, pub.n_users), lr=lr, optimizer="adam", accountant=None,
                       progress=False, record_grad_norms=True)  # fmt: skip
    res0 = train_user_level(_make_model(kind, data, seed, prior), pub, row_loss=bce, config=cfg0,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
    c = float(np.quantile(res0.grad_norms, quantile))
    packed = pack_by_user(data.train_user, _inputs(kind, data, data.train_user, data.train_item), data.y_train,
                          max_rows=max_rows, rng=rng)  # fmt: skip
    u = packed.n_users
    b = min(batch_size, u)
    q = b / u
    steps = epochs * steps_per_epoch(q)
    delta = 1.0 / (100 * u)
    rows_per_user = packed.rows_kept / u
    records = []
    for eps in epsilons:
        eps = check_epsilon(eps, allow_inf=True)
        cal = calibrate_sigma(eps, sample_rate=q, steps=steps, delta=delta)
        private = not math.isinf(eps)
        cfg = DPSGDConfig(noise_multiplier=cal["sigma"], max_grad_norm=c if private else None, epochs=epochs,
                          batch_size=b, lr=lr, optimizer="adam", delta=delta, accountant=None,
                          progress=progress, record_grad_norms=private)  # fmt: skip
        net = _make_model(kind, data, seed, prior)
        start = time.perf_counter()
        res = train_user_level(net, packed, row_loss=bce, config=cfg, generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - start
        net.eval()
        with torch.no_grad():
            s_test = net(*_inputs(kind, data, data.test_user, data.test_item)).numpy()
            s_cand = net(*_inputs(kind, data, data.cand_user, data.cand_item)).numpy()
        table = metrics_table(data.y_test, s_test, data.cand_user, data.cand_label, s_cand, k=20, threshold=0.0,
                         groups=data.groups())  # fmt: skip
        losses = [float(v) / rows_per_user for v in res.losses]
        frac = (float(summarize_grad_norms(res.grad_norms, clip_norms=[c]).fraction_clipped[c])
                if private else None)  # fmt: skip
        records.append({
            "privacy_unit": "user", "model": kind, "epsilon_target": eps, "sigma": cal["sigma"],
            "epsilon_pld": cal["epsilon_pld"], "epsilon_rdp": cal["epsilon_rdp"], "delta": delta,
            "sample_rate": q, "steps": res.steps, "n_units": u, "rows_kept": packed.rows_kept,
            "rows_total": packed.rows_total, "max_grad_norm": c if private else None,
            "n_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "metrics": {m: float(table.loc["overall", m]) for m in METRICS},
            "segments": {g: {m: float(table.loc[g, m]) for m in METRICS} for g in table.index if g != "overall"},
            "train_loss": losses, "losses": losses, "final_loss": losses[-1], "loss_falls": losses[-1] < losses[0],
            "mean_logit": float(np.mean(s_test)), "prior_log_odds": prior,
            "output_bias": float(net.mlp[-1].bias.detach()[0]), "lr": lr,
            "test_log_odds": prior_log_odds(data.y_test),
            "fraction_predicted_positive": float(np.mean(s_test > 0)), "fraction_clipped": frac,
            "wall_seconds": wall,
        })  # fmt: skip
    return records
