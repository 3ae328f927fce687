r"""Scale profiles, device selection, seeding, and the project's folders.

Every experiment in the book reads its size from a *scale profile*:

========  =====================================================  ==========
scale     meant for                                              budget
========  =====================================================  ==========
smoke     CI: nbval executes every chapter                       ~60 s/chapter, 2 CPU cores
book      the rendered book (the default)                        ~5 min/chapter, 2 CPU cores
paper     the published scale of the experiment being checked    a GPU is expected
========  =====================================================  ==========

The scale is chosen by an explicit argument or, failing that, by the
``PRIVLAB_SCALE`` environment variable (``book`` when unset). Chapters never
edit sizes in cells; they ask the profile:

>>> s = get_scale("smoke")
>>> s.pick(smoke=1_000, book=100_000, paper=50_000_000)
1000
>>> get_scale("paper").is_paper
True

Randomness is always explicit: :func:`make_rng` returns a fresh
:class:`numpy.random.Generator`, :func:`make_torch_generator` a
:class:`torch.Generator`; nothing here seeds a global state.

Used in: every chapter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from privlab._validate import check_int

SCALES = ("smoke", "book", "paper")
ENV_VAR = "PRIVLAB_SCALE"
DEFAULT_SCALE = "book"

#: The repository root when privlab is installed editable from a checkout.
ROOT = Path(__file__).resolve().parents[2]
#: The paths of a checkout whose changes change what the code computes: a provenance stamp calls the
#: checkout dirty when one of them differs from the commit (an untracked, not ignored file counts).
CODE_PATHS = ("src", "data", "constraints.txt")


def in_checkout(root: Path | None = None) -> bool:
    """Whether privlab runs from a source checkout at ``root`` (default :data:`ROOT`), not from an installed copy.

    True when ``root`` holds a ``pyproject.toml`` and the very ``src/privlab`` this module
    was loaded from. After a non-editable ``pip install``, :data:`ROOT` is a folder of the
    Python installation (``.../lib/python3.X``) and this is False.

    >>> in_checkout(Path("/nonexistent"))
    False
    """
    root = ROOT if root is None else Path(root)
    package = root / "src" / "privlab"
    return (root / "pyproject.toml").is_file() and package.is_dir() and package.resolve() == Path(__file__).resolve().parent


def _project_dir(name: str, env: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override)
    if in_checkout():
        return ROOT / name
    return Path(platformdirs.user_cache_dir("privlab")) / name


@dataclass(frozen=True)
class Scale:
    """A scale profile: the name, and a way to choose a size per scale.

    Args:
        name: one of ``"smoke"``, ``"book"``, ``"paper"``.
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.name!r}")

    @property
    def is_smoke(self) -> bool:
        return self.name == "smoke"

    @property
    def is_paper(self) -> bool:
        return self.name == "paper"

    def pick(self, *, smoke: Any, book: Any, paper: Any | None = None) -> Any:
        """Return the value for this scale (``paper`` defaults to ``book``).

        >>> Scale("book").pick(smoke=1, book=2)
        2
        >>> Scale("paper").pick(smoke=1, book=2)
        2
        """
        values = {"smoke": smoke, "book": book, "paper": book if paper is None else paper}
        return values[self.name]


def get_scale(scale: str | Scale | None = None) -> Scale:
    """Return the scale profile: the argument, else ``$PRIVLAB_SCALE``, else ``book``.

    Raises:
        ValueError: if the name is not one of ``smoke``, ``book``, ``paper``.

    >>> get_scale("book").name
    'book'
    >>> get_scale("huge")
    Traceback (most recent call last):
    ...
    ValueError: scale must be one of ('smoke', 'book', 'paper'), got 'huge'
    """
    if isinstance(scale, Scale):
        return scale
    if scale is None:
        scale = os.environ.get(ENV_VAR, DEFAULT_SCALE).strip().lower() or DEFAULT_SCALE
    return Scale(str(scale))


