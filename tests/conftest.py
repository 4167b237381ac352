from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"


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
