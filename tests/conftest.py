"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny models: intra-op threads only add contention on a small shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The test files that take longest, in the order they start (seconds of one xdist worker at smoke
#: scale on the 2-core CI machine, alone, measured 2026-12-04: assignments 74, chapter 14 53,
#: chapter 9 56, book scales 51, Flower 122 before its runs overlapped Ray's start-up). ``make
#: test`` hands whole files to two workers in collection order (``--dist loadfile
#: --no-loadscope-reorder``); starting the long ones first keeps one from being handed out last
#: while the other worker sits idle (xdist's default order, files with most tests first, started
#: the Flower file last). The Flower file and the assignment grading are kept apart: both start
#: many processes (Flower's servers and apps and Ray; Otter's kernels, two at a time), and side by
#: side they took 167 and 162 s. The order of tests within a file, and of every other file, is
#: unchanged.
SLOW_FILES = (
    "tests/test_assignments.py",
    "14_language_models.ipynb",
    "09_federated.ipynb",
    "tests/test_book_scales.py",
    "tests/federated/test_flower.py",
    "05_selection.ipynb",
    "10_synthetic.ipynb",
)


def _slow_rank(item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return next((k for k, slow in enumerate(SLOW_FILES) if path.endswith(slow)), len(SLOW_FILES))


def pytest_collection_modifyitems(config, items):
    """Put the slowest files first (a stable sort: every file's tests keep their order)."""
    items.sort(key=_slow_rank)
