"""Secure aggregation: Shamir, fixed point, masked inputs are uniform, exact sums, dropout recovery."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privlab.config import make_rng, make_torch_generator
from privlab.federated import (
    FedAvg,
    SecAggConfig,
    SecAggDropoutError,
    decode,
    encode,
    hospital_sites,
    make_model,
    secure_sum,
    shamir_reconstruct,
    shamir_share,
    simulate,
)
from privlab.federated.secagg import PRIME, encode, prg


def test_shamir_any_t_shares_recover_fewer_do_not():
    secret = int.from_bytes(make_rng(0).bytes(32), "big")
    shares = shamir_share(secret, threshold=3, num_shares=5, rng=make_rng(1))
    for subset in itertools.combinations(shares, 3):
        assert shamir_reconstruct(subset, threshold=3) == secret
    with pytest.raises(SecAggDropoutError):
        shamir_reconstruct(shares[:2], threshold=3)
    # two shares of a 3-of-5 sharing are consistent with *any* secret: interpolating them
    # with a third point (0, s') gives a valid polynomial for every s'
    assert shamir_reconstruct(shares[:2] + [(6, 12345)], threshold=3) != secret
    with pytest.raises(ValueError, match="threshold"):
        shamir_share(1, threshold=6, num_shares=5, rng=make_rng(0))
    with pytest.raises(ValueError, match="secret"):
        shamir_share(PRIME, threshold=2, num_shares=3, rng=make_rng(0))


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=20),
       bits=st.sampled_from([(16, 32), (24, 64), (40, 64)]))
def test_fixed_point_round_trip_within_half_a_step(values, bits):
    f, m = bits
    x = np.array(values)
    if np.abs(x).max() * 2.0**f >= 2.0 ** (m - 1):
        return
    np.testing.assert_allclose(decode(encode(x, frac_bits=f, modulus_bits=m), frac_bits=f, modulus_bits=m),
                               x, rtol=0, atol=2.0 ** -(f + 1))


@pytest.mark.parametrize("modulus_bits", [32, 64])
def test_a_masked_input_is_uniform_on_the_ring(modulus_bits):
    """The server's view of one client: y_u = x_u + masks mod 2^M. Chi-squared on the top 6 bits."""
    d = 2**14
    x = np.zeros((3, d))
    x[0] = 0.123  # a constant, highly non-uniform input
    res = secure_sum(x, rng=make_rng(9), frac_bits=12, modulus_bits=modulus_bits)
    for u in (0, 1):
        top = (res.masked_inputs[u] >> np.uint64(modulus_bits - 6)).astype(np.int64)
        counts = np.bincount(top, minlength=64)
        assert stats.chisquare(counts).pvalue > 1e-4
    # and the sum is still exact
    np.testing.assert_allclose(res.total, x.sum(0), atol=3 * 2.0**-13)


def test_sum_is_exact_up_to_fixed_point_rounding():
    rng = make_rng(0)
    x = rng.normal(size=(8, 500)) * 3
    for f, m in [(16, 32), (24, 64)]:
        res = secure_sum(x, rng=make_rng(1), frac_bits=f, modulus_bits=m)
        assert res.included == tuple(range(8)) and res.dropped == ()
        assert np.abs(res.total - x.sum(0)).max() <= 8 * 2.0 ** -(f + 1)


def test_dropouts_before_and_after_masking_are_recovered():
    x = make_rng(3).normal(size=(7, 64))
    res = secure_sum(x, rng=make_rng(4), threshold=4, drop_before_masking=[1, 5], drop_after_masking=[2])
    # 1 and 5 never sent y_u: excluded, their pairwise masks removed; 2 sent y_u then vanished: included
    assert res.included == (0, 2, 3, 4, 6) and res.dropped == (1, 5)
    np.testing.assert_allclose(res.total, x[[0, 2, 3, 4, 6]].sum(0), atol=7 * 2.0**-25)


def test_dropout_beyond_the_threshold_is_an_error_not_a_wrong_sum():
    x = make_rng(3).normal(size=(6, 16))
    with pytest.raises(SecAggDropoutError, match="threshold is 4"):
        secure_sum(x, rng=make_rng(0), threshold=4, drop_before_masking=[0, 1, 2])
    with pytest.raises(SecAggDropoutError, match="unmasking"):
        secure_sum(x, rng=make_rng(0), threshold=4, drop_before_masking=[0], drop_after_masking=[1, 2])
    assert issubclass(SecAggDropoutError, ValueError)


def test_inputs_the_ring_cannot_sum_are_refused_by_name():
    x = np.zeros((3, 4))
    x[2, 1] = 1e6
    with pytest.raises(ValueError, match="client 2"):
        secure_sum(x, rng=make_rng(0), frac_bits=16, modulus_bits=32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="client 2"):
        secure_sum(x, rng=make_rng(0))
    with pytest.raises(ValueError, match="threshold"):
        secure_sum(np.zeros((3, 2)), rng=make_rng(0), threshold=4)
    with pytest.raises(ValueError, match="modulus_bits"):
        SecAggConfig(modulus_bits=48)


