"""One version everywhere: pyproject.toml, privlab.__version__, CITATION.cff and CHANGELOG.md."""

import re
import sys
from pathlib import Path

import pytest
import yaml

import privlab

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_package_version_is_pyprojects():
    assert privlab.__version__ == _pyproject_version()


def test_citation_cff():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    for key in ("cff-version", "message", "title", "authors", "version", "license"):
        assert cff.get(key), f"CITATION.cff has no {key}"
    assert str(cff["version"]) == _pyproject_version()
    assert all("name" in a or "family-names" in a for a in cff["authors"])


def test_changelog_has_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert versions and versions[0] == "Unreleased"
    assert _pyproject_version() in versions, f"CHANGELOG.md has no section for {_pyproject_version()}"
