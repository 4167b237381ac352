"""nbrefactor's benchmarks: one command, one table, every ratio measured side by side in one run.

    python benchmarks/run.py [--corpus ../shared/corpus] [--repeat 5]

(a) `nbrefactor check` over the corpus against `ruff check` over the same notebooks, cold (no cache) and warm
(b) `nbrefactor fix` per notebook against the libcst floor (parse + print of the joined source)
(c) CLI cold start against `python -c pass` and `python -c "import libcst"`
(d) peak memory on the largest notebook
(e) the JupyterLab endpoint's latency for a 100-cell notebook (needs jupyter_server)
(f) `nbrefactor server`: a 100-cell notebook re-checked after one cell changes (needs pygls)

Machines are noisy: each measurement is repeated and the median is shown; the targets compare
numbers taken in the same run. Not part of the test suite. How the time grows with a notebook's
size (cells, lines per cell) is benchmarks/scaling.py's table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from nbrefactor.launcher.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def median_time(cmd: list[str], repeat: int, **kwargs) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def corpus_notebooks(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.rglob("*") if p.suffix in (".ipynb", ".py") and p.is_file())


# What any check written in Python pays at least: start, read every notebook's JSON (or script),
# and parse each code cell with CPython's own parser; no analysis at all.
PYTHON_FLOOR = """
import ast, json, pathlib, sys, warnings
warnings.simplefilter("ignore")
for p in sorted(pathlib.Path(".").rglob("*")):
    if p.suffix not in (".ipynb", ".py") or not p.is_file():
        continue
    try:
        data = p.read_bytes()
        cells = [data.decode()] if p.suffix == ".py" else [
            c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in json.loads(data).get("cells", []) if c.get("cell_type") == "code"]
    except (ValueError, KeyError, AttributeError):
        continue
    for cell in cells:
        try:
            ast.parse(cell)
        except (SyntaxError, ValueError):
            pass
