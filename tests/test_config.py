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
