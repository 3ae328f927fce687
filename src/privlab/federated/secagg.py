r"""Secure aggregation by pairwise masking (Bonawitz et al. 2017), with dropout recovery.

The server must learn :math:`\sum_{u \in U} x_u` and nothing else about any
single :math:`x_u \in \mathbb R^d`. Each client sends instead, in the ring
:math:`\mathbb Z_R`, :math:`R = 2^{M}` (:math:`M` = ``modulus_bits``),

.. math::
    y_u = \bar x_u + \mathrm{PRG}(b_u)
          + \sum_{v \in U_2,\, u < v} \mathrm{PRG}(s_{u,v})
          - \sum_{v \in U_2,\, u > v} \mathrm{PRG}(s_{u,v}) \pmod R,

with :math:`\bar x_u = \mathrm{round}(2^f x_u)` the fixed-point encoding
(:math:`f` = ``frac_bits``), :math:`s_{u,v} = s_{v,u}` a seed that :math:`u` and
:math:`v` agree on by Diffie-Hellman (X25519, then HKDF-SHA256), and :math:`b_u` a
private *self mask* seed. Pairwise masks cancel in the sum; each :math:`y_u` alone
is uniform on :math:`\mathbb Z_R^d` (a one-time pad by the PRG, AES-256-CTR).

Dropouts. Before masking, every client splits :math:`b_u` and its DH mask key
:math:`s^{SK}_u` into :math:`t`-of-:math:`n` Shamir shares over the prime field
:math:`\mathbb F_p`, :math:`p = 2^{521}-1`, sent (AES-GCM encrypted under a second
DH key) through the server. In the unmasking round each surviving client reveals,
for every client, *either* its share of :math:`b_u` (if :math:`y_u` arrived) *or*
of :math:`s^{SK}_u` (if it did not) -- never both. From :math:`t` responses the
server removes the self masks of the clients it heard from and the pairwise
masks of those it did not. With fewer than :math:`t` responses it raises
:class:`SecAggDropoutError`: it never returns a wrong sum.

Fixed point: the sum is exact up to rounding, :math:`|\hat S - S| \le n\,2^{-f-1}`
per coordinate, provided no coordinate of the sum of the encoded integers leaves
the signed range :math:`[-2^{M-1}, 2^{M-1} - 1]` of the ring. Each client checks
its own *encoded* integers, exactly:
:math:`|\mathrm{round}(2^f x_u)| \le \lfloor (2^{M-1} - 1)/n \rfloor`, so the
sum of the :math:`n` encodings stays within :math:`2^{M-1} - 1` in absolute value
(a check on the real :math:`x_u` in floating point can pass a value that rounds
up to the bound: two clients sending :math:`64 - 2^{-25}` with :math:`f = 24`,
:math:`M = 32` each encode to :math:`2^{30}` and the sum wraps to :math:`-128`).

Reference: Bonawitz et al., *Practical Secure Aggregation for Privacy-Preserving
Machine Learning*, CCS 2017 (eprint 2017/281), Figure 4 (the honest-but-curious
protocol; the consistency-check round and signatures against an active server are
omitted). Shamir, *How to share a secret*, CACM 1979.

Simulation note: key material is drawn from the explicit ``rng`` so a run is
reproducible; a deployment draws it from the operating system (``secrets``).

Used in: chapter 9.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._validate import check_int, check_probability, check_rng

__all__ = [
    "PRIME", "SecAggConfig", "SecAggDropoutError", "SecAggResult", "decode", "encode", "prg",
    "secure_sum", "shamir_reconstruct", "shamir_share",
]

#: The Mersenne prime :math:`2^{521} - 1`: the Shamir field holds 32-byte secrets.
PRIME = 2**521 - 1
_SECRET_BYTES = 66  # 528 bits >= 521


class SecAggDropoutError(ValueError):
    """Too few clients remain to unmask the sum (fewer than the threshold)."""


# --- Shamir secret sharing over F_p --------------------------------------------------------------

def _field_element(rng: np.random.Generator) -> int:
    while True:  # rejection sampling: uniform on [0, p)
        value = int.from_bytes(rng.bytes(_SECRET_BYTES), "big") >> (8 * _SECRET_BYTES - 521)
        if value < PRIME:
            return value


def shamir_share(secret: int, *, threshold: int, num_shares: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    r"""Split ``secret`` into shares :math:`(i, P(i))`, :math:`i = 1..n`, any :math:`t` of which recover it.

    .. math::  P(z) = s + a_1 z + \dots + a_{t-1} z^{t-1} \pmod p, \quad a_j \sim U(\mathbb F_p)

    >>> from privlab.config import make_rng
    >>> shares = shamir_share(42, threshold=3, num_shares=5, rng=make_rng(0))
    >>> shamir_reconstruct(shares[1:4], threshold=3)
    42
    """
    t, n = check_int("threshold", threshold), check_int("num_shares", num_shares)
    if t > n:
        raise ValueError(f"threshold must be <= num_shares = {n}, got {t}")
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be an integer in [0, 2**521 - 1)")
    coeffs = [secret] + [_field_element(check_rng(rng)) for _ in range(t - 1)]
    shares = []
    for i in range(1, n + 1):
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * i + c) % PRIME
        shares.append((i, acc))
    return shares


def shamir_reconstruct(shares: Sequence[tuple[int, int]], *, threshold: int) -> int:
    r"""Lagrange interpolation at 0: :math:`s = \sum_j y_j \prod_{m \ne j} \frac{x_m}{x_m - x_j} \pmod p`.

    Raises:
        SecAggDropoutError: with fewer than ``threshold`` distinct shares.
    """
    pts = dict(shares)
    if len(pts) < threshold:
        raise SecAggDropoutError(f"{len(pts)} shares cannot reconstruct a {threshold}-of-n secret")
    pts = dict(list(pts.items())[:threshold])
    secret = 0
    for xj, yj in pts.items():
        num = den = 1
        for xm in pts:
            if xm != xj:
                num, den = num * xm % PRIME, den * (xm - xj) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret


# --- fixed point, PRG, key agreement ---------------------------------------------------------------

def encode(x: np.ndarray, *, frac_bits: int, modulus_bits: int = 64, max_abs: int | None = None) -> np.ndarray:
    r"""Fixed point in :math:`\mathbb Z_{2^M}`: :math:`\mathrm{round}(2^f x) \bmod 2^M` (two's complement), uint64.

    The rounding is exact (scaling by :math:`2^f` is exact in binary floating
    point, then round half to even), and the range check is done on the
    resulting integers: every :math:`|\mathrm{round}(2^f x)|` must be at most
    ``max_abs`` (default :math:`2^{M-1} - 1`, the largest that decodes to itself).

    Raises:
        ValueError: a NaN or infinite value, or an encoded integer above ``max_abs``
            (the message gives the bound, not the value).

    >>> decode(encode(np.array([-1.5, 0.25]), frac_bits=8), frac_bits=8).tolist()
    [-1.5, 0.25]
    >>> encode(np.array([64 - 2.0**-25]), frac_bits=24, modulus_bits=32, max_abs=(2**31 - 1) // 2)
    Traceback (most recent call last):
    ...
    ValueError: a value encodes (2^24 fixed point) to more than 1073741823 in absolute value, the most the ring Z_2^32 can sum here without wrapping
    """
    _check_ring(frac_bits, modulus_bits)
    limit = 2 ** (modulus_bits - 1) - 1 if max_abs is None else int(max_abs)
    scaled = np.asarray(x, dtype=np.float64) * 2.0**frac_bits  # exact: a power of two
    if not np.all(np.isfinite(scaled)):
        raise ValueError("values to encode must be finite")
    q = np.rint(scaled)
    if float(np.abs(q).max(initial=0.0)) > limit:  # exact: Python compares a float with an int exactly
        raise ValueError(f"a value encodes (2^{frac_bits} fixed point) to more than {limit} in absolute value, the "
                         f"most the ring Z_2^{modulus_bits} can sum here without wrapping")
    return q.astype(np.int64).astype(np.uint64) & _mask(modulus_bits)


def decode(v: np.ndarray, *, frac_bits: int, modulus_bits: int = 64) -> np.ndarray:
    """The inverse of :func:`encode`: ring elements to signed floats."""
    _check_ring(frac_bits, modulus_bits)
    v = np.asarray(v, dtype=np.uint64) & _mask(modulus_bits)
    if modulus_bits == 64:
        signed = v.view(np.int64)
    else:
        signed = v.astype(np.int64) - np.where(v >= np.uint64(2 ** (modulus_bits - 1)), 2**modulus_bits, 0)
    return signed.astype(np.float64) / 2.0**frac_bits


def _check_ring(frac_bits: int, modulus_bits: int) -> None:
    """``modulus_bits`` 32 or 64 and ``0 <= frac_bits < modulus_bits - 1`` (a red-team read: with 16 the
    PRG returned half as many mask elements, broadcast over the vector, and the masked inputs leaked
    differences of a client's coordinates)."""
    if modulus_bits not in (32, 64) or isinstance(modulus_bits, bool):
        raise ValueError(f"modulus_bits must be 32 or 64, got {modulus_bits!r}")
    check_int("frac_bits", frac_bits, minimum=0)
    if frac_bits >= modulus_bits - 1:
        raise ValueError(f"frac_bits must be below modulus_bits - 1 = {modulus_bits - 1}, got {frac_bits!r}")


def _mask(modulus_bits: int) -> np.uint64:
    return np.uint64(2**modulus_bits - 1)


def prg(seed: bytes, size: int, *, modulus_bits: int = 64) -> np.ndarray:
    """Expand a 32-byte seed into ``size`` uniform elements of :math:`\\mathbb Z_{2^M}` (AES-256-CTR keystream)."""
    _check_ring(0, modulus_bits)
    width = modulus_bits // 8
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(width * size))
    out = np.frombuffer(stream, dtype=np.uint64 if width == 8 else np.uint32).astype(np.uint64)
    if out.shape != (size,):  # pragma: no cover - one mask element per coordinate, never broadcast
        raise RuntimeError(f"the PRG gave {out.shape[0]} mask elements for {size} coordinates")
    return out


def _agree(sk: X25519PrivateKey, pk_bytes: bytes, purpose: bytes) -> bytes:
    shared = sk.exchange(X25519PublicKey.from_public_bytes(pk_bytes))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"privlab-secagg " + purpose).derive(shared)


def _raw(pk: X25519PublicKey) -> bytes:
    return pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- the protocol ----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Parameters of the protocol: the Shamir threshold and the fixed-point ring.

    Args:
        threshold_fraction: :math:`t = \\lfloor \\text{fraction} \\cdot n \\rfloor + 1` (default: a majority).
        frac_bits: :math:`f`. modulus_bits: :math:`M \\in \\{32, 64\\}`.
    """

    threshold_fraction: float = 0.5
    frac_bits: int = 24
    modulus_bits: int = 64

    def __post_init__(self) -> None:
        # > 0: a fraction of 0 gave t = 1, where every Shamir share is the secret itself (a red-team read)
        check_probability("threshold_fraction", self.threshold_fraction, open_low=True, open_high=True)
        _check_ring(self.frac_bits, self.modulus_bits)

    def threshold(self, num_clients: int) -> int:
        return min(num_clients, int(self.threshold_fraction * num_clients) + 1)


class SecAggClient:
    """One client of the protocol, holding its private vector and keys."""

    def __init__(self, index: int, vector: np.ndarray, *, rng: np.random.Generator) -> None:
        self.index, self.vector, self.rng = index, np.asarray(vector, dtype=np.float64), rng
        self.c_sk = X25519PrivateKey.from_private_bytes(rng.bytes(32))  # for encrypting shares
        self.s_sk = X25519PrivateKey.from_private_bytes(rng.bytes(32))  # for pairwise masks
        self.shares_held: dict[int, tuple[int, int]] = {}

    def advertise_keys(self) -> tuple[bytes, bytes]:
        """Round 0: the two public keys."""
        return _raw(self.c_sk.public_key()), _raw(self.s_sk.public_key())

    def share_keys(self, keys: dict[int, tuple[bytes, bytes]], threshold: int) -> dict[int, bytes]:
        """Round 1: draw :math:`b_u`, Shamir-share :math:`b_u` and :math:`s^{SK}_u`, encrypt one share per peer."""
        self.keys, self.b = keys, self.rng.bytes(32)
        sk_bytes = self.s_sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())  # fmt: skip
        peers = sorted(keys)
        b_sh = shamir_share(int.from_bytes(self.b, "big"), threshold=threshold, num_shares=len(peers), rng=self.rng)
        s_sh = shamir_share(int.from_bytes(sk_bytes, "big"), threshold=threshold, num_shares=len(peers), rng=self.rng)
        out = {}
        for v, (x, yb), (_, ys) in zip(peers, b_sh, s_sh):
            plain = x.to_bytes(4, "big") + yb.to_bytes(_SECRET_BYTES, "big") + ys.to_bytes(_SECRET_BYTES, "big")
            key = _agree(self.c_sk, keys[v][0], b"enc")
            nonce = self.rng.bytes(12)
            out[v] = nonce + AESGCM(key).encrypt(nonce, plain, f"{self.index}->{v}".encode())
        return out

    def masked_input(self, ciphertexts: dict[int, bytes], u2: Sequence[int], *, frac_bits: int,
                     modulus_bits: int, bound: int) -> np.ndarray:  # fmt: skip
        r"""Round 2: keep the shares addressed to me, send :math:`y_u`; ``bound`` caps :math:`|\bar x_u|` (integers)."""
        for u, blob in ciphertexts.items():
            key = _agree(self.c_sk, self.keys[u][0], b"enc")
            plain = AESGCM(key).decrypt(blob[:12], blob[12:], f"{u}->{self.index}".encode())
            x = int.from_bytes(plain[:4], "big")
            self.shares_held[u] = (x, int.from_bytes(plain[4:4 + _SECRET_BYTES], "big"),
                                   int.from_bytes(plain[4 + _SECRET_BYTES:], "big"))  # fmt: skip
        d = self.vector.size
        try:
            y = encode(self.vector, frac_bits=frac_bits, modulus_bits=modulus_bits, max_abs=bound)
        except ValueError as err:
            raise ValueError(f"client {self.index}: {err}") from err
        y = y + prg(self.b, d, modulus_bits=modulus_bits)
        for v in u2:
            if v == self.index:
                continue
            pad = prg(_agree(self.s_sk, self.keys[v][1], b"mask"), d, modulus_bits=modulus_bits)
            y = y + pad if self.index < v else y - pad  # uint64 arithmetic wraps mod 2^64
        return y & _mask(modulus_bits)

    def unmask(self, survivors: Iterable[int], dropped: Iterable[int]) -> dict[int, tuple[int, int]]:
        """Round 4: the share of :math:`b_u` for survivors, of :math:`s^{SK}_u` for dropped clients."""
        survivors, dropped = set(survivors), set(dropped)
        if survivors & dropped:
            raise ValueError("a client cannot be both a survivor and dropped: refusing to reveal both shares")
        out = {u: (self.shares_held[u][0], self.shares_held[u][1]) for u in survivors if u in self.shares_held}
        out.update({u: (self.shares_held[u][0], self.shares_held[u][2]) for u in dropped if u in self.shares_held})
        return out


@dataclass(frozen=True)
class SecAggResult:
    """What the server ends with: the sum of the included clients' vectors, and what it saw."""

    total: np.ndarray  # (d,) float64: sum over `included` of x_u, exact up to fixed-point rounding
    included: tuple[int, ...]  # clients whose input is in the sum (sent y_u)
    dropped: tuple[int, ...]  # clients that shared keys but never sent y_u (masks removed)
    masked_inputs: dict  # u -> y_u in Z_R^d: the server's whole view of the inputs
    threshold: int


def _require(count: int, threshold: int, stage: str, n: int) -> None:
    if count < threshold:
        raise SecAggDropoutError(
            f"only {count} of {n} clients remain at {stage}; the threshold is {threshold}: "
            "the sum cannot be unmasked (no result rather than a wrong one)")


def _client_indices(name: str, indices: Iterable[int], n: int) -> set[int]:
    """The set of client indices in ``indices``, each an integer in ``0 .. n - 1`` (a red-team read found
    ``[6]`` and ``[-1]`` with n = 6 ignored: the caller believed a client dropped that had not)."""
    out = set()
    for u in indices:
        if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or not 0 <= u < n:
            raise ValueError(f"{name} must hold client indices in 0 .. {n - 1}, got {u!r}")
        out.add(int(u))
    return out


def secure_sum(vectors, *, threshold: int | None = None, rng: np.random.Generator, frac_bits: int = 24,
               modulus_bits: int = 64, drop_before_masking: Iterable[int] = (),
               drop_after_masking: Iterable[int] = ()) -> SecAggResult:  # fmt: skip
    r"""Run the whole protocol among ``n`` simulated clients and return the unmasked sum.

    The server learns the sum and nothing else. With ``n = 1`` (a round in which
    Poisson sampling picked one client) the protocol still runs (a self mask,
    no pairwise masks) and the sum *is* that client's vector: secure aggregation
    hides nothing in such a round, as with any round in which all but one
    included client are known to the server; a DP guarantee on the released
    model comes from the noise, not from the masking.

    Args:
        vectors: ``(n, d)`` floats, client ``u``'s private :math:`x_u` in row ``u``.
        threshold: Shamir :math:`t` (default :math:`\lfloor n/2 \rfloor + 1`).
        rng: the source of all key material (a simulation; see the module note).
        frac_bits, modulus_bits: the fixed-point ring :math:`\mathbb Z_{2^M}`, :math:`f` fraction bits.
        drop_before_masking: clients that share their keys, then vanish before sending
            :math:`y_u` (excluded from the sum; their pairwise masks are removed).
        drop_after_masking: clients that send :math:`y_u`, then vanish before unmasking
            (included in the sum; their self masks are rebuilt from shares).

    Returns:
        A :class:`SecAggResult`.

    Raises:
        SecAggDropoutError: (a ValueError) when fewer than ``threshold`` clients
            remain at any round.
        ValueError: for a vector outside the range the ring can sum, naming the client; a
            threshold above n, or below 2 with n >= 2; dropout indices outside 0 .. n - 1; a ring
            other than 32 or 64 bits, or frac_bits not below modulus_bits - 1.

    >>> from privlab.config import make_rng
    >>> x = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]])
    >>> secure_sum(x, rng=make_rng(0), drop_before_masking=[2]).total.tolist()
    [1.5, -1.75]

    Used in: chapter 9.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"vectors must be (n >= 1, d), got shape {x.shape}")
    n, d = x.shape
    t = threshold if threshold is not None else n // 2 + 1
    t = check_int("threshold", t)
    if t > n:
        raise ValueError(f"threshold must be <= n = {n}, got {t}")
    if t < 2 <= n:
        raise ValueError(f"threshold must be at least 2 with n = {n} clients, got {t}: with t = 1 every Shamir "
                         "share is the secret itself, so any one client could unmask another's input")
    _check_ring(frac_bits, modulus_bits)
    check_rng(rng)
    before, after = _client_indices("drop_before_masking", drop_before_masking, n), \
        _client_indices("drop_after_masking", drop_after_masking, n)
    clients = {u: SecAggClient(u, x[u], rng=rng) for u in range(n)}
    keys = {u: c.advertise_keys() for u, c in clients.items()}  # U1 = everyone
    _require(len(keys), t, "key advertisement", n)
    outbox = {u: clients[u].share_keys(keys, t) for u in keys}  # U2 = everyone
    u2 = sorted(outbox)
    bound = (2 ** (modulus_bits - 1) - 1) // n  # integers: n encodings of at most this sum within 2^(M-1) - 1
    masked = {
        u: clients[u].masked_input({v: outbox[v][u] for v in u2}, u2, frac_bits=frac_bits,
                                   modulus_bits=modulus_bits, bound=bound)
        for u in u2 if u not in before
    }  # fmt: skip
    u3 = sorted(masked)
    _require(len(u3), t, "masked-input collection", n)
    dropped = sorted(set(u2) - set(u3))
    responders = [u for u in u3 if u not in after]
    _require(len(responders), t, "unmasking", n)
    answers = [clients[v].unmask(u3, dropped) for v in responders]
    total = np.zeros(d, dtype=np.uint64)
    for u in u3:
        total = total + masked[u]
    for u in u3:  # remove self masks
        b = shamir_reconstruct([a[u] for a in answers], threshold=t)
        total = total - prg(b.to_bytes(32, "big"), d, modulus_bits=modulus_bits)
    for u in dropped:  # remove the dropped clients' pairwise masks from the survivors' inputs
        sk = X25519PrivateKey.from_private_bytes(
            shamir_reconstruct([a[u] for a in answers], threshold=t).to_bytes(32, "big"))
        for v in u3:
            pad = prg(_agree(sk, keys[v][1], b"mask"), d, modulus_bits=modulus_bits)
            total = total - pad if v < u else total + pad  # y_v carried +pad if v < u
    total = decode(total & _mask(modulus_bits), frac_bits=frac_bits, modulus_bits=modulus_bits)
    return SecAggResult(total, tuple(u3), tuple(dropped), masked, t)