def test_bad_protocol_parameters_are_refused_by_name():
    """A red-team read: dropout indices outside 0..n-1 were ignored (the sum kept every client), a ring of
    16 bits made the PRG broadcast half as many masks (the masked input leaked x[0] - x[1]), and a
    threshold fraction of 0 gave t = 1 (every share the secret itself)."""
    x = np.arange(12.0).reshape(6, 2)
    for bad in ([6], [-1], [2.0], [True]):
        with pytest.raises(ValueError, match=rf"drop_before_masking must hold client indices in 0 .. 5, got "
                                             rf"{re.escape(repr(bad[0]))}"):
            secure_sum(x, rng=make_rng(0), drop_before_masking=bad)
    with pytest.raises(ValueError, match="drop_after_masking must hold client indices in 0 .. 5, got 7"):
        secure_sum(x, rng=make_rng(0), drop_after_masking=[7])
    for kwargs, match in [(dict(modulus_bits=16), "modulus_bits must be 32 or 64, got 16"),
                          (dict(modulus_bits=48), "modulus_bits must be 32 or 64, got 48"),
                          (dict(frac_bits=31, modulus_bits=32), "frac_bits must be below modulus_bits - 1 = 31"),
                          (dict(frac_bits=-1), "frac_bits must be")]:
        with pytest.raises(ValueError, match=match):
            secure_sum(x, rng=make_rng(0), **kwargs)
        with pytest.raises(ValueError, match=match):
            encode(x[0], **{"frac_bits": 8, **kwargs})
    with pytest.raises(ValueError, match="modulus_bits must be 32 or 64, got 16"):
        prg(bytes(32), 2, modulus_bits=16)
    with pytest.raises(ValueError, match=r"threshold must be at least 2 with n = 6 clients, got 1"):
        secure_sum(x, rng=make_rng(0), threshold=1)
    with pytest.raises(ValueError, match=r"threshold_fraction must be in \(0, 1\), got 0"):
        SecAggConfig(threshold_fraction=0)
    assert secure_sum(x[:1], rng=make_rng(0), threshold=1).total.tolist() == [0.0, 1.0]  # n = 1: t = 1 is all


def test_a_sum_at_the_ring_bound_never_wraps():
    # issue 13, defect 6(a): two clients each sending 64 - 2^-25 (f = 24, M = 32) encode to 2^30 each; the
    # float check |x| <= (2^31 - 1) / (2^24 n) passed them and the sum 2^31 wrapped to -128
    x = np.full((2, 1), 64 - 2.0**-25)
    with pytest.raises(ValueError, match="client 0"):
        secure_sum(x, rng=make_rng(0), frac_bits=24, modulus_bits=32)
    # one grid step lower they encode to 2^30 - 1 each: the sum 2^31 - 2 fits, and is exact
    ok = secure_sum(np.full((2, 1), 64 - 2.0**-24), rng=make_rng(0), frac_bits=24, modulus_bits=32).total
    assert ok.tolist() == [128 - 2.0**-23]
    big = np.full((3, 1), float(2**62))  # beyond int64 after scaling: refused, not an overflowing cast
    with pytest.raises(ValueError, match="client 0"):
        secure_sum(big, rng=make_rng(0))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), frac=st.integers(0, 24), m=st.sampled_from([32, 64]), sign=st.sampled_from([1, -1]),
       off=st.integers(-3, 3))  # fmt: skip
def test_secure_sum_is_right_or_refuses_near_the_bound(n, frac, m, sign, off):
    if frac >= m - 1:
        return
    # every client sends a value whose encoding is off steps from the largest allowed, floor((2^(M-1) - 1) / n)
    q = (2 ** (m - 1) - 1) // n + off
    x = np.full((n, 1), sign * q / 2.0**frac)
    if float(sign * q / 2.0**frac) * 2.0**frac != sign * q:  # q not representable as a float: skip
        return
    try:
        total = secure_sum(x, rng=make_rng(1), frac_bits=frac, modulus_bits=m).total
    except ValueError as err:
        assert off > 0 and "client" in str(err)  # refused only above the bound
        return
    assert off <= 0
    assert total[0] == pytest.approx(n * sign * q / 2.0**frac, rel=1e-15)  # never wrapped


def test_one_client_can_run_the_protocol():
    # a Poisson-sampled round with one client: the sum is its vector
    res = secure_sum(np.array([[1.5, -2.0]]), rng=make_rng(0))
    assert res.total.tolist() == [1.5, -2.0] and res.included == (0,) and res.threshold == 1
    with pytest.raises(ValueError, match="n >= 1"):
        secure_sum(np.zeros((0, 2)), rng=make_rng(0))


def test_fedavg_with_secure_aggregation_equals_plain_fedavg():
    data = hospital_sites(rng=make_rng(0), num_features=4)
    model = make_model(4, 8, generator=make_torch_generator(0))
    algo = FedAvg(rounds=2, clients_per_round=4, local_lr=0.2)
    plain = simulate(model, data, algo, rng=make_rng(2))
    secure = simulate(model, data, algo, rng=make_rng(2), secure_aggregation=SecAggConfig())
    assert plain.history["clients"].tolist() == secure.history["clients"].tolist()  # same sampling
    torch.testing.assert_close(secure.params, plain.params, rtol=0, atol=1e-5)
