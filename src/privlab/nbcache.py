"""Run every chapter once in ``make test``: nbval's outputs fill the smoke book's jupyter-cache.

``make test`` executes every chapter under nbval at smoke scale, then builds the smoke-scale book
and checks it in a browser. Without this pytest plugin the book build would execute every
chapter a second time, with the same code at the same scale. With the plugin (``pytest -p
privlab.nbcache``) and ``PRIVLAB_NBVAL_CACHE=<the scale's build folder>``, each chapter whose
code cells **all passed** under nbval is stored in that folder's jupyter-cache exactly as
myst-nb stores a notebook it executed itself, with a record in the folder's provenance ledger
(scale, commit, machine, run time; see :mod:`privlab.book`). The book build then finds the
chapter in its cache and renders nbval's outputs instead of running it again.

Nothing is weakened: a chapter with a failed, skipped or errored cell is not stored (the build
executes it, and the test run has failed anyway); a chapter whose code cells, as myst-nb reads
them, differ from the ones nbval ran (an edit between the two steps) misses the cache, which is
keyed on the code cells' source and metadata, and is executed by the build. The cache folder
is also keyed on :func:`privlab.book.inputs_fingerprint` (the package, the recorded runs, the
libraries, the thread count), so a build after a change to any of them executes the chapter
again. The book-scale build has its own cache folder and never sees smoke outputs: a folder not
named after the scale the chapters ran at is refused.
"""

from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from pathlib import Path

#: The environment variable naming the scale's build folder (``book/_build/smoke``).
ENV_FOLDER = "PRIVLAB_NBVAL_CACHE"
#: Optional: the book's root (default: the checkout's root, :data:`privlab.config.ROOT`).
ENV_ROOT = "PRIVLAB_NBVAL_ROOT"

#: What an IPython kernel reports as ``language_info`` (myst-nb picks the code lexer from it).
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": platform.python_version(),
}


def myst_notebook(chapter: Path, root: Path):
    """The chapter as the book build reads it: myst-nb's reader, repository URL filled in.

    The book's ``source-read`` hook fills ``{{ repository_url }}`` before myst-nb parses the page,
    so the code cells (and hence the jupyter-cache key) are those of the filled text.
    """
    from myst_nb.core.read import read_myst_markdown_notebook

    from privlab.book import fill_repository, repository_url

    text = fill_repository(chapter.read_text(encoding="utf-8"), repository_url(root))
    return read_myst_markdown_notebook(text, add_source_map=True, path=str(chapter))


def store(chapter: Path, sources: list[str], outputs: list[list], *, folder: Path, root: Path,
          runtime: float, fingerprint: str | None = None) -> bool:
    """Store ``chapter`` with the outputs (one list per code cell) of the code ``sources`` that ran.

    Returns False, storing nothing, when the chapter's code cells, as myst-nb reads them, are not
    exactly ``sources`` (an edit between the test run and now).
    """
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    from privlab.book import (ProvenanceLedger, file_lock, git_commit, inputs_fingerprint, ledger_key, machine,
                              package_version, utc_text)
    from privlab.config import get_scale

    scale = get_scale().name  # what the chapters ran at (the kernels share this environment)
    if folder.name != scale:  # the scale's build folder is named after it (book/_build/<scale>)
        raise ValueError(f"{ENV_FOLDER}={folder} is not the build folder of scale {scale!r} that the chapters "
                         f"ran at: its outputs would be rendered as another scale's")

    nb = myst_notebook(chapter, root)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if [cell.source for cell in code] != list(sources) or len(sources) != len(outputs):
        return False
    for count, (cell, outs) in enumerate(zip(code, outputs), start=1):
        cell.outputs = [nbformat.from_dict(dict(o)) for o in outs]
        cell.execution_count = count
        for out in cell.outputs:
            if out.get("output_type") == "execute_result":
                out["execution_count"] = count
    nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    folder.mkdir(parents=True, exist_ok=True)
    # the book build's cache folder for these inputs (privlab.book); the caller's, taken before the run
    fingerprint = fingerprint or inputs_fingerprint()
    with file_lock(folder / ".jupyter_cache.lock"):  # pytest-xdist workers store side by side
        cache = get_cache(str(folder / ".jupyter_cache" / fingerprint))
        cache.cache_notebook_bundle(CacheBundleIn(nb, str(chapter), data={"execution_seconds": runtime}),
                                    check_validity=False, overwrite=True)  # fmt: skip
    docname = chapter.relative_to(root).with_suffix("").as_posix()
    record = {
        "scale": scale,
        "commit": git_commit(root, (chapter.relative_to(root).as_posix(),)),
        "date": utc_text(time.time()),
        "machine": machine(),
        "privlab": package_version(),
        "runtime": runtime,
    }
    ProvenanceLedger(folder / "provenance.json").put(docname, ledger_key(chapter, fingerprint, scale), record)
    return True


