"""The hostile-input corpus: notebooks built to hang, crash or exhaust `check` and `fix`.

Generated here (never committed as large files): `generate(folder)` writes every case and returns
them. Each case says what a user must see (exit code, a line on stderr, nothing written) and a
ceiling for wall time and peak memory, about 10x what it takes on a quiet machine, so a blow-up
fails the test while load does not. `python -m tests.hostile` prints the table for the note.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


@dataclass
class Case:
    name: str
    command: tuple[str, ...]  # nbrefactor arguments; {path} is the case's file
    files: dict[str, object]  # relative path -> bytes | str | ("fifo",) | ("symlink", target)
    exit: tuple[int, ...]  # the accepted exit codes
    stderr: str = ""  # a piece of the one line a user must see ("" = any)
    seconds: float = 30.0  # ceiling for the wall time
    megabytes: int = 600  # ceiling for peak memory (the command and its workers)
    unchanged: tuple[str, ...] = ()  # files that must keep their bytes
    about: str = ""


def _nb(*sources: str, metadata: dict | None = None) -> str:
    cells = [
        {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s}
        for i, s in enumerate(sources)
    ]
    meta = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    meta.update(metadata or {})
    return json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}, indent=1) + "\n"


FABRIC = "import lightning as L\nfabric = L.Fabric(accelerator='cuda', devices=2, strategy='ddp_notebook')\n"
TRAIN = "model = torch.nn.Linear(2, 2)\nmodel, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))\nprint(model)\n"


def _code_case(name: str, source: str, **kw) -> list[Case]:
    """`check` and `fix` on one notebook whose second cell is `source` (the first imports
    Lightning, so the analysis runs rather than being skipped as irrelevant)."""
    files = {f"{name}.ipynb": _nb("import torch\n" + FABRIC + "fabric.launch()\n", source, TRAIN)}
    fix_kw = dict(kw)
    return [
        Case(f"{name}/check", ("check", "{path}"), files, **kw),
        Case(f"{name}/fix", ("fix", "--unsafe-fixes", "{path}"), files, **fix_kw),
    ]


def _yaml_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines)


def cases() -> list[Case]:
    too_deep = dict(exit=(2,), stderr="skipped: the code is nested too deeply", unchanged=("{path}",))
    too_large = dict(exit=(2,), stderr="skipped: too large", unchanged=("{path}",))
    out: list[Case] = []
    out += _code_case("attribute_chain_20000", "x = a" + ".b" * 20000 + "\n", **too_deep)
    out += _code_case("call_chain_5000", "x = f" + "()" * 5000 + "\n", **too_deep)
    out += _code_case("binary_operation_100000", "x = " + " + ".join(["1"] * 100000) + "\n", **too_large)
    out += _code_case("binary_operation_20000", "x = " + " + ".join(["1"] * 20000) + "\n", **too_deep)
    out += _code_case("binary_operation_over_20000_lines", "x = (1\n" + " + 1\n" * 20000 + ")\n", **too_deep)
    out += _code_case("lists_nested_190", "x = " + "[" * 190 + "]" * 190 + "\n", exit=(0, 1))
    out += _code_case("attribute_chain_190", "x = a" + ".b" * 190 + "\n", exit=(0, 1))
    out += _code_case("if_nested_99", "".join("    " * i + "if x:\n" for i in range(99)) + "    " * 99 + "y = " + "-" * 80 + "1\n", exit=(0, 1))
    out += _code_case("unary_chain_50000", "x = " + "-" * 50000 + "1\n", **too_deep)
    out += _code_case("comparison_chain_50000", "x = " + " < ".join(["a"] * 50000) + "\n", **too_large)
    out += _code_case("comparison_chain_20000", "x = " + " < ".join(["a"] * 20000) + "\n", exit=(0, 1))
    out += _code_case("lambda_chain_2000", "f = " + "lambda: " * 2000 + "1\n", **too_deep)
    out += _code_case("decorators_20000", "@d\n" * 20000 + "def f():\n    pass\n", exit=(0, 1), seconds=30)
    # Python's own limits: the cell is not Python to the parser, which is a note, not a crash.
    out += _code_case("parentheses_nested_300", "x = " + "(" * 300 + "1" + ")" * 300 + "\n", exit=(0, 1))
    out += _code_case("indentation_120", "".join("    " * i + "if x:\n" for i in range(120)) + "    " * 120 + "pass\n", exit=(0, 1))
    out += _code_case("integer_of_5000_digits", "x = " + "9" * 5000 + "\n", exit=(0, 1))
    out += _code_case("string_of_5_mb", "x = '" + "a" * (5 * MiB) + "'\n", **too_large)
    out += _code_case("string_of_90_kb", "x = '" + "a" * (90 * 1024) + "'\n", exit=(0, 1))
    out += _code_case("line_of_10_mb", "x = [" + "0, " * (10 * MiB // 3) + "]\n", **too_large)
    out += _code_case("statements_on_one_line_100000", "; ".join(["x = 1"] * 100000) + "\n", **too_large)
    out += _code_case("cell_of_60000_lines", "".join(f"x{i} = {i}\n" for i in range(60000)), **too_large)

    # Size in cells: linear, so the 20,000-cell notebook is a matter of seconds.
    many = ["import torch\n" + FABRIC + "fabric.launch()\n"] + [f"x{i} = {i}\nprint(x{i})\n" for i in range(20000)] + [TRAIN]
    files = {"cells_20000.ipynb": _nb(*many)}
    out.append(Case("cells_20000/check", ("check", "{path}"), files, exit=(1,), seconds=150, megabytes=2000))
    out.append(Case("cells_20000/fix", ("fix", "--unsafe-fixes", "{path}"), files, exit=(0, 1), seconds=150, megabytes=2500))
    over = {"cells_120000.ipynb": _nb(*(["import lightning\n"] + ["x = 1\n"] * 120000))}
    out.append(Case("cells_120000/check", ("check", "{path}"), over, seconds=60, megabytes=2500, **too_large))

    # Files that are not what they claim.
    bomb_md = "---\njupyter:\n  jupytext:\n    formats: ipynb,md\n" + "".join("  " + ln + "\n" for ln in _yaml_bomb().splitlines()) + "---\n\n```python\nimport lightning\n```\n"
    out.append(Case("yaml_alias_bomb/md", ("check", "{path}"), {"bomb.md": bomb_md}, exit=(2,), stderr="header", seconds=10))
    bomb_py = "# ---\n# jupyter:\n#   jupytext:\n#     formats: ipynb,py:percent\n" + "".join("#   " + ln + "\n" for ln in _yaml_bomb().splitlines()) + "# ---\n\n# %%\nimport lightning\n"
    out.append(Case("yaml_alias_bomb/py", ("check", "{path}"), {"bomb.py": bomb_py}, exit=(2,), stderr="header", seconds=10))
    out.append(Case("yaml_alias_bomb/fix", ("fix", "{path}"), {"bomb.py": bomb_py}, exit=(2,), stderr="header", seconds=10, unchanged=("{path}",)))
    odd = {"odd_formats.ipynb": _nb("import lightning\n", metadata={"jupytext": {"formats": 3}})}
    out.append(Case("jupytext_formats_int/check", ("check", "{path}"), odd, exit=(0, 2), seconds=10))
    out.append(Case("jupytext_formats_int/fix", ("fix", "{path}"), odd, exit=(0, 2), seconds=10, unchanged=("{path}",)))
    odd2 = {"odd_jupytext.ipynb": _nb("import lightning\n", metadata={"jupytext": [1, {"formats": None}], "kernelspec": 7})}
    out.append(Case("jupytext_metadata_list/check", ("check", "{path}"), odd2, exit=(0, 1, 2), seconds=10))
    deep_json = '{"cells": [], "metadata": ' + '{"a": ' * 100000 + "1" + "}" * 100000 + ', "nbformat": 4, "nbformat_minor": 5}'
    out.append(Case("json_nested_100000", ("check", "{path}"), {"deep.ipynb": deep_json}, exit=(2,), stderr="deep.ipynb", seconds=10))
    out.append(Case("source_as_1000000_pieces", ("check", "{path}"), {"pieces.ipynb": _nb(["import lightning\n"] + ["x = 1\n"] * 10 + ["y"] * 1_000_000)}, seconds=30, megabytes=1000, **too_large))
    outputs = {"cell_type": "code", "execution_count": 1, "id": "o", "metadata": {}, "source": "import lightning\nprint(1)\n",
               "outputs": [{"output_type": "stream", "name": "stdout", "text": "x\n"}] * 200000}
    big_outputs = json.dumps({"cells": [outputs, json.loads(_nb("import torch\n" + FABRIC + "fabric.launch()\n" + TRAIN))["cells"][0]],
                              "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "P"}}, "nbformat": 4, "nbformat_minor": 5})
    out.append(Case("outputs_200000/fix", ("fix", "--unsafe-fixes", "{path}"), {"outputs.ipynb": big_outputs}, exit=(0, 1), seconds=60, megabytes=1500))
    out.append(Case("nul_bytes", ("check", "{path}"), {"nul.ipynb": _nb("import lightning\nx = '\x00'\n\x00\n")}, exit=(0, 1, 2), seconds=10))

    # A folder with things that are not regular files: skipped, and the real notebook checked.
    folder = {"folder/real.ipynb": _nb(FABRIC + "fabric.launch()\n"),
              "folder/zero.ipynb": ("symlink", "/dev/zero"), "folder/fifo.ipynb": ("fifo",),
              "folder/urandom.py": ("symlink", "/dev/urandom")}
    out.append(Case("folder_with_device_and_fifo", ("check", "{dir}/folder"), folder, exit=(1,), seconds=10))
    out.append(Case("named_fifo", ("check", "{dir}/folder/fifo.ipynb"), folder, exit=(2,), stderr="not a regular file", seconds=10))
    out.append(Case("named_dev_zero", ("check", "{dir}/folder/zero.ipynb"), folder, exit=(2,), stderr="not a regular file", seconds=10))
    return out


def generate(folder: Path, case: Case) -> Path:
    """Write the case's files under `folder`; return its first file (the `{path}`)."""
    first = None
    for rel, content in case.files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        first = first or p
        if os.path.lexists(p):
            continue
        if isinstance(content, tuple) and content[0] == "fifo":
            os.mkfifo(p)
        elif isinstance(content, tuple) and content[0] == "symlink":
            os.symlink(content[1], p)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return first


