"""Provenance of a recorded run: the machine, the library versions, the git commit; JSON that survives inf.

Every results file the experiments write carries these three records, so a
number in the book can be traced to the code and the hardware that produced it.

>>> sorted(machine_info())[:3]
['cpu_count', 'cuda_device', 'platform']
>>> to_jsonable({"eps": float("inf"), "x": [float("nan"), 1]})
{'eps': 'inf', 'x': [None, 1]}

Used in: chapter 13.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["git_commit", "library_versions", "machine_info", "to_jsonable", "write_json"]

LIBRARIES = ("privlab", "torch", "numpy", "scipy", "pandas", "opacus", "dp-accounting")


def machine_info() -> dict[str, Any]:
    """Platform, Python, CPU count, torch threads and the CUDA device name (``None`` without one)."""
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda_device": cuda}  # fmt: skip


def library_versions(names=LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` if it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding privlab, plus ``+dirty`` if the code or data differ
    from it (``src/``, ``data/``, ``constraints.txt``; an untracked, not ignored file there counts);
    ``None`` outside git (e.g. privlab installed from a wheel: then the versions identify the code)."""
    from privlab.config import CODE_PATHS, ROOT, in_checkout

    if repo is None and not in_checkout():  # an installed copy: ROOT is a folder of the Python
        return None  # installation, and git would report whatever repository holds it
    cwd = Path(repo) if repo is not None else ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHS],
                               cwd=cwd,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays unwrapped, ``inf`` as ``"inf"``, NaN as ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_json(obj: Any, path: Path) -> Path:
    """Write ``to_jsonable(obj)`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # one per process
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False))
    os.replace(tmp, path)
    return path