"""


def bench_check(corpus: Path, repeat: int) -> list[tuple[str, str, str, str]]:
    """(a) cold (`--no-cache`; ruff `--no-cache`) and warm (each tool's cache filled by a first run),
    in a copy of the corpus: the cache lives in the project folder, and the shared corpus stays as it is."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "corpus"
        shutil.copytree(corpus, project, ignore=shutil.ignore_patterns(".nbrefactor_cache", ".ruff_cache"))
        env = {k: v for k, v in os.environ.items() if k != "NBREFACTOR_CACHE_DIR"}
        env.update({"PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(Path(tmp) / "xdg")})  # its own cache key
        nbr = [PY, "-m", "nbrefactor", "check", "-q", "--exit-zero", "."]
        cold = median_time([*nbr, "--no-cache"], repeat, cwd=project, env=env)
        # the default output: its summary line counts what `fix` fixes, so every finding is labelled
        labelled = median_time([PY, "-m", "nbrefactor", "check", "--exit-zero", "--no-cache", "."], repeat, cwd=project, env=env)
        subprocess.run(nbr, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        warm = median_time(nbr, repeat, cwd=project, env=env)
        ruff = shutil.which("ruff") or shutil.which("ruff", path=os.path.dirname(PY))
        if ruff is None:
            return [("(a) check over the corpus: cold (--no-cache), warm", f"{cold:.2f} s, {warm:.2f} s", "ruff not installed", "target 3x ruff")]
        ruff_check = [ruff, "check", "--isolated", "--exit-zero", "."]
        ruff_cold = median_time([*ruff_check, "--no-cache"], repeat, cwd=project)
        floor = median_time([PY, "-c", PYTHON_FLOOR], repeat, cwd=project)
        subprocess.run(ruff_check, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        ruff_warm = median_time(ruff_check, repeat, cwd=project)
    return [
        ("(a) check over the corpus vs ruff check, cold (--no-cache)", f"{cold:.2f} s vs {ruff_cold:.2f} s", f"{cold / ruff_cold:.1f}x", "<= 3x"),
        ("    cold, default output (fix labels in the summary) vs ruff cold", f"{labelled:.2f} s vs {ruff_cold:.2f} s", f"{labelled / ruff_cold:.1f}x", ""),
        ("    warm (each tool's cache filled by a first run)", f"{warm:.2f} s vs {ruff_warm:.2f} s", f"{warm / ruff_warm:.1f}x", ""),
        ("    Python's floor: read the corpus + ast.parse every code cell, one process", f"{floor:.2f} s vs {ruff_cold:.2f} s", f"{floor / ruff_cold:.1f}x", ""),
    ]


def bench_fix(corpus: Path, repeat: int) -> list[tuple[str, str, str, str]]:
    sys.path.insert(0, str(ROOT))
    import libcst as cst

    import nbrefactor.cli  # noqa: F401 - the process `nbrefactor fix` is (it skips the IRI grammar jupytext's import chain would compile)

    from nbrefactor.errors import NotebookError
    from nbrefactor.fixer import fix_notebook
    from nbrefactor.notebook.join import join
    from nbrefactor.notebook.model import read_notebook

    fix_total = floor_total = 0.0
    worst = (0.0, "")
    for path in corpus_notebooks(corpus):
        try:
            nb = read_notebook(path)
        except NotebookError:
            continue
        if not nb.is_python:
            continue
        code = join(nb).code
        floors, fixes = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            cst.parse_module(code).code  # noqa: B018 - the floor: parse and print
            floors.append(time.perf_counter() - t)
            t = time.perf_counter()
            try:
                fix_notebook(read_notebook(path, path.read_bytes()), unsafe_fixes=True, devices=2)
            except NotebookError:
                pass
            fixes.append(time.perf_counter() - t)
        f, fl = statistics.median(fixes), statistics.median(floors)
        fix_total += f
        floor_total += fl
        if fl > 0.005 and f / fl > worst[0]:
            worst = (f / fl, path.name)
    return [
        ("(b) fix, all corpus notebooks vs libcst parse+print", f"{fix_total:.2f} s vs {floor_total:.2f} s", f"{fix_total / floor_total:.1f}x", "<= 1.5x"),
        ("    worst single notebook", worst[1][:40], f"{worst[0]:.1f}x", ""),
    ]


def bench_cold_start(repeat: int) -> list[tuple[str, str, str, str]]:
    bare = median_time([PY, "-c", "pass"], repeat * 2)
    libcst_import = median_time([PY, "-c", "import libcst"], repeat * 2)
    help_ = median_time([PY, "-m", "nbrefactor", "--help"], repeat * 2)
    one = ROOT / "examples" / "fabric_bad.ipynb"
    check_one = median_time([PY, "-m", "nbrefactor", "check", "--no-cache", str(one)], repeat * 2)
    return [
        ("(c) cold start: `nbrefactor --help` vs `python -c pass`", f"{help_:.3f} s vs {bare:.3f} s", f"+{help_ - bare:.3f} s", "<= +0.3 s"),
        ("    `import libcst` alone", f"{libcst_import:.3f} s", f"+{libcst_import - bare:.3f} s", ""),
        ("    `nbrefactor check` on one small notebook", f"{check_one:.3f} s", f"+{check_one - bare:.3f} s", ""),
    ]


def _peak_mib(cmd: list[str]) -> float:
    """Peak RSS of a command, measured by GNU time (a small parent: a child forked from this
    big benchmark process would count the parent's pages in its own peak)."""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    r = subprocess.run([gnu_time, "-f", "%M", *cmd], capture_output=True, text=True, cwd=ROOT)
    return int(r.stderr.strip().splitlines()[-1]) / 1024


def bench_memory(corpus: Path) -> list[tuple[str, str, str, str]]:
    largest = max(corpus_notebooks(corpus), key=lambda p: p.stat().st_size)
    check = _peak_mib([PY, "-m", "nbrefactor", "check", "--no-cache", str(largest)])
    fix = _peak_mib([PY, "-m", "nbrefactor", "fix", "--diff", "--unsafe-fixes", str(largest)])
    json_only = _peak_mib([PY, "-c", "import json, sys; json.load(open(sys.argv[1]))", str(largest)])
    size = largest.stat().st_size / 1e6
    return [
        (f"(d) peak memory, largest notebook ({size:.1f} MB)", f"check {check:.0f} MiB, fix {fix:.0f} MiB", f"python + json.load alone {json_only:.0f} MiB", ""),
    ]


def bench_endpoint(repeat: int) -> list[tuple[str, str, str, str]]:
    try:
        import jupyter_server  # noqa: F401
    except ImportError:
        return [("(e) endpoint latency, 100 cells", "jupyter_server not installed", "", "p95 < 150 ms")]
    cells = []
    for i in range(100):
        src = f"x{i} = {i}\nprint(x{i})" if i % 10 else "import torch\nimport lightning as L\nds = torch.utils.data.TensorDataset(torch.randn(8, 2))"
        cells.append({"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src})
    cells.append({"cell_type": "code", "execution_count": None, "id": "launch", "metadata": {}, "outputs": [],
                  "source": "def train(fabric):\n    for b in ds:\n        pass\n\nfabric = L.Fabric(accelerator='cuda', devices=2)\nfabric.launch(train)"})
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "P"}}, "nbformat": 4, "nbformat_minor": 5}
    port, token = free_port(), "bench"
    workdir = tempfile.mkdtemp()
    server = subprocess.Popen(
        [PY, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}", "--no-browser",
         "--allow-root", f"--ServerApp.root_dir={workdir}", '--ServerApp.jpserver_extensions={"nbrefactor.server": True}'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )
    try:
        url = f"http://127.0.0.1:{port}/nbrefactor"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/version?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        rows = []
        for endpoint in ("check", "fix"):
            body = json.dumps({"notebook": nb, "path": "bench.ipynb"}).encode()
            times = []
            for i in range(max(20, repeat * 6)):
                req = urllib.request.Request(f"{url}/{endpoint}", data=body, method="POST",
                                             headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
                t = time.perf_counter()
                urllib.request.urlopen(req, timeout=30).read()
                if i >= 2:  # the first requests start the fork server (its imports, its warm-up)
                    times.append(time.perf_counter() - t)
            times.sort()
            p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95) - 1]
            rows.append((f"(e) POST /nbrefactor/{endpoint}, 101 cells", f"p50 {p50 * 1000:.0f} ms", f"p95 {p95 * 1000:.0f} ms", "p95 < 150 ms"))
        return rows
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def bench_lsp(repeat: int) -> list[tuple[str, str, str, str]]:
    """(f) didChange of one cell of a 100-cell notebook -> its publishDiagnostics, through a real
    LSP client (pygls's) talking to `nbrefactor server` over stdio; the server's debounce is in it."""
    try:
        from lsprotocol import types
        from pygls.lsp.client import LanguageClient
    except ImportError:
        return [("(f) language server re-check, 100 cells", "pygls not installed", "", "p95 < 500 ms")]
    import asyncio

    from nbrefactor.lsp.server import DEBOUNCE

    sources = [f"x{i} = {i}\nprint(x{i})" if i % 10 else "import torch\nimport lightning as L\nds = torch.utils.data.TensorDataset(torch.randn(8, 2))" for i in range(100)]
    sources.append("def train(fabric):\n    for b in ds:\n        pass\n\nfabric = L.Fabric(accelerator='cuda', devices=2)\nfabric.launch(train)")
    bad, clean = "y = torch.zeros(1).cuda()", "y = torch.zeros(1)"
    nb_uri = "file:///bench/bench.ipynb"
    uris = [f"vscode-notebook-cell:/bench/bench.ipynb#C{i}" for i in range(len(sources))]

    async def run() -> list[float]:
        client = LanguageClient("bench", "1")
        arrived: dict[str, asyncio.Event] = {}

        @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def published(params: types.PublishDiagnosticsParams):
            if params.uri in arrived:
                arrived[params.uri].set()

        await client.start_io(PY, "-m", "nbrefactor", "server")
        caps = types.ClientCapabilities(notebook_document=types.NotebookDocumentClientCapabilities(
            synchronization=types.NotebookDocumentSyncClientCapabilities()))
        await client.initialize_async(types.InitializeParams(capabilities=caps))
        client.initialized(types.InitializedParams())
        edited = uris[55]
        arrived[edited] = asyncio.Event()
        client.notebook_document_did_open(types.DidOpenNotebookDocumentParams(
            notebook_document=types.NotebookDocument(uri=nb_uri, notebook_type="jupyter-notebook", version=1, cells=[
                types.NotebookCell(kind=types.NotebookCellKind.Code, document=u) for u in uris]),
            cell_text_documents=[types.TextDocumentItem(uri=u, language_id="python", version=1, text=t) for u, t in zip(uris, sources)],
        ))
        times, text, version = [], sources[55], 1
        for i in range(max(20, repeat * 6)):
            new = bad if text != bad else clean
            change = types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(0, 0), types.Position(text.count("\n"), len(text.split("\n")[-1]))), text=new)
            version += 1
            arrived[edited].clear()
            t = time.perf_counter()
            client.notebook_document_did_change(types.DidChangeNotebookDocumentParams(
                notebook_document=types.VersionedNotebookDocumentIdentifier(uri=nb_uri, version=version),
                change=types.NotebookDocumentChangeEvent(cells=types.NotebookDocumentCellChanges(text_content=[
                    types.NotebookDocumentCellContentChanges(
                        document=types.VersionedTextDocumentIdentifier(uri=edited, version=version), changes=[change])])),
            ))
            await asyncio.wait_for(arrived[edited].wait(), 60)
            if i >= 2:  # the first checks import the analysis
                times.append(time.perf_counter() - t)
            text = new
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return sorted(times)

    times = asyncio.run(run())
    p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95) - 1]
    return [(f"(f) language server: didChange -> publishDiagnostics, {len(sources)} cells",
             f"p50 {p50 * 1000:.0f} ms", f"p95 {p95 * 1000:.0f} ms (debounce {DEBOUNCE * 1000:.0f} ms included)", "p95 < 500 ms")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    rows += bench_check(args.corpus, args.repeat)
    rows += bench_fix(args.corpus, max(1, args.repeat // 2))
    rows += bench_cold_start(args.repeat)
    rows += bench_memory(args.corpus)
    rows += bench_endpoint(args.repeat)
    rows += bench_lsp(args.repeat)
    n = len(corpus_notebooks(args.corpus))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; corpus: {n} files; median of {args.repeat} runs")
    print()
    print("| measurement | nbrefactor vs baseline | ratio | target |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
