"""Build hook: put the prebuilt JupyterLab extension into the wheel.

The wheel ships `labextension/dist/nbrefactor-lab` as shared data (see [tool.setuptools.data-files]
in pyproject.toml), so users need no node. When that folder is missing and node is available, it
is built here first (`jlpm install --immutable && jlpm build:prod`, ~1 min cold). Without node, or
with NBREFACTOR_SKIP_LABEXTENSION=1, the package is built without the Lab frontend (the server
extension and the CLI are unaffected) and a note says so.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

LAB = Path(__file__).resolve().parent / "labextension"
BUILT = LAB / "dist" / "nbrefactor-lab" / "package.json"


def build_labextension() -> None:
    if BUILT.exists() or not (LAB / "package.json").exists():
        return
    if os.environ.get("NBREFACTOR_SKIP_LABEXTENSION"):
        print("nbrefactor: NBREFACTOR_SKIP_LABEXTENSION set: no JupyterLab extension in this build", file=sys.stderr)
        return
    jlpm = shutil.which("jlpm")
    if jlpm is None or shutil.which("node") is None:
        print("nbrefactor: node or jlpm not found: building without the JupyterLab extension", file=sys.stderr)
        return
    subprocess.run([jlpm, "install", "--immutable"], cwd=LAB, check=True)
    subprocess.run([jlpm, "build:prod"], cwd=LAB, check=True)


build_labextension()
setup()