def get_device(prefer: str | None = None):
    """Return a :class:`torch.device`: CUDA when available, else CPU.

    Args:
        prefer: ``"cpu"`` or ``"cuda"`` to force one; ``None`` chooses.

    Raises:
        ValueError: if ``prefer="cuda"`` and no CUDA device is available,
            or ``prefer`` names another device type.
    """
    import torch

    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer not in ("cpu", "cuda"):
        raise ValueError(f"prefer must be 'cpu', 'cuda' or None, got {prefer!r}")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise ValueError("prefer='cuda' but torch.cuda.is_available() is False")
    return torch.device(prefer)


#: The environment variable that caps every chapter's torch threads (the OpenMP standard one).
THREADS_ENV = "OMP_NUM_THREADS"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def torch_threads(default: int) -> int:
    """The intra-op thread count a chapter should use: ``$OMP_NUM_THREADS`` when set, else ``default``.

    ``default`` (the chapter's own choice, e.g. 2 for a reader's laptop) is capped at
    :func:`available_cpus`. ``make test`` runs two chapters side by side on a 2-core machine and
    exports ``OMP_NUM_THREADS=1``: two chapters at two threads each would put four spinning
    OpenMP threads on two cores, which slows both several-fold.

    >>> import os
    >>> os.environ.get(THREADS_ENV) is not None or (torch_threads(1), torch_threads(10_000)) == (1, available_cpus())
    True

    Raises:
        ValueError: ``default`` or ``$OMP_NUM_THREADS`` is not a positive integer.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}") from None
        if n < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}")
        return n
    if int(default) < 1:
        raise ValueError(f"default must be a positive integer, got {default!r}")
    return min(int(default), available_cpus())


def set_torch_threads(default: int) -> int:
    """Set torch's intra-op threads to :func:`torch_threads` ``(default)`` and return the number.

    Chapters call this in their first cell instead of ``torch.set_num_threads``, so one setting
    (``OMP_NUM_THREADS``) caps them all when several run at once (``make test``).
    """
    import torch

    n = torch_threads(default)
    torch.set_num_threads(n)
    return n


def make_rng(seed: int | None) -> np.random.Generator:
    """Return a new NumPy generator (PCG64) seeded with ``seed`` (an integer >= 0; ``None``: fresh
    entropy from the operating system, not reproducible).

    >>> make_rng(0).integers(0, 100, size=3).tolist() == make_rng(0).integers(0, 100, size=3).tolist()
    True
    """
    return np.random.default_rng(None if seed is None else check_int("seed", seed, minimum=0))


def make_torch_generator(seed: int, device: Any = "cpu"):
    """Return a :class:`torch.Generator` on ``device`` seeded with ``seed``, an integer >= 0 (``int()``
    had made 0.9 and "0" seed 0, and -1 the same stream as 2**64 - 1: a red-team read)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(check_int("seed", seed, minimum=0))
    return g


def spawn_seeds(seed: int, n: int) -> list[int]:
    """Derive ``n`` independent integer seeds from one seed (NumPy SeedSequence).

    >>> spawn_seeds(42, 3) == spawn_seeds(42, 3)
    True
    >>> len(set(spawn_seeds(42, 5)))
    5
    """
    children = np.random.SeedSequence(seed).spawn(n)
    return [int(c.generate_state(1)[0]) for c in children]


def data_dir() -> Path:
    """Folder for cached data, created on demand.

    ``$PRIVLAB_DATA`` if set; else ``<repo>/data`` when running from a source checkout
    (:func:`in_checkout`); else, for an installed privlab, ``data`` in the user's cache
    folder (``platformdirs.user_cache_dir("privlab")``, e.g. ``~/.cache/privlab/data`` on
    Linux), never inside the Python installation.
    """
    d = _project_dir("data", "PRIVLAB_DATA")
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir() -> Path:
    """Folder for recorded runs with provenance (``<data_dir()>/results``), created on demand.

    It follows ``PRIVLAB_DATA``: pointing the data cache elsewhere also hides the recorded runs that
    ship in the repository's ``data/results`` (chapters 8 and 13 read them); copy them along.
    """
    d = data_dir() / "results"
    d.mkdir(parents=True, exist_ok=True)
    return d
