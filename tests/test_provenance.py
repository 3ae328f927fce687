"""privlab.provenance.git_commit and privlab.book.git_commit: what counts as a change to the code."""

import subprocess

import pytest

from privlab import book, config, provenance


@pytest.fixture()
def repo(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mod.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return tmp_path


def test_an_untracked_module_under_src_is_a_change(repo):
    assert not provenance.git_commit(repo).endswith("+dirty")
    assert "uncommitted" not in book.git_commit(repo)
    (repo / "notes.txt").write_text("scratch, outside the code\n")
    (repo / "src" / "cache.pyc").write_text("ignored\n")
    assert not provenance.git_commit(repo).endswith("+dirty")
    assert "uncommitted" not in book.git_commit(repo)
    (repo / "src" / "new.py").write_text("y = 2\n")  # a module the code may import
    assert provenance.git_commit(repo).endswith("+dirty")
    assert book.git_commit(repo).endswith("+ uncommitted changes")


def test_an_installed_copy_reports_no_commit(monkeypatch):
    # after a non-editable install ROOT is a folder of the Python installation, which may sit
    # inside some other repository (a project's .venv): its commit is not privlab's
    monkeypatch.setattr(config, "in_checkout", lambda root=None: False)
    assert provenance.git_commit() is None
