"""Scale profiles, seeding and the chapter list."""

import numpy as np
import pytest

from privlab import book, config


def test_scale_from_env(monkeypatch):
    monkeypatch.setenv("PRIVLAB_SCALE", "smoke")
    assert config.get_scale().name == "smoke"
    monkeypatch.delenv("PRIVLAB_SCALE")
    assert config.get_scale().name == "book"
    assert config.get_scale("paper").pick(smoke=1, book=2, paper=3) == 3


def test_bad_scale_names_the_value(monkeypatch):
    monkeypatch.setenv("PRIVLAB_SCALE", "huge")
    with pytest.raises(ValueError, match="huge"):
        config.get_scale()


def test_generators_are_independent_and_reproducible():
    a, b = config.make_rng(1), config.make_rng(1)
    assert np.array_equal(a.normal(size=5), b.normal(size=5))
    g = config.make_torch_generator(3)
    assert g.initial_seed() == 3
    assert config.get_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="tpu"):
        config.get_device("tpu")


def test_every_toc_chapter_exists_and_is_a_jupytext_notebook():
    chapters = book.chapter_files()
    assert chapters, "_toc.yml lists no chapters"
    for path in chapters:
        head = path.read_text().splitlines()[:12]
        assert any("jupytext" in line for line in head), f"{path} has no jupytext header"


def test_data_dir_in_checkout_env_override_and_installed_copy(monkeypatch, tmp_path):
    # from this checkout: <repo>/data
    monkeypatch.delenv("PRIVLAB_DATA", raising=False)
    assert config.in_checkout()
    assert config.data_dir() == config.ROOT / "data"
    # PRIVLAB_DATA wins
    monkeypatch.setenv("PRIVLAB_DATA", str(tmp_path / "elsewhere"))
    assert config.data_dir() == tmp_path / "elsewhere"
    assert config.results_dir() == tmp_path / "elsewhere" / "results"
    # an installed copy (ROOT is then a folder of the Python installation): the user cache folder
    monkeypatch.delenv("PRIVLAB_DATA")
    monkeypatch.setattr(config, "ROOT", tmp_path / "lib" / "python3.11")
    monkeypatch.setattr(config.platformdirs, "user_cache_dir", lambda app: str(tmp_path / "cache" / app))
    assert not config.in_checkout()
    assert config.data_dir() == tmp_path / "cache" / "privlab" / "data"
    assert not (tmp_path / "lib").exists()


def test_data_dir_of_a_non_editable_copy_is_the_user_cache(tmp_path):
    """A copy of the package outside any checkout (as pip installs it) never writes beside itself."""
    import shutil
    import subprocess
    import sys

    site = tmp_path / "lib" / "python3.11" / "site-packages"
    shutil.copytree(config.ROOT / "src" / "privlab", site / "privlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "import privlab.config as c; print(c.data_dir())"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    if sys.platform.startswith("linux"):
        assert out == str(tmp_path / "xdg" / "privlab" / "data")
    assert not (tmp_path / "lib" / "python3.11" / "data").exists()


def test_torch_threads_honours_omp_num_threads(monkeypatch):
    import torch

    monkeypatch.delenv(config.THREADS_ENV, raising=False)
    assert config.torch_threads(1) == 1
    assert config.torch_threads(10_000) == config.available_cpus()  # never more threads than CPUs
    monkeypatch.setenv(config.THREADS_ENV, "3")
    assert config.torch_threads(1) == 3 and config.torch_threads(2) == 3  # the environment wins
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(config.THREADS_ENV, "1")
        assert config.set_torch_threads(2) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(config.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=config.THREADS_ENV):
            config.torch_threads(2)
    monkeypatch.delenv(config.THREADS_ENV)
    with pytest.raises(ValueError, match="default"):
        config.torch_threads(0)


def test_seeds_must_be_integers_at_least_zero():
    """A red-team read: int() made 0.9 and "0" seed 0, and -1 the same torch stream as 2**64 - 1."""
    import pytest

    from privlab._validate import check_positive
    from privlab.config import make_rng, make_torch_generator

    for bad in (0.9, "0", -1, True):
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            make_torch_generator(bad)
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            make_rng(bad)
    assert make_torch_generator(3.0).initial_seed() == 3
    with pytest.raises(ValueError, match="got an integer of 1329 bits"):  # was an OverflowError
        check_positive("x", 10**400)
