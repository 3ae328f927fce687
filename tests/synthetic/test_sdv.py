"""The SDV 2 wrappers run (1 epoch on a few hundred rows), are seeded, leave global state alone.

CTGAN and TVAE are never trained for more than one epoch here; their quality is not tested.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from privlab.datasets import load_cps1988
from privlab.synthetic import SYNTHESIZERS, SdvConfig, SdvSynthesizer, make_synthesizer, sdv_config, sdv_metadata
from privlab.synthetic.tables import restore_dtypes


@pytest.fixture(scope="module")
def small():
    return load_cps1988().sample(300, random_state=0).reset_index(drop=True)


def test_scale_profiles():
    assert sdv_config("ctgan", "smoke") == SdvConfig(epochs=1, batch_size=500, max_rows=1000)
    assert sdv_config("ctgan", "book") == SdvConfig(epochs=15, batch_size=500, max_rows=None)
    assert sdv_config("tvae", "paper") == SdvConfig(epochs=300, batch_size=500, max_rows=None)  # SDV defaults
    assert sdv_config("gaussian_copula", "book").epochs is None
    with pytest.raises(ValueError, match="name must be"):
        sdv_config("gan", "book")


def test_metadata_types_follow_dtypes(small):
    cols = sdv_metadata(small).to_dict()["tables"]["table"]["columns"]
    assert {c: v["sdtype"] for c, v in cols.items()} == {
        "wage": "numerical", "education": "numerical", "experience": "numerical", "ethnicity": "categorical",
        "smsa": "categorical", "region": "categorical", "parttime": "categorical"}


@pytest.mark.parametrize("name", ["gaussian_copula", "tvae"])  # CTGAN: the next test
def test_wrappers_fit_and_sample_with_the_input_schema(small, name):
    syn = make_synthesizer(name, seed=0, scale="smoke", epochs=1, batch_size=100, device="cpu")
    out = syn.fit(small).sample(50, rng=1)
    assert out.shape == (50, 7) and out.dtypes.equals(small.dtypes)
    for c in ("ethnicity", "smsa", "region", "parttime"):
        assert list(out[c].cat.categories) == list(small[c].cat.categories) and out[c].notna().all()
    assert syn.fit_seconds_ > 0 and syn.n_train_ == 300


def test_ctgan_is_reproducible_and_leaves_global_generators_alone(small):
    np.random.seed(123)
    torch.manual_seed(123)
    np_before, torch_before = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    threads = torch.get_num_threads()
    a = SdvSynthesizer("ctgan", seed=5, epochs=1, batch_size=100, max_rows=200, device="cpu").fit(small)
    assert np.array_equal(np.random.get_state()[1], np_before) and torch.equal(torch.get_rng_state(), torch_before)
    assert torch.get_num_threads() == threads
    b = SdvSynthesizer("ctgan", seed=5, epochs=1, batch_size=100, max_rows=200, device="cpu").fit(small)
    out = a.sample(40, rng=2)
    pd.testing.assert_frame_equal(out, b.sample(40, rng=2))
    assert out.shape == (40, 7) and out.dtypes.equals(small.dtypes) and a.n_train_ == 200
    # the fitted subsample is exposed, so a privacy evaluation labels only those rows members
    assert len(a.fitted_rows_) == 200 and np.array_equal(a.fitted_rows_, b.fitted_rows_)
    assert len(np.unique(a.fitted_rows_)) == 200 and a.fitted_rows_.max() < len(small)
    assert not a.sample(40, rng=2).equals(a.sample(40, rng=3))


def test_bad_arguments(small):
    with pytest.raises(ValueError, match="multiple of pac"):
        SdvSynthesizer("ctgan", seed=0, batch_size=105)
    with pytest.raises(ValueError, match="int seed"):
        make_synthesizer("tvae", seed=None)
    with pytest.raises(ValueError, match="has missing values"):
        make_synthesizer("gaussian_copula", seed=0).fit(small.assign(wage=np.nan))
    with pytest.raises(ValueError, match="at least one row"):
        make_synthesizer("gaussian_copula", seed=0).fit(small.iloc[:0])
    with pytest.raises(ValueError, match="fit"):
        make_synthesizer("gaussian_copula", seed=0).sample(5)
    with pytest.raises(ValueError, match="1 sampled value\\(s\\) not among the categories") as err:  # unseen at sample time
        restore_dtypes(pd.DataFrame({"c": ["a", "z"]}), {"c": pd.CategoricalDtype(["a", "b"])})
    assert "'z'" not in str(err.value)  # no value in the message: it may be data
    assert set(SYNTHESIZERS) == {"gaussian_copula", "ctgan", "tvae", "marginal", "independent", "copy"}
