"""The book's plumbing: which chapters ``_toc.yml`` lists, and turning them into notebooks.

Chapters are jupytext MyST markdown files (``chapters/NN_topic.md``). ``make test`` converts
every chapter listed in ``_toc.yml`` to a notebook under ``build/notebooks`` (never committed)
and nbval executes them::

    python -m privlab.book --notebooks build/notebooks

The same module builds the book and is the book's Sphinx extension (``_config.yml`` lists
``privlab.book`` under ``sphinx: extensions``)::

    python -m privlab.book --build html --scale smoke       # book/_build/smoke/html
    python -m privlab.book --build singlehtml --scale book  # book/_build/book/singlehtml
    python -m privlab.book --pdf --scale book               # book/_build/book/privlab.pdf, checked

Each scale builds into its own folder (``book/_build/<scale>/``) with its own jupyter-cache,
executed notebooks and Sphinx doctrees, so a smoke build never serves as the book-scale one.
As an extension it

* puts a *provenance* note at the end of every page: the scale, the git commit, the date and the
  machine (CPU, GPU) of the run that produced the page's numbers, and the page footer names the
  privlab version and commit of the build;
* makes the scale part of Sphinx's configuration (``privlab_scale``), so a changed scale
  re-reads every page even in a shared build folder;
* fills the repository URL of ``_config.yml`` (``repository: url``, the one place it is set)
  into each chapter's install cell (:data:`INSTALL_CELL`) and into ``{{ repository_url }}``
  substitutions.

Nothing here is privacy code; it keeps the test pipeline and the book reading the same list.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from privlab.config import CODE_PATHS, ROOT, SCALES

#: Where ``make book`` puts each scale's build: ``<BUILD_ROOT>/<scale>/{html,singlehtml,...}``.
BUILD_ROOT = Path("book") / "_build"
#: The token the build replaces with the repository URL set in ``_config.yml``.
REPOSITORY_TOKEN = "{{ repository_url }}"
#: The first code cell of every chapter, exactly (``tests/test_book_structure.py`` checks it).
INSTALL_CELL = (
    "# On Colab or a bare Jupyter server, install the course package (a no-op where it is\n"
    "# installed). The book's build writes the repository set in _config.yml into the URL.\n"
    "try:\n"
    "    import privlab  # noqa: F401\n"
    "except ImportError:\n"
    f'    %pip install --quiet "privlab[book] @ git+{REPOSITORY_TOKEN}"'
)


def _toc_files(node) -> list[str]:
    """All ``file:`` entries in a parsed ``_toc.yml`` tree, in order."""
    out: list[str] = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for key in ("root", "parts", "chapters", "sections"):
            value = node.get(key)
            if key == "root" and isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                for child in value:
                    out.extend(_toc_files(child))
    return out


def chapter_files(root: Path = ROOT) -> list[Path]:
    """The jupytext chapters listed in ``_toc.yml`` (those under ``chapters/``), in book order.

    Raises:
        FileNotFoundError: if a listed chapter has no ``.md`` file.
    """
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    paths = []
    for entry in _toc_files(toc):
        if not entry.startswith("chapters/"):
            continue
        path = root / f"{entry}.md"
        if not path.exists():
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but {path} does not exist")
        paths.append(path)
    return paths


def to_notebooks(out_dir: Path, root: Path = ROOT) -> list[Path]:
    """Convert every chapter to ``out_dir/<name>.ipynb`` with jupytext; stale notebooks removed.

    The install cell's ``{{ repository_url }}`` becomes the URL set in ``_config.yml``.
    """
    import jupytext

    out_dir.mkdir(parents=True, exist_ok=True)
    url = repository_url(root)
    written = []
    for md in chapter_files(root):
        nb = jupytext.read(md)
        for cell in nb.cells:  # the install cell names the configured repository, as in the book
            if cell.cell_type == "code":
                cell.source = fill_repository(cell.source, url)
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        target = out_dir / f"{md.stem}.ipynb"
        jupytext.write(nb, target)
        written.append(target)
    for stale in set(out_dir.glob("*.ipynb")) - set(written):
        stale.unlink()
    return written


# --- glue: a chapter's numbers, for the prose ---------------------------------------------------

#: myst-nb's prefix for glued outputs that are stored but not shown in the cell.
GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, variable, display: bool = True) -> None:
    """Store ``variable`` under ``name`` for ``{glue:text}`name``` in the prose: ``myst_nb.glue``.

    The same output as ``myst_nb.glue`` (a display with the variable's IPython formats and
    ``{"scrapbook": {"name": name, "mime_prefix": ...}}`` metadata; ``tests/test_book_glue.py``
    checks the two agree), without its import chain (myst-nb, nbformat and jsonschema, in every
    chapter's kernel; with jsonschema >= 4.25, whose rfc3987-syntax builds a parser at import,
    about 3 s on an idle CPU).
    """
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    mimebundle, metadata = format_display_data(variable)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    ipy_display({prefix + k: v for k, v in mimebundle.items()}, raw=True, metadata=metadata)


# --- the repository URL: one setting in _config.yml -------------------------------------------


def repository_url(root: Path = ROOT) -> str:
    """The repository URL set in ``_config.yml`` (``repository: url``), without a trailing slash.

    Raises:
        ValueError: if ``_config.yml`` sets no ``repository: url``.
    """
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    url = ((config.get("repository") or {}).get("url") or "").rstrip("/")
    if not url:
        raise ValueError(f"{root / '_config.yml'} sets no repository: url")
    return url


def fix_install_cell(path: Path) -> bool:
    """Make the first code cell of a chapter exactly :data:`INSTALL_CELL` (keeping its header and
    tags) when that cell is an install cell (has ``%pip install``); returns whether it changed."""
    text = path.read_text(encoding="utf-8")
    cell = re.search(r"^```\{code-cell\}[^\n]*\n((?::[a-z_]+:[^\n]*\n)*\n?)(.*?)\n```", text, re.M | re.S)
    if cell is None or "%pip install" not in cell.group(2) or cell.group(2) == INSTALL_CELL:
        return False
    path.write_text(text[:cell.start(2)] + INSTALL_CELL + text[cell.end(2):], encoding="utf-8")
    return True


def fill_repository(text: str, url: str) -> str:
    """``text`` with every ``{{ repository_url }}`` token replaced by ``url``."""
    return text.replace(REPOSITORY_TOKEN, url)


# --- provenance: which run produced a page's numbers --------------------------------------------


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(root: Path = ROOT, paths: tuple[str, ...] = ()) -> str:
    """The short commit of ``root``'s checkout, with ``+ uncommitted changes`` when ``src/``,
    ``data/``, ``constraints.txt`` or one of ``paths`` differs from it (an untracked, not ignored
    file there counts: a new module the code imports is a change); ``"unknown"`` outside a git
    checkout."""
    sha = _git(root, "rev-parse", "--short=12", "HEAD")
    if not sha:
        return "unknown"
    dirty = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHS, *paths)
    return f"{sha} + uncommitted changes" if dirty else sha


def package_version() -> str:
    from privlab import __version__

    return __version__


def machine() -> str:
    """The CPU (model and logical cores) and the GPUs ``nvidia-smi`` lists, or ``no GPU``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
            if out.returncode == 0 and names:
                gpu = ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{cpu} ({os.cpu_count()} cores), {gpu}"