# --- the pytest plugin ---------------------------------------------------------------------------

_outcomes: dict[str, list[str]] = defaultdict(list)
_durations: dict[str, float] = defaultdict(float)
#: Cells whose run printed "unhandled iopub msg": nbval dropped a clear_output or a display
#: update, so its outputs are not what the code renders (their chapter is not stored).
_dropped: set[str] = set()


def coalesce_adjacent_streams(outputs):
    """nbval's ``coalesce_streams``, merging only *adjacent* streams of one name.

    nbval merges every stream of a name into the first one, so ``print(a); display(t1); print(b);
    display(t2)`` was stored as "a b", t1, t2: the second label above the first table. Merging only
    neighbours keeps the order the code produced; carriage returns are applied as nbval applies
    them. Installed while this plugin is active (``--nbval-lax`` compares no outputs).
    """
    from nbval import plugin

    if not outputs:
        return outputs
    merged = []
    for out in outputs:
        if out.output_type == "stream" and merged and merged[-1].output_type == "stream" and \
                merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    for out in merged:  # nbval's backspace loop never runs (it starts with equal lengths): not copied
        if out.output_type == "stream":
            out.text = plugin.carriagereturn_pat.sub("", out.text)
    return merged


#: The inputs' fingerprint when this process's session began (before any chapter ran).
_start_fingerprint: list[str] = []


def pytest_configure(config) -> None:
    if os.environ.get(ENV_FOLDER) and os.environ.get("PYTHONOPTIMIZE"):
        import pytest

        raise pytest.UsageError("PYTHONOPTIMIZE is set: the chapters' kernels would strip every assertion cell")
    if os.environ.get(ENV_FOLDER):
        from privlab.book import inputs_fingerprint

        _start_fingerprint[:] = [inputs_fingerprint()]
    try:
        from nbval import plugin
    except ImportError:  # pragma: no cover - nbval is in the dev extra
        return
    plugin.coalesce_streams = coalesce_adjacent_streams


def pytest_runtest_logreport(report) -> None:
    _outcomes[report.nodeid].append(report.outcome)
    _durations[report.nodeid] += report.duration
    if "unhandled iopub msg" in (getattr(report, "capstdout", "") or ""):
        _dropped.add(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    folder = os.environ.get(ENV_FOLDER)
    if not folder:
        return
    from privlab.book import chapter_files
    from privlab.config import ROOT

    from privlab.config import get_scale

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if Path(folder).name != get_scale().name:
        if reporter is not None:
            reporter.write_line(f"privlab.nbcache: nothing stored: {ENV_FOLDER}={folder} is not the build "
                                f"folder of scale {get_scale().name!r}, which the chapters ran at")
        return
    from privlab.book import inputs_fingerprint

    if _start_fingerprint and inputs_fingerprint() != _start_fingerprint[0]:
        # the package, the recorded runs or the environment changed while the chapters ran: their
        # outputs belong to neither fingerprint
        if reporter is not None:
            reporter.write_line("privlab.nbcache: nothing stored: the inputs changed during the run")
        return
    fingerprint = _start_fingerprint[0] if _start_fingerprint else None
    root = Path(os.environ.get(ENV_ROOT) or ROOT).resolve()
    chapters = {path.stem: path for path in chapter_files(root)}
    notebooks = defaultdict(list)
    for item in session.items:
        if type(item).__name__ == "IPyNbCell":
            notebooks[item.parent].append(item)
    if not notebooks:  # nothing ran here (under pytest-xdist the workers store, not the controller)
        return
    stored = []
    for nbfile, cells in notebooks.items():
        chapter = chapters.get(Path(str(nbfile.fspath)).stem)
        passed = all(_outcomes.get(c.nodeid) and set(_outcomes[c.nodeid]) == {"passed"} for c in cells)
        dropped = any(c.nodeid in _dropped for c in cells)
        if chapter is None or not passed or dropped or any(c.test_outputs is None for c in cells):
            continue
        runtime = sum(_durations[c.nodeid] for c in cells)
        if store(chapter, [c.cell.source for c in cells], [c.test_outputs for c in cells],
                 folder=Path(folder), root=root, runtime=runtime, fingerprint=fingerprint):  # fmt: skip
            stored.append(chapter.stem)
    if reporter is not None:
        reporter.write_line(f"privlab.nbcache: {len(stored)} of {len(notebooks)} notebooks stored in "
                            f"{folder}/.jupyter_cache for the book build")  # fmt: skip