@dataclass
class Outcome:
    exit: int | None
    seconds: float
    megabytes: float
    stdout: str
    stderr: str
    changed: list[str] = field(default_factory=list)


def run(case: Case, folder: Path, hard_seconds: float | None = None) -> Outcome:
    """The case through the real CLI in a child process; wall time and the peak RSS of the child
    (VmHWM, sampled every 10 ms). A hard limit (the case's ceiling x 3 by default) kills it."""
    path = generate(folder, case)
    args = [a.replace("{path}", str(path)).replace("{dir}", str(folder)) for a in case.command]
    watched = [Path(str(u).replace("{path}", str(path))) for u in case.unchanged]
    before = {p: p.read_bytes() for p in watched if p.is_file()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    cap = int(os.environ.get("HOSTILE_MEMORY_CAP_MB", "6000")) * MiB  # never let a blow-up take the machine

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.Popen([sys.executable, "-m", "nbrefactor", *args], cwd=folder, env=env, preexec_fn=limit,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    streams: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, f=f: streams.__setitem__(n, f.read()), daemon=True)
               for n, f in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    deadline = start + (hard_seconds or float(os.environ.get("HOSTILE_HARD_SECONDS", case.seconds * 3)))
    code, peak = None, 0
    while True:
        # The peak of this run's own memory: VmHWM of the running program. (The rusage of wait4
        # would count the RSS of this harness, which the child's memory map starts as.)
        peak = max(peak, _high_water_kib(proc.pid))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.perf_counter() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = code if code is not None else -9
    seconds = time.perf_counter() - start
    for r in readers:
        r.join(10)
    out, err = streams.get("out", b""), streams.get("err", b"")
    changed = [str(p) for p, b in before.items() if not p.is_file() or p.read_bytes() != b]
    return Outcome(code, seconds, peak / 1024, out.decode(errors="replace"), err.decode(errors="replace"), changed)


def _high_water_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    """Print each case's exit code, time and peak memory (for the note and the README)."""
    import tempfile

    names = sys.argv[1:]
    for case in cases():
        if names and not any(case.name.startswith(n) for n in names):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            o = run(case, Path(tmp))
        tail = (o.stderr.strip().splitlines() or [""])[-1][:110]
        trace = " TRACEBACK" if "Traceback" in o.stderr else ""
        print(f"{case.name:38} exit {o.exit!s:>4} {o.seconds:7.2f} s {o.megabytes:7.0f} MB{trace}  {tail}", flush=True)


if __name__ == "__main__":
    main()
