"""The repository runs from any clone: no file names a path of the machine it was written on.

Every tracked (and every new, not ignored) text file is searched for absolute paths of a
developer's or CI machine: an absolute path whose first folder is one of the home, scratch, mount
or checkout folders in :data:`MACHINE_PATH` (the system temp folder spelled out included). Code
finds its files relative to itself (``Path(__file__).parent``), through the project settings or
``tempfile.gettempdir()``; tests use ``tmp_path``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from segment_pipeline_tests.fakes.base import SPECS_DIR

ROOT = Path(__file__).resolve().parent.parent

#: An absolute path starting with one of these folders, not preceded by a character that would
#: make it part of a URL, a relative path or a longer name (``https://host/work/x``, ``./tmp/x``).
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|farm|tmp|home|Users|root|mnt)(?:/|\b)")

#: Files whose leading ``/`` means "the repository root", not the machine's.
REPO_RELATIVE = {".gitignore", ".dockerignore"}

#: What a clone without git history would skip (mirrors ``.gitignore``).
_UNTRACKED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".dagster_home",
                   "bench_data", "tmp", "artifacts", "warehouse", "exports"}


def _repository_files() -> list[Path]:
    """Tracked files plus new files git does not ignore; without git, a walk of the checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*")
                if p.is_file() and not _UNTRACKED_DIRS.intersection(p.relative_to(ROOT).parts[:-1])
                and not p.name.endswith(".egg-info")]
    return [ROOT / name for name in out.decode().split("\0") if name]


def machine_paths(files: list[Path], root: Path = ROOT) -> list[str]:
    """``path:line: text`` (path relative to ``root``) for every line naming an absolute machine path."""
    hits = []
    for path in files:
        if path.name in REPO_RELATIVE or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # binary (Parquet, images): no paths to read
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{path.relative_to(root)}:{n}: {line.strip()[:160]}")
    return hits


def test_no_file_names_a_path_of_this_machine():
    files = _repository_files()
    assert len(files) > 50, f"expected the repository's files under {ROOT}, found {len(files)}"
    hits = machine_paths(files)
    assert not hits, "files name an absolute path of one machine; a clone elsewhere will not have it:\n" + "\n".join(hits)


@pytest.mark.parametrize("line", [
    'SPECS = Path("' + "/wo" + 'rk/shared/specs")',
    "default=" + "'/t" + "mp/bench_api'",
    "see " + "/ho" + "me/alice/project/data",
    "    --workdir " + "/t" + "mp",
    "cd " + "/fa" + "rm/checkout && make",
])
def test_the_guard_catches_machine_paths(tmp_path, line):
    """The check above can fail: each of these lines is reported, with its file and line."""
    f = tmp_path / "probe.py"
    f.write_text(f"x = 1\n{line}\n")
    assert machine_paths([f], tmp_path) == [f"probe.py:2: {line.strip()}"]


@pytest.mark.parametrize("line", [
    "url = 'https://example.com/work/items'",
    "rel = './tmp/x' + 'data/tmp/y'",
    "path = tmp_path / 'work' / 'x'",
    "see docs/automation.md",
])
def test_the_guard_leaves_urls_and_relative_paths_alone(tmp_path, line):
    f = tmp_path / "probe.py"
    f.write_text(line + "\n")
    assert machine_paths([f], tmp_path) == []


def test_vendor_specs_ship_with_the_tests_with_their_source_and_licence():
    """The fakes validate against specs inside the repository, found relative to the fakes' module."""
    assert SPECS_DIR.is_relative_to(ROOT)
    assert sorted(p.name for p in (SPECS_DIR / "klaviyo").glob("*.json"))  # the fake loads every one
    assert (SPECS_DIR / "dotdigital" / "v2-api-swagger.json").is_file()
    assert "MIT License" in (SPECS_DIR / "klaviyo" / "LICENSE").read_text()
    readme = (SPECS_DIR / "README.md").read_text()
    for needle in ("klaviyo/openapi", "MIT", "2026-07-15", "dotdigital", "licence"):
        assert needle in readme
