"""How the suite runs on several workers: ``python -m pytest -n 2`` (the README's command, what
``.ci/run`` runs) with pytest-xdist and the ``--dist loadfile`` set in ``pyproject.toml``.

Each worker is its own pytest process: its own environment (``monkeypatch.setenv`` stays in it),
its own ``tmp_path`` folders, DAGSTER_HOMEs and free ports, so two tests never share state. What
is shared on purpose stays on one worker, in one unit of work:

* every module is one unit, so a module-scoped fixture (a generated landing zone, a materialized
  warehouse, the demo's run) is built once, not once per worker;
* the end-to-end tests (``segment_pipeline_tests/e2e/``) are one unit together, so one
  ``dagster dev`` is started per run (the session fixture ``dev_server``) and the tests that
  start their own deployment run before it on the same worker: never two Dagster deployments of
  these tests at once. Being the longest unit, it is sent to a worker first (``e2e/conftest.py``
  orders it), while the other worker runs the rest.

The units are made by the scheduler below from the test ids (not with ``xdist_group`` marks:
with pytest 9.2, ``--dist loadgroup`` of pytest-xdist 3.8.0 no longer sees them,
pytest-dev/pytest-xdist#1386). Without ``-n`` none of this applies and the suite runs in one
process as before.
"""

from __future__ import annotations

import os

import pytest

E2E_DIR = "segment_pipeline_tests/e2e/"


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: ``"e2e"`` for an end-to-end test, else its module's path."""
    module = nodeid.split("::", 1)[0]
    return "e2e" if module.startswith(E2E_DIR) else module


def on_an_xdist_worker() -> bool:
    """True in a pytest-xdist worker process (``-n N``); False in a one-process run."""
    return "PYTEST_XDIST_WORKER" in os.environ


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: pytest without xdist never calls it
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile`` with the e2e folder as one file (see the module docstring)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModuleOrE2EScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ModuleOrE2EScheduling(config, log)