def utc_text(timestamp: float) -> str:
    """A POSIX timestamp as ``YYYY-MM-DD HH:MM UTC`` (the provenance notes' format).

    >>> utc_text(0)
    '1970-01-01 00:00 UTC'
    """
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


#: Environment variables a chapter's numbers depend on beyond its code (thread counts change float
#: sums; the hash seed, set iteration order; visible GPUs, the device).
FINGERPRINT_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED",
                   "CUDA_VISIBLE_DEVICES")


def inputs_fingerprint() -> str:
    """A hash of what a chapter's outputs depend on besides its code cells.

    jupyter-cache keys a notebook on its code cells only, and Sphinx re-reads a page only when its
    source changes: without this, a change to the privlab package, to the recorded runs the
    chapters read (``data/results``), to the libraries or to the thread count left the old numbers
    on the page. It covers the imported package's files, the files under ``data_dir()/results``,
    every installed distribution's version, Python's version, the CPUs available and
    :data:`FINGERPRINT_ENV`. The book keeps one jupyter-cache per fingerprint (and per scale), so any
    change to these executes every chapter again. (The data sets cached under ``data_dir()`` are
    not hashed: tests create them on a fresh clone; their source's version is.)
    """
    import importlib.metadata

    import privlab
    from privlab.config import available_cpus, data_dir

    h = hashlib.sha256()
    for top in (Path(privlab.__file__).resolve().parent, data_dir() / "results"):
        if top.is_dir():
            files = sorted(p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            for path in files:
                h.update(path.relative_to(top).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    versions = sorted({(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}.items())
    rest = {"distributions": versions, "python": platform.python_version(), "cpus": available_cpus(),
            "env": {k: os.environ.get(k) for k in FINGERPRINT_ENV}}
    h.update(json.dumps(rest, sort_keys=True).encode())
    return h.hexdigest()[:16]


def ledger_key(chapter: Path, fingerprint: str, scale: str) -> str:
    """A chapter's key in the provenance ledger: its code, the inputs' fingerprint and the scale (a
    plain ``jupyter-book build`` keeps one ledger for every scale)."""
    return f"{code_hash(chapter)}-{fingerprint}-{scale}"


def code_hash(path: Path) -> str:
    """A hash of a chapter's code cells: jupyter-cache reuses outputs exactly when these match."""
    import jupytext

    nb = jupytext.read(path)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()[:16]


class ProvenanceLedger:
    """``provenance.json`` next to a scale's jupyter-cache: one record per executed notebook.

    myst-nb says when a page's outputs were computed (its execution ``mtime``) but not where; the
    ledger keeps, per page and per hash of its code cells, the scale, commit and machine of the
    run that computed them, so a page served from the cache names the run that made its numbers.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, docname: str, code_hash: str) -> dict | None:
        return self.data.get(docname, {}).get(code_hash)

    def put(self, docname: str, code_hash: str, record: dict) -> None:
        """Add one record. Safe across processes (``pytest -n 2`` stores chapters from two
        workers): under an exclusive lock it re-reads the file, adds the record and replaces the
        file atomically, so no writer loses another's record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}
            self.data.setdefault(docname, {})[code_hash] = record
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


@contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    POSIX ``flock``; where ``fcntl`` does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def provenance_text(record: dict | None, *, scale: str, exec_time: float | None) -> str:
    """The sentence of a page's provenance note (``record`` from the ledger, or None).

    >>> provenance_text({"privlab": "0.1.0", "commit": "abc", "date": "2026-01-01 00:00 UTC"},
    ...                 scale="smoke", exec_time=None)
    'Scale: smoke. This page runs no code; built on 2026-01-01 00:00 UTC by privlab 0.1.0 at commit abc.'
    """
    if exec_time is None:
        return (f"Scale: {scale}. This page runs no code; built on {record['date']} by privlab "
                f"{record['privlab']} at commit {record['commit']}.")
    if record is None:
        return (f"Scale: {scale}. Computed on {utc_text(exec_time)}; the commit and machine of that run "
                "were not recorded (its outputs come from a jupyter-cache made before provenance "
                "was kept).")
    runtime = f", in {record['runtime']:.0f} s" if record.get("runtime") else ""
    return (f"Scale: {record['scale']}. Computed on {record['date']} by privlab {record['privlab']} "
            f"at commit {record['commit']}, on {record['machine']}{runtime}.")


# --- the Sphinx extension ------------------------------------------------------------------------


def _config_inited(app, config) -> None:
    from privlab.config import get_scale

    config.privlab_scale = get_scale().name
    # a changed fingerprint changes this config value, so Sphinx re-reads every page ("env" rebuild)
    config.privlab_fingerprint = inputs_fingerprint()
    # Figures get their alt text from their output's metadata (AltTextRenderer, below).
    if getattr(config, "nb_render_plugin", None) == "default":
        config.nb_render_plugin = "privlab"
    # Outside `python -m privlab.book --build` (which gives each scale its own folder), e.g. a plain
    # `jupyter-book build .`, keep one jupyter-cache per scale: the cache keys on code, not scale.
    # Either way, one jupyter-cache per inputs fingerprint (inputs_fingerprint).
    if hasattr(config, "nb_execution_cache_path"):
        base = config.nb_execution_cache_path or str(Path(app.outdir).parent / ".jupyter_cache" / config.privlab_scale)
        config.nb_execution_cache_path = str(Path(base) / config.privlab_fingerprint)
    app.privlab_cache_at_start = _cache_records(getattr(config, "nb_execution_cache_path", ""))
    theme = dict(config.html_theme_options or {})
    url = (theme.get("repository_url") or "").rstrip("/")
    if url:
        config.privlab_repository_url = url
        subs = dict(config.myst_substitutions or {}) if hasattr(config, "myst_substitutions") else {}
        subs.setdefault("repository_url", url)
        config.myst_substitutions = subs
    app.privlab_build = {
        "start": time.time(),
        "scale": config.privlab_scale,
        "fingerprint": config.privlab_fingerprint,
        "commit": git_commit(Path(app.srcdir)),
        "privlab": package_version(),
        "machine": machine(),
    }
    info = app.privlab_build
    theme["extra_footer"] = (
        f'<p class="privlab-build">privlab {info["privlab"]} · commit {info["commit"]} · '
        f'built {utc_text(info["start"])} at scale {info["scale"]}</p>'
    )
    config.html_theme_options = theme


def _source_read(app, docname, source) -> None:
    url = app.config.privlab_repository_url
    if url and REPOSITORY_TOKEN in source[0]:
        source[0] = fill_repository(source[0], url)


def _cache_records(path: str) -> set[tuple]:
    """``(uri, pk, created)`` of every record in the jupyter-cache at ``path`` (none if it has no database)."""
    if not path or not (Path(path) / "global.db").exists():
        return set()
    from jupyter_cache import get_cache

    return {(str(Path(r.uri).resolve()), r.pk, r.created) for r in get_cache(path).list_cache_records()}


def _ledger(app) -> ProvenanceLedger:
    if not hasattr(app, "privlab_ledger"):
        app.privlab_ledger = ProvenanceLedger(Path(app.outdir).parent / "provenance.json")
    return app.privlab_ledger


def _doctree_read(app, doctree) -> None:
    from docutils import nodes

    env = app.env
    docname = env.docname
    info = app.privlab_build
    exec_data = None
    try:
        from myst_nb.sphinx_ import NbMetadataCollector

        exec_data = NbMetadataCollector.get_exec_data(env, docname)
    except Exception:  # myst-nb absent or the page is not a notebook
        exec_data = None
    if not exec_data:
        record = {"privlab": info["privlab"], "commit": info["commit"], "date": utc_text(info["start"])}
        text = provenance_text(record, scale=info["scale"], exec_time=None)
    else:
        path = Path(env.doc2path(docname))
        key = ledger_key(path, info["fingerprint"], info["scale"])
        ledger = _ledger(app)
        mtime = float(exec_data["mtime"])
        # Executed by this build: its cache record is new since the build started (a clock test, "mtime
        # within minutes of now", misfired west of UTC: a cache hit carries the record's creation
        # time, naive UTC that `.timestamp()` reads as local time, corrected below).
        mine = str(path.resolve())
        fresh = any(r[0] == mine for r in _cache_records(app.config.nb_execution_cache_path)
                    - app.privlab_cache_at_start)
        if not fresh:
            mtime = datetime.fromtimestamp(mtime).replace(tzinfo=timezone.utc).timestamp()
        if fresh and exec_data.get("succeeded", True):
            record = {
                "scale": info["scale"],
                "commit": git_commit(Path(app.srcdir), (os.path.relpath(path, app.srcdir),)),
                "date": utc_text(mtime),
                "machine": info["machine"],
                "privlab": info["privlab"],
                "runtime": exec_data.get("runtime"),
            }
            ledger.put(docname, key, record)
        record = ledger.get(docname, key)
        text = provenance_text(record, scale=info["scale"], exec_time=mtime)
    note = nodes.admonition(classes=["note", "privlab-provenance"])
    note += nodes.title(text="Provenance")
    note += nodes.paragraph(text=text)
    _append_note(doctree, note)


@functools.cache
def _alt_text_renderer():
    """The renderer class, made on first use: importing myst-nb costs about 0.5 s, and every
    chapter's kernel imports this module for ``glue``."""
    from myst_nb.core.render import NbElementRenderer

    class AltTextRenderer(NbElementRenderer):
        """myst-nb's renderer, plus alt text for figures (entry point ``myst_nb.renderers: privlab``).

        ``privlab.plotting.use_style()`` puts each figure's description in its PNG output's
        metadata (``{"image/png": {"alt": ...}}``); myst-nb 1.x takes only ``width`` and
        ``height`` from there. The metadata is part of the output, so it survives the
        jupyter-cache (outputs of a cached chapter never pass through the kernel again). The
        browser check asserts every ``<img>`` has it.
        """

        def render_image(self, data):
            found = super().render_image(data)
            alt = data.output_metadata.get(data.mime_type, {}).get("alt")
            for image in found:
                if alt and not image.get("alt"):
                    image["alt"] = str(alt)
            return found

    AltTextRenderer.__module__, AltTextRenderer.__qualname__ = __name__, "AltTextRenderer"
    return AltTextRenderer


def __getattr__(name: str):
    # ``privlab.book:AltTextRenderer``, the entry point myst-nb loads, without importing myst-nb
    # for everyone else (PEP 562)
    if name == "AltTextRenderer":
        return _alt_text_renderer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _append_note(doctree, note) -> None:
    """The note ends the page; on a page with a table of contents (the root page), it goes right
    before it, so the single-page book (and the PDF) does not end with the root page's note."""
    from sphinx import addnodes

    for toc in doctree.findall(addnodes.toctree):
        holder = toc.parent if toc.parent is not None and "toctree-wrapper" in toc.parent.get("classes", []) else toc
        if holder.parent is not None:
            holder.parent.insert(holder.parent.index(holder), note)
            return
    doctree += note


def _build_finished(app, exception) -> None:
    url = app.config.privlab_repository_url
    sources = Path(app.outdir) / "_sources"
    if exception is not None or not url or not sources.is_dir():
        return
    for path in sources.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".txt", ".ipynb"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if REPOSITORY_TOKEN in text:
                path.write_text(fill_repository(text, url), encoding="utf-8")


def setup(app):
    """Sphinx entry point (``privlab.book`` in ``_config.yml``'s ``sphinx: extensions``)."""
    app.add_config_value("privlab_scale", "book", "env")
    app.add_config_value("privlab_repository_url", "", "env")
    app.add_config_value("privlab_fingerprint", "", "env")
    app.connect("config-inited", _config_inited)
    app.connect("source-read", _source_read)
    app.connect("doctree-read", _doctree_read)
    app.connect("build-finished", _build_finished)
    app.add_css_file("privlab.css")
    return {"version": package_version(), "parallel_read_safe": False, "parallel_write_safe": True}


# --- building: one folder per scale --------------------------------------------------------------


def build(builder: str = "html", *, scale: str | None = None, root: Path = ROOT,
          out: Path | None = None, strict: bool = True) -> Path:
    """Build the book with Sphinx into ``out/<scale>/<builder>`` and return that folder.

    The scale's folder holds its own jupyter-cache (``.jupyter_cache``), executed notebooks
    (``jupyter_execute``), doctrees (``.doctrees/<builder>``) and provenance ledger, so builds at
    different scales never share executed outputs. The chapters see ``PRIVLAB_SCALE=scale``.

    Raises:
        ValueError: on an unknown scale or builder.
        RuntimeError: when Sphinx reports an error (with ``strict``, any warning).
    """
    from privlab.config import get_scale

    scale = get_scale(scale).name
    if builder not in ("html", "singlehtml", "dirhtml", "latex"):
        raise ValueError(f"builder must be html, singlehtml, dirhtml or latex, got {builder!r}")
    root = Path(root).resolve()
    base = (Path(out) if out is not None else root / BUILD_ROOT).resolve() / scale
    outdir = base / builder
    os.environ["PRIVLAB_SCALE"] = scale  # the kernels inherit it
    from jupyter_book.sphinx import build_sphinx

    overrides = {
        "external_toc_path": (root / "_toc.yml").as_posix(),
        "latex_individualpages": False,
        "nb_execution_cache_path": str(base / ".jupyter_cache"),
    }
    result = build_sphinx(
        root, outdir, use_external_toc=True, noconfig=True, path_config=root / "_config.yml",
        confoverrides=overrides, doctreedir=base / ".doctrees" / builder, builder=builder,
        warningiserror=strict, keep_going=strict,
    )
    if isinstance(result, Exception) or result:
        raise RuntimeError(f"the {builder} build at scale {scale} failed ({result!r}); see the log above")
    (base / "scale").write_text(scale + "\n")
    # the caches of other fingerprints can no longer be rendered by this checkout: drop them
    current = inputs_fingerprint()
    for old in (base / ".jupyter_cache").glob("*"):
        if old.is_dir() and old.name != current and len(old.name) == len(current):
            shutil.rmtree(old, ignore_errors=True)
    return outdir


# --- the PDF: Chromium's print of the single-page HTML build -----------------------------------

PDF_NAME = "privlab.pdf"

#: Run in the single-page book before printing: MathJax done, images decoded, solutions open.
_PRINT_READY_JS = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const wantsMath = document.querySelector("script[src*='mathjax']") !== null;
  for (let i = 0; wantsMath && i < 300 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
    await sleep(100);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  document.querySelectorAll("details.sd-dropdown").forEach((d) => { d.open = true; });
  const imgs = Array.from(document.images);
  imgs.forEach((img) => { if (img.loading === "lazy") img.loading = "eager"; });
  await Promise.all(imgs.map((img) => img.decode().catch(() => null)));
  done({math: document.querySelectorAll("mjx-container").length, images: imgs.length});
})().catch((e) => done({error: String(e)}));
"""


def _root_page(html_dir: Path) -> str:
    """The page holding the whole single-page book, at the folder's top.

    Sphinx's singlehtml builder writes the book into the root document's path (``book/intro.html``)
    with asset links relative to the top folder (``_static/...``), and an ``index.html`` that
    redirects there; a copy at the top, ``print.html``, resolves every link.
    """
    index = (html_dir / "index.html").read_text(encoding="utf-8")
    redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', index, re.I)
    if not redirect:
        return "index.html"
    shutil.copyfile(html_dir / redirect.group(1), html_dir / "print.html")
    return "print.html"


def print_pdf(html_dir: Path, pdf: Path, *, timeout: float = 900) -> dict:
    """Print ``html_dir/index.html`` (a ``singlehtml`` build) to ``pdf`` with headless Chromium.

    The folder is served over http on localhost (MathJax's fonts do not load from ``file://``);
    the page is printed once MathJax has typeset every formula and every image is decoded, with
    the exercise solutions opened. Needs Debian's ``chromium`` and ``chromium-driver`` and the
    ``selenium`` package (``make browser-deps``, the ``dev`` extra).

    Returns:
        ``{"math": formulas typeset, "images": images, "seconds": time to print}``.
    """
    import base64
    import functools
    import http.server
    import threading

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        raise RuntimeError("chromium/chromedriver not installed (run `make browser-deps`)")
    start = time.perf_counter()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--window-size=1280,1024"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(timeout)
        driver.set_script_timeout(timeout)
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/{_root_page(html_dir)}")
        ready = driver.execute_async_script(_PRINT_READY_JS)
        if "error" in ready:
            raise RuntimeError(f"preparing the page for print failed: {ready['error']}")
        footer = ('<div style="font-size:8px;width:100%;text-align:center;color:#555">'
                  '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')
        result = driver.execute_cdp_cmd("Page.printToPDF", {
            "printBackground": True, "preferCSSPageSize": False,
            "paperWidth": 8.27, "paperHeight": 11.69,  # A4, inches
            "marginTop": 0.6, "marginBottom": 0.7, "marginLeft": 0.6, "marginRight": 0.6,
            "displayHeaderFooter": True, "headerTemplate": "<span></span>", "footerTemplate": footer,
        })
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf.write_bytes(base64.b64decode(result["data"]))
    return {**ready, "seconds": time.perf_counter() - start}


def check_pdf(pdf: Path, *, min_pages: int, max_pages: int = 3000, png_dir: Path | None = None) -> dict:
    """Check a printed book: a plausible page count, and pages that render and are not blank.

    ``pdfinfo`` counts the pages; ``pdftoppm`` renders the first, two middle and the last page to
    PNG (into ``png_dir``, default next to the PDF); a page is blank when fewer than 0.5% of its
    pixels differ from white. ``pdftotext`` finds any raw TeX MathJax left unrendered.
    Needs poppler-utils (``make pdf-deps``).

    Raises:
        AssertionError: naming the failed check.
    """
    import numpy as np
    from PIL import Image

    for tool in ("pdfinfo", "pdftoppm", "pdftotext"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not installed (poppler-utils; run `make pdf-deps`)")
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    assert min_pages <= pages <= max_pages, f"{pdf}: {pages} pages, expected {min_pages}..{max_pages}"
    png_dir = png_dir or pdf.parent / "pdf-pages"
    shutil.rmtree(png_dir, ignore_errors=True)
    png_dir.mkdir(parents=True)
    ink = {}
    for page in sorted({1, max(1, pages // 3), max(1, 2 * pages // 3), pages}):
        prefix = png_dir / f"page-{page:04d}"
        subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", str(page), "-l", str(page), "-singlefile",
                        str(pdf), str(prefix)], check=True, capture_output=True)
        pixels = np.asarray(Image.open(f"{prefix}.png").convert("L"), dtype=float)
        ink[page] = float((pixels < 245).mean())
        assert ink[page] > 0.005, f"{pdf}: page {page} is blank ({ink[page]:.2%} ink)"
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    raw_tex = sorted(set(re.findall(r"\\(?:varepsilon|frac|sqrt|mathbb|operatorname|begin)\b|\$\$", text)))
    assert not raw_tex, f"{pdf}: raw TeX in the text: {raw_tex}"
    return {"pages": pages, "ink": ink, "png_dir": str(png_dir), "bytes": pdf.stat().st_size}


def make_pdf(*, scale: str | None = None, root: Path = ROOT, out: Path | None = None) -> tuple[Path, dict]:
    """Build the single-page HTML book, print it to ``out/<scale>/privlab.pdf`` and check it.

    The single-page build shares the scale's jupyter-cache with ``make book``: chapters already
    executed at this scale are not executed again.
    """
    from privlab.config import get_scale

    scale = get_scale(scale).name
    start = time.perf_counter()
    html_dir = build("singlehtml", scale=scale, root=root, out=out)
    built = time.perf_counter() - start
    pdf = html_dir.parent / PDF_NAME
    printed = print_pdf(html_dir, pdf)
    n_chapters = len(chapter_files(Path(root)))
    checked = check_pdf(pdf, min_pages=max(1, 2 * n_chapters - 1), max_pages=max(50, 60 * n_chapters))
    return pdf, {"build_seconds": built, "print_seconds": printed["seconds"], "math": printed["math"],
                 "images": printed["images"], **checked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m privlab.book", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, metavar="DIR", help="write the chapters as .ipynb into DIR")
    parser.add_argument("--list", action="store_true", help="print the chapter files in book order")
    parser.add_argument("--build", metavar="BUILDER", choices=["html", "singlehtml", "dirhtml", "latex"],
                        help="build the book with this Sphinx builder into OUT/SCALE/BUILDER")
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help="scale to build at (default: $PRIVLAB_SCALE or 'book')")
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's folder (with _config.yml, _toc.yml)")
    parser.add_argument("--out", type=Path, default=None, help=f"build root (default: ROOT/{BUILD_ROOT})")
    parser.add_argument("--repository-url", action="store_true",
                        help="print the repository URL set in _config.yml")
    parser.add_argument("--fix-install-cells", action="store_true",
                        help="make every chapter's install cell the common one (INSTALL_CELL)")
    parser.add_argument("--pdf", action="store_true",
                        help=f"build the single-page book, print it to OUT/SCALE/{PDF_NAME} and check it")
    args = parser.parse_args(argv)
    actions = [name for name in ("notebooks", "list", "build", "pdf", "repository_url", "fix_install_cells")
               if getattr(args, name)]
    if len(actions) > 1:  # each returns after its own work: the others would be ignored silently
        parser.error(f"give one of --notebooks, --list, --build, --pdf, --repository-url, --fix-install-cells; "
                     f"got {', '.join('--' + a.replace('_', '-') for a in actions)}")
    if (args.build or args.pdf) and os.environ.get("PYTHONOPTIMIZE"):
        parser.error("PYTHONOPTIMIZE is set: the chapters' kernels would strip every assertion cell")
    if args.pdf:
        try:
            pdf, facts = make_pdf(scale=args.scale, root=args.root, out=args.out)
        except (RuntimeError, AssertionError) as err:
            print(f"error: {err}")
            return 1
        print(f"The book as one PDF: {pdf} ({facts['pages']} pages, {facts['bytes'] / 1e6:.1f} MB; "
              f"single-page build {facts['build_seconds']:.0f} s, print {facts['print_seconds']:.0f} s; "
              f"{facts['math']} formulas, {facts['images']} images; page renders in {facts['png_dir']})")
        return 0
    if args.fix_install_cells:
        for path in chapter_files(args.root):
            if fix_install_cell(path):
                print(f"fixed the install cell of {path.relative_to(args.root)}")
        return 0
    if args.repository_url:
        print(repository_url(args.root))
        return 0
    if args.build:
        try:
            outdir = build(args.build, scale=args.scale, root=args.root, out=args.out)
        except RuntimeError as err:
            print(f"error: {err}")
            return 1
        print(f"The book ({args.build}, scale {outdir.parent.name}) is at: {outdir}")
        return 0
    if args.list or not args.notebooks:
        for path in chapter_files(args.root):
            print(path.relative_to(args.root))
    if args.notebooks:
        for path in to_notebooks(args.notebooks, args.root):
            print(f"wrote {path}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
