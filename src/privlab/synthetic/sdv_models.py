r"""Thin wrappers over SDV 2 (GaussianCopula, CTGAN, TVAE) with one interface, scale and seeds.

SDV 2.0 (``sdv.single_table``) is driven by a :class:`sdv.metadata.Metadata`
and, in 2.0, takes and returns *dictionaries of tables*: ``synth.fit({"t": df})``
and ``synth.sample(n)["t"]`` (older tutorials pass a bare DataFrame and
``SingleTableMetadata``; they break). The wrapper hides this:

>>> from privlab.datasets import load_cps1988
>>> df = load_cps1988().head(200)
>>> gc = SdvSynthesizer("gaussian_copula", seed=0).fit(df)
>>> gc.sample(3, rng=1).dtypes.equals(df.dtypes)
True

What is and is not seeded (SDV 2.0.0, ctgan 0.12.1, copulas 0.14.1, rdt 2.0.0):

* ``fit``: SDV takes no seed. CTGAN and TVAE draw from torch's and numpy's
  *global* generators while training (weights, batches, noise). The wrapper
  seeds both (and CUDA's) inside a context and restores the caller's states
  afterwards, so nothing global changes; with ``device="cuda"`` cuDNN/cuBLAS
  kernels may still be non-deterministic. GaussianCopula fits deterministically.
  RDT's transformers seed themselves from a hash of the data.
* ``sample``: SDV seeds its model once with a fixed constant (73251) and then
  advances; the wrapper reseeds it before every call with a seed drawn from
  ``rng`` (through SDV's private ``_set_random_state``, the only hook 2.0 has).
* the training subsample (``max_rows``) is drawn with the wrapper's seed.

Epochs, batch size and rows come from the scale profile: ``smoke`` subsamples
to 1,000 rows and trains 1 epoch; ``book`` trains 15 epochs on all rows with
SDV's batch of 500; ``paper`` uses SDV's defaults (300 epochs, batch 500, all
rows) on a GPU when present. Measured on 2 shared CPU cores with one torch
thread (see ``threads``): CTGAN about 2.3 s and TVAE about 0.6 s per epoch on
10,000 CPS1988 rows, so a book-scale CTGAN on the 14,000-row training half takes
about a minute, and SDV's default of 300 epochs about 16 minutes on the same CPU (a
GPU shortens it; it is not required). Two speed fixes matter: ctgan's preprocessing runs
``joblib.Parallel`` with worker processes (about 20 s of start-up on 2 cores;
we run it sequentially: threads would race on numpy's global generator), and torch's and BLAS's 2 threads on a loaded
2-core machine ran 2 to 8 times slower than 1 thread (TVAE, 1 epoch on all
rows: 50 s against 16 s).

Reference: Patki, Wedge, Veeramachaneni 2016 (SDV); Xu, Skoularidou,
Cuesta-Infante, Veeramachaneni 2019, arXiv:1907.00503 (CTGAN, TVAE).

Used in: chapter 10.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import joblib
import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from privlab._validate import check_int
from privlab.config import get_device, get_scale
from privlab.synthetic.domain import is_numeric_column
from privlab.synthetic.tables import as_rng, check_frame, restore_dtypes

__all__ = ["SdvConfig", "sdv_config", "sdv_metadata", "SdvSynthesizer", "SDV_MODELS"]

#: Our names for the SDV single-table synthesizers.
SDV_MODELS = {"gaussian_copula": "GaussianCopulaSynthesizer", "ctgan": "CTGANSynthesizer",
              "tvae": "TVAESynthesizer"}
_TABLE = "table"


@dataclass(frozen=True)
class SdvConfig:
    """Training size of an SDV model: epochs and batch size (``None`` for GaussianCopula), rows used."""

    epochs: int | None
    batch_size: int | None
    max_rows: int | None  # None: all rows


def sdv_config(name: str, scale=None) -> SdvConfig:
    """The scale profile's epochs, batch size and row cap for SDV model ``name``.

    >>> sdv_config("ctgan", "smoke")
    SdvConfig(epochs=1, batch_size=500, max_rows=1000)
    >>> sdv_config("tvae", "paper")
    SdvConfig(epochs=300, batch_size=500, max_rows=None)

    Used in: chapter 10.
    """
    if name not in SDV_MODELS:
        raise ValueError(f"name must be one of {sorted(SDV_MODELS)}, got {name!r}")
    s = get_scale(scale)
    rows = s.pick(smoke=1_000, book=0, paper=0) or None  # 0: all rows (pick() reads paper=None as "as book")
    if name == "gaussian_copula":
        return SdvConfig(None, None, rows)
    # CTGAN needs a batch divisible by pac = 10 and even
    return SdvConfig(s.pick(smoke=1, book=15, paper=300), 500, rows)


def sdv_metadata(df: pd.DataFrame):
    """SDV 2 :class:`~sdv.metadata.Metadata` for one table: numeric columns numerical, the rest categorical.

    Built explicitly rather than by ``Metadata.detect_from_dataframe``, whose
    guesses (an integer column with few values becomes categorical, a unique
    column becomes an id) change the model.
    """
    from sdv.metadata import Metadata  # sdv is an optional extra ([book]): imported on use

    cols = {str(c): {"sdtype": "numerical" if is_numeric_column(df[c]) else "categorical"} for c in df.columns}
    return Metadata.load_from_dict({"tables": {_TABLE: {"columns": cols}}, "relationships": []})


@contextlib.contextmanager
def _scoped_global_seed(seed: int, cuda: bool):
    """Seed numpy's and torch's global generators for the block, then put the caller's states back."""
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device as well
    try:
        yield
    finally:
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def _scoped_threads(threads: int | None):
    """torch's, BLAS's and OpenMP's thread counts for the block (``None``: unchanged), then the caller's back."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):  # numpy/scipy BLAS and sklearn's OpenMP (the mixture models)
            yield
    finally:
        torch.set_num_threads(before)


class SdvSynthesizer:
    """One SDV 2 single-table synthesizer behind ``fit(df)`` / ``sample(n, rng=)``.

    Args:
        name: ``"gaussian_copula"``, ``"ctgan"`` or ``"tvae"``.
        seed: seeds the training subsample, the fit and the default sampling stream.
        scale: the scale profile (``None``: ``$PRIVLAB_SCALE``), for epochs, batch, rows.
        epochs, batch_size, max_rows: override the profile.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available), SDV's ``enable_gpu``.
        threads: torch's intra-op threads, and BLAS/OpenMP threads (threadpoolctl), while fitting
            and sampling (``None``: leave as is). The default 1 is deliberate: on 2 shared CPU
            cores, threads spinning against other work made fits 2 to 8 times slower than 1 thread.
        verbose: SDV's own per-epoch printout.
        **sdv_kwargs: passed to the SDV class (e.g. ``default_distribution``, ``pac``).

    Not differentially private: the model may memorise training records.

    Used in: chapter 10.
    """

    def __init__(self, name: str, *, seed: int, scale=None, epochs: int | None = None,
                 batch_size: int | None = None, max_rows: int | None = None, device: str | None = None,
                 threads: int | None = 1, verbose: bool = False, **sdv_kwargs) -> None:
        cfg = sdv_config(name, scale)
        self.name, self.seed = name, check_int("seed", seed, minimum=0)
        self.epochs = cfg.epochs if epochs is None else check_int("epochs", epochs)
        self.batch_size = cfg.batch_size if batch_size is None else check_int("batch_size", batch_size, minimum=2)
        self.max_rows = cfg.max_rows if max_rows is None else check_int("max_rows", max_rows)
        pac = sdv_kwargs.get("pac", 10)
        if name == "ctgan" and (self.batch_size % pac or self.batch_size % 2):
            raise ValueError(f"CTGAN's batch_size must be even and a multiple of pac = {pac}, got {self.batch_size}")
        self.device = get_device(device)
        self.threads = None if threads is None else check_int("threads", threads)
        self.verbose, self.sdv_kwargs = verbose, sdv_kwargs
        self._sample_rng = np.random.default_rng([self.seed, 1])
        self.fit_seconds_: float | None = None

    def _make(self, metadata):
        import sdv.single_table as st  # optional extra, see sdv_metadata

        cls = getattr(st, SDV_MODELS[self.name])
        kwargs = dict(self.sdv_kwargs)
        if self.name != "gaussian_copula":
            kwargs.update(epochs=self.epochs, batch_size=self.batch_size, verbose=self.verbose,
                          enable_gpu=self.device.type == "cuda")
        return cls(metadata, **kwargs)

    def fit(self, df: pd.DataFrame) -> SdvSynthesizer:
        """Fit on ``df`` (subsampled to ``max_rows`` with the seed); returns ``self``.

        ``fitted_rows_`` holds the positions in ``df`` of the rows actually fitted (all of
        them without a cap): pass ``df.iloc[fitted_rows_]`` as ``members`` to
        :func:`privlab.synthetic.evaluate_synthetic`.

        Raises:
            ValueError: an empty frame, NaN or all-NaN columns.
        """
        df = check_frame("df", df)
        keep = np.arange(len(df))
        if self.max_rows is not None and len(df) > self.max_rows:
            keep = np.sort(np.random.default_rng([self.seed, 0]).choice(len(df), self.max_rows, replace=False))
            df = df.iloc[keep]
        self.fitted_rows_ = keep  # positions in the frame passed to fit: the members a privacy evaluation needs
        self.columns_, self.dtypes_ = list(df.columns), df.dtypes.to_dict()
        # SDV's CTGAN/TVAE refuse pandas 'category' columns: hand them objects, restore on sampling
        train = df.astype({c: object for c in df.columns if not is_numeric_column(df[c])})
        train.columns = [str(c) for c in train.columns]
        self.synthesizer_ = self._make(sdv_metadata(train))
        start = time.perf_counter()
        # ctgan's DataTransformer runs joblib.Parallel(n_jobs=-1) with worker *processes* that re-import
        # torch and sklearn: 20 s of overhead on 2 cores; run it in-process and sequentially (threads
        # would race on numpy's global generator and make fits irreproducible)
        with _scoped_global_seed(self.seed, self.device.type == "cuda"), _scoped_threads(self.threads), \
                warnings.catch_warnings(), joblib.parallel_config(backend="sequential"):
            warnings.simplefilter("ignore", FutureWarning)  # rdt's Series.replace on categoricals
            self.synthesizer_.fit({_TABLE: train})
        self.fit_seconds_ = time.perf_counter() - start
        self.n_train_ = len(train)
        return self

    def sample(self, n: int, *, rng: np.random.Generator | int | None = None) -> pd.DataFrame:
        """``n`` synthetic rows with the training frame's columns and dtypes.

        ``rng`` (Generator or int) picks the seed SDV samples with; ``None``
        continues the synthesizer's own seeded stream.
        """
        if not hasattr(self, "synthesizer_"):
            raise ValueError("call fit(df) before sample(n)")
        n = check_int("n", n)
        gen = self._sample_rng if rng is None else as_rng(rng, None)
        self.synthesizer_._set_random_state(int(gen.integers(2**31 - 1)))
        with warnings.catch_warnings(), joblib.parallel_config(backend="sequential"), _scoped_threads(self.threads):
            warnings.simplefilter("ignore", FutureWarning)
            out = self.synthesizer_.sample(n)[_TABLE]
        out.columns = self.columns_
        return restore_dtypes(out, self.dtypes_)
