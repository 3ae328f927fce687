r"""Two reference generators for the evaluation: one that forgets everything, one that forgets nothing.

* :class:`IndependentSynthesizer` draws every column independently from its
  empirical marginal: perfect 1-way fidelity, no correlations (the published
  "bad" synthetic of chapter 10). Not DP: it copies the observed values.
* :class:`CopySynthesizer` returns training records with optional Gaussian jitter
  of ``noise`` standard deviations on numeric columns: a memorising generator
  that scores high on fidelity and is caught by DCR and membership inference.

>>> import pandas as pd
>>> df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "b"]})
>>> copies = CopySynthesizer(seed=0).fit(df).sample(2, rng=0)
>>> bool(copies.merge(df).shape[0] == 2)  # every synthetic row is a training row
True

Used in: chapter 10.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from privlab._validate import check_int, check_nonnegative
from privlab.synthetic.domain import is_numeric_column
from privlab.synthetic.tables import as_rng, check_frame, restore_dtypes

__all__ = ["IndependentSynthesizer", "CopySynthesizer"]


class _Resampler:
    def __init__(self, *, seed: int | None = None) -> None:
        self.seed = seed
        self._sample_rng = np.random.default_rng(seed)

    def fit(self, df: pd.DataFrame):
        """Store the training frame (a copy); returns ``self``."""
        self.data_ = check_frame("df", df).reset_index(drop=True).copy()
        return self

    def _rng(self, n, rng):
        if not hasattr(self, "data_"):
            raise ValueError("call fit(df) before sample(n)")
        return check_int("n", n), (self._sample_rng if rng is None else as_rng(rng, None))


class IndependentSynthesizer(_Resampler):
    r"""Each column resampled independently: :math:`\hat P(x) = \prod_j \hat P_j(x_j)`.

    Used in: chapter 10.
    """

    def sample(self, n: int, *, rng: np.random.Generator | int | None = None) -> pd.DataFrame:
        """``n`` rows, each column drawn with replacement from its own training values."""
        n, gen = self._rng(n, rng)
        m = len(self.data_)
        cols = {c: self.data_[c].to_numpy()[gen.integers(0, m, n)] for c in self.data_.columns}
        return restore_dtypes(pd.DataFrame(cols), self.data_.dtypes.to_dict())


class CopySynthesizer(_Resampler):
    r"""Training rows drawn with replacement, numeric columns jittered by :math:`\mathcal N(0, (\text{noise}\cdot s_j)^2)`.

    Args:
        noise: jitter in units of each numeric column's standard deviation :math:`s_j` (0: exact copies).
        seed: seeds the default sampling stream.

    Used in: chapter 10.
    """

    def __init__(self, *, noise: float = 0.0, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.noise = check_nonnegative("noise", noise)

    def sample(self, n: int, *, rng: np.random.Generator | int | None = None) -> pd.DataFrame:
        """``n`` (jittered) copies of training rows; integer columns are rounded back.

        Sets ``source_rows_``: the position in the training frame of each returned
        row's source (so a chapter can ask whether a jittered record's nearest
        training record is still its own source).

        >>> df = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
        >>> gen = CopySynthesizer(seed=0).fit(df)
        >>> out = gen.sample(4, rng=1)
        >>> out["x"].tolist() == df["x"].iloc[gen.source_rows_].tolist()
        True
        """
        n, gen = self._rng(n, rng)
        self.source_rows_ = gen.integers(0, len(self.data_), n)
        out = self.data_.iloc[self.source_rows_].reset_index(drop=True)
        if self.noise > 0:
            out = out.copy()
            for c in out.columns:
                if is_numeric_column(out[c]):
                    sd = float(self.data_[c].std(ddof=0)) or 1.0
                    out[c] = out[c].to_numpy(dtype=float) + gen.normal(0.0, self.noise * sd, n)
        return restore_dtypes(out, self.data_.dtypes.to_dict())
