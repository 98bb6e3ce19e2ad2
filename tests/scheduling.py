"""How the suite is dealt out to pytest-xdist's workers (``-n auto`` in ``pyproject.toml``).

A worker for each CPU this process may use, at most 4 (more mostly wait on each other's launches, and add their
memory). Whole files go to a worker, so that a file's module fixtures (the training launches its tests share) are
built once; the files that share the session's ``trained`` fixture go to one worker together, so that it trains once;
and the longest units go first, so that the workers finish together. Under xdist each worker runs torch on one
thread: the workers share the cores, and threads waiting on a busy core only burn time.
"""

import os
from pathlib import PurePath

import pytest

# the files whose tests ask for `trained` or `bundles` (test_layout.py checks this against the fixtures they ask for)
TRAINED = "files sharing the trained fixture"
TRAINED_FILES = frozenset(
    {
        "test_embed.py",
        "test_eval_gue.py",
        "test_hf_finetune.py",
        "test_probes.py",
        "test_use.py",
        "test_variants.py",
    }
)

# the longest units, longest first (a minute or more of a worker each, on 2 cores); the rest follow in file order
LONGEST_FIRST = (
    "test_train.py",
    "test_faults.py",
    TRAINED,
    "test_sequence_parallel.py",
    "test_bench.py",
    "test_remote.py",
    "test_compare.py",
)


MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: xdist's own count is physical cores, which a VM whose 2 CPUs are one core's threads reports as 1."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):  # xdist's own override
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, usable))


def unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or the trained fixture's files together."""
    path = nodeid.split("::", 1)[0]
    return TRAINED if PurePath(path).name in TRAINED_FILES else path


def _rank(nodeid: str) -> int:
    name = unit(nodeid)
    name = name if name == TRAINED else PurePath(name).name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _rank(item.nodeid))  # stable: a file's tests keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":  # the default with -n; a --dist given on the command line is kept
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)

    config.option.loadscopereorder = False  # xdist would put the units with the most tests first, not the longest
    return ByUnit(config, log)
