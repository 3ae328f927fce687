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


#: The test files that take longest, longest first (seconds of one xdist worker at smoke scale on the
#: 2-core CI machine, measured 2026-12-04: 122, 74, 56, 53, 51, 22, 20). ``make test`` hands whole
#: files to two workers in collection order (``--dist loadfile --no-loadscope-reorder``); starting
#: these first lets the workers finish together (longest-processing-time-first scheduling), where
#: xdist's default order (files with most tests first) started the Flower file last, on one worker,
#: while the other sat idle. The order of tests within a file, and of every other file, is unchanged.
SLOW_FILES = (
    "tests/federated/test_flower.py",
    "tests/test_assignments.py",
    "09_federated.ipynb",
    "14_language_models.ipynb",
    "tests/test_book_scales.py",
    "05_selection.ipynb",
    "10_synthetic.ipynb",
)


def _slow_rank(item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return next((k for k, slow in enumerate(SLOW_FILES) if path.endswith(slow)), len(SLOW_FILES))


def pytest_collection_modifyitems(config, items):
    """Put the slowest files first (a stable sort: every file's tests keep their order)."""
    items.sort(key=_slow_rank)
