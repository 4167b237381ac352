from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"

# `check` keeps a results cache (nbrefactor/cache.py). The suite keeps it on, so that every test
# that checks a file twice also checks that a warm run prints what a cold one printed, but in a
# folder of this test process: tests run from the repository root must not fill its
# .nbrefactor_cache/, and no entry outlives the session (entries are keyed by nbrefactor's code
# too, so one from an older checkout could never be used anyway). tests/test_cache.py sets its own.
_CACHE = tempfile.mkdtemp(prefix="nbrefactor-test-cache-")
os.environ.setdefault("NBREFACTOR_CACHE_DIR", _CACHE)
atexit.register(shutil.rmtree, _CACHE, True)


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", help="rewrite the expected files of golden cases")


@pytest.fixture
def update_goldens(request) -> bool:
    return request.config.getoption("--update-goldens")


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".ipynb", ".py"))


def run_cli(*args: str, cwd: Path | None = None, stdin: bytes | None = None):
    """Run the real console entry point in a subprocess (exit codes and streams as a user sees them)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "nbrefactor", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
