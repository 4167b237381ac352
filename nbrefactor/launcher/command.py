"""The `run` command: run a notebook in a fresh kernel, forked on N devices, and report.

Exit codes: 0 the notebook passed, 1 it failed (a cell raised, a rank did not finish, the time limit
passed), 2 the launcher could not run it (bad arguments, an unreadable notebook, no kernel, the
`run` extra not installed: one line `error: path: message`), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import click

EXIT_ERROR = 2
NEEDED = ("nbclient", "ipykernel", "jupyter_client", "torch", "lightning")


class _RunCommand(click.Command):
    """Bad arguments are one line naming the notebook, like every other error of `run`."""

    def make_context(self, info_name, args, parent=None, **extra):
        args = list(args)
        given = list(args)  # click consumes `args` while parsing
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as err:
            target = next((a for a in given if not a.startswith("-") and Path(a).suffix), "nbrefactor run")
            click.echo(f"error: {target}: {err.format_message()}", err=True)
            raise click.exceptions.Exit(EXIT_ERROR) from None


class _Failed(Exception):
    def __init__(self, path, message: str):
        self.line = f"{path}: {message}"


@click.command("run", cls=_RunCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("notebook", metavar="NB")
@click.option("--devices", type=click.IntRange(min=1), help="Processes to fork (default: every GPU; 2 on CPU).")
@click.option("--accelerator", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="`auto`: CUDA when there is a GPU, else CPU.")
@click.option("--smoke/--full", default=True, show_default=True, help="Smoke: a few batches and one epoch per Trainer, Fabric loaders cut short.")
@click.option("--timeout", type=click.FloatRange(min=0), default=600.0, show_default=True, help="Seconds for the whole run (0: no limit).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON to this file.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the executed notebook (with outputs) here.")
@click.option("--force", is_flag=True, help="Let -o/--report replace existing files (never the notebook itself).")
@click.option("--fix", is_flag=True, help="Run a fixed copy (as `nbrefactor fix` would write it); the notebook is not changed.")
@click.option("--compare", is_flag=True, help="Run the notebook and its fixed copy; show both verdicts side by side.")
@click.option("--unsafe-fixes", is_flag=True, help="With --fix/--compare: also apply unsafe fixes.")
@click.option("-v", "--verbose", is_flag=True, help="Stream the notebook's own output.")
@click.option("--engine", type=click.Choice(["torchrun", "fabric", "accelerate", "slurm"]), help="Run the script `nbrefactor export` writes (fixed first) under this launcher instead of a kernel, whole (no smoke mode), in the notebook's folder.")
def run(notebook, devices, accelerator, smoke, timeout, report_path, output, force, fix, compare, unsafe_fixes, verbose, engine):
    """Run a notebook in a fresh Jupyter kernel, forked on N devices (`ddp_notebook`), and say whether
    it works and, if not, which cell and line broke it and which rule explains it.

    The notebook on disk is never modified. -o/--report are written atomically, never over the
    notebook (not through a link either), and over an existing file only with --force.
    Exit 0 pass, 1 the notebook failed, 2 error.
    """
    from nbrefactor.launcher.runner import RunSettings

    settings = RunSettings(accelerator=accelerator, devices=devices, smoke=smoke, timeout=timeout or None, verbose=verbose)
    try:
        if engine:
            sys.exit(_engine_main(notebook, engine, settings, report_path, output, force, fix or compare or unsafe_fixes))
        code = _main(notebook, settings, report_path, output, fix or compare, compare, unsafe_fixes, force)
    except _Failed as err:
        click.echo(f"error: {err.line}", err=True)
        code = EXIT_ERROR
    sys.exit(code)


def _main(path, settings, report_path, output, fix, compare, unsafe_fixes, force=False) -> int:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise _Failed(path, f"`nbrefactor run` needs {', '.join(missing)} in this Python ({sys.executable}): pip install 'nbrefactor[run]'")
    notebook, node = _read(path)
    _check_targets(path, output, report_path, force)
    cwd = str(Path(path).resolve().parent)

    fixed = None
    if fix:
        fixed = _fixed_copy(notebook, settings, unsafe_fixes)
    runs = []
    if compare or not fix:
        runs.append(("original", notebook, node))
    if fix:
        fixed_notebook, fixed_node, fix_info = fixed
        runs.append(("fixed", fixed_notebook, fixed_node))

    reports = {}
    executed = None
    for label, nb_model, nb_node in runs:
        label_prefix = f"[{label}] " if compare else ""
        report, executed_node = _run_one(path, nb_model, nb_node, cwd, settings, label_prefix)
        if label == "fixed":
            report["copy"] = "fixed"
            report["fix"] = fix_info
        reports[label] = report
        executed = executed_node
        click.echo(_render(report), nl=False)
        if report["verdict"] == "interrupted":  # Ctrl-C stops the comparison too
            break

    from nbrefactor.launcher.report import exit_code, render_compare

    final = reports.get("fixed") or reports["original"]
    if final["verdict"] == "interrupted":
        compare = False
    if compare:
        click.echo(render_compare(reports["original"], reports["fixed"]), nl=False)
    if "fixed" in reports and reports["fixed"]["verdict"] == "fail":
        note = unsafe_note(path, reports["fixed"], compare)
        if note:
            click.echo(note)
    if report_path:
        data = {label: reports[label] for label in ("original", "fixed") if label in reports} if len(runs) > 1 else final
        _write(report_path, json.dumps(data, indent=2) + "\n", path, force)
    if output and executed is not None:
        import nbformat

        _write(output, nbformat.writes(executed), path, force)
    return exit_code(final)


def _engine_main(path, engine, settings, report_path, output, force, fix_options) -> int:
    """`--engine`: export, launch, report (nbrefactor.launcher.engine)."""
    if output or fix_options:
        raise _Failed(path, "--engine runs the exported script (safe fixes applied, as `nbrefactor export` does): -o, --fix, --compare and --unsafe-fixes do not apply")
    needed = ("torch", "accelerate") if engine == "accelerate" else ("torch", "lightning")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise _Failed(path, f"`nbrefactor run --engine` needs {', '.join(missing)} in this Python ({sys.executable}): pip install 'nbrefactor[run]'")
    from nbrefactor.launcher.engine import EngineError, render_text, run_engine
    from nbrefactor.launcher.report import exit_code

    notebook, _node = _read(path)
    _check_targets(path, None, report_path, force)
    try:
        report = run_engine(notebook, path, engine=engine, settings=settings)
    except EngineError as err:
        raise _Failed(path, str(err)) from None
    click.echo(render_text(report), nl=False)
    if report_path:
        _write(report_path, json.dumps(report, indent=2) + "\n", path, force)
    return exit_code(report)


def unsafe_note(path: str, fixed_report: dict, compare: bool) -> str | None:
    """When the fixed copy failed and `--unsafe-fixes` would fix findings it still has: say so,
    naming the one the failure is about when its rule is among them."""
    pending = (fixed_report.get("fix") or {}).get("unsafe_fixable") or []
    if not pending:
        return None
    code = ((fixed_report.get("failure") or {}).get("rule") or {}).get("code")
    about = [f for f in pending if f["code"] == code]
    listed = ", ".join(f"{f['code']} cell {f['cell']}" for f in (about or pending))
    again = f"nbrefactor run {path} {'--compare' if compare else '--fix'} --unsafe-fixes"
    if about:
        return f"note: the fixed copy fails on {listed}, which `--unsafe-fixes` would fix: `{again}`"
    return f"note: the fixed copy still has findings that `--unsafe-fixes` would fix ({listed}): `{again}`"


def _render(report: dict) -> str:
    from nbrefactor.launcher.report import render_text

    text = render_text(report)
    fix = report.get("fix")
    if fix is not None:
        lines = list(dict.fromkeys(f"  fix: {c['message']} (cell {c['cell']}, {c['code']})" for c in fix["changes"])) or ["  fix: nothing to change"]
        lines += [f"  fix refused: {r}" for r in fix["refused"]]
        text = text.replace("\n", "\n" + "\n".join(lines) + "\n", 1)
    return text


def _read(path: str):
    """The notebook (nbrefactor's model, for the static check) and an nbformat v4 node to execute."""
    from nbrefactor.errors import NotebookError
    from nbrefactor.notebook.model import read_notebook

    try:
        notebook = read_notebook(path)
    except NotebookError as err:
        raise _Failed(err.path, err.message) from None
    if not notebook.is_python:
        raise _Failed(path, f"the kernel language is {notebook.language}; nbrefactor run runs Python notebooks")
    from nbrefactor.discover import SCRIPT_MESSAGE, is_plain_script

    if is_plain_script(Path(path)):
        raise _Failed(path, SCRIPT_MESSAGE)
    return notebook, _node(notebook)


def _node(notebook):
    import warnings

    import nbformat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if notebook.format == "ipynb":
                node = nbformat.reads(notebook.raw, as_version=4)
            else:
                import jupytext

                node = jupytext.reads(notebook.raw, fmt=notebook.format)
            nbformat.validator.normalize(node)
        except Exception as err:  # nbformat and jupytext raise many kinds
            raise _Failed(notebook.path, f"cannot be run: {err}") from None
    return node


def _run_one(path, notebook, node, cwd, settings, label_prefix):
    from nbrefactor.launcher.progress import Progress
    from nbrefactor.launcher.report import build
    from nbrefactor.launcher.runner import LauncherError, code_cells, run_notebook

    findings, static_error = _static(notebook)
    progress = Progress(len(node.cells), len(code_cells(node)), label=label_prefix, verbose=settings.verbose)
    try:
        result = run_notebook(node, cwd=cwd, settings=settings, progress=progress)
    except LauncherError as err:
        raise _Failed(path, str(err)) from None
    return build(result, path=path, settings=settings, findings=findings, static_error=static_error), result.executed


def _static(notebook):
    from nbrefactor.checker import check_notebook
    from nbrefactor.config import Selection

    try:
        return check_notebook(notebook, Selection(), for_reading=True).diagnostics, None
    except Exception as err:  # the run still says what happened
        return [], f"{type(err).__name__}: {err}"


def _fixed_copy(notebook, settings, unsafe_fixes):
    """The fixed notebook, in memory: (model, node, what the fix did)."""
    try:
        from nbrefactor.fixer import fix_notebook
    except ImportError:
        raise _Failed(notebook.path, "--fix needs nbrefactor.fixer, which this installation does not have") from None
    from nbrefactor.config import Selection
    from nbrefactor.notebook.model import read_notebook

    try:
        result = fix_notebook(notebook, unsafe_fixes=unsafe_fixes, devices=settings.devices, selection=Selection())
        fixed = read_notebook(notebook.path, result.fixed.encode())
    except Exception as err:  # the fixer's own errors name the cell; anything else is one line too
        from nbrefactor.errors import NotebookError

        if isinstance(err, NotebookError):
            message = (f"cell {err.cell}: " if err.cell else "") + err.message
        else:
            message = f"{type(err).__name__}: {err}"
        raise _Failed(notebook.path, f"the fix failed: {message}") from None
    unsafe_fixable = []
    if result.remaining and not unsafe_fixes:
        from nbrefactor.checker import reusing_checks
        from nbrefactor.labels import probe

        with reusing_checks(selection=Selection()):
            labels = probe(result.after, result.remaining, Selection(), fixed_with=(False, settings.devices))
        unsafe_fixable = [
            {"code": d.code, "cell": d.cell, "row": d.row, "message": d.message}
            for d, (applicability, needs) in zip(result.remaining, labels)
            if applicability == "unsafe" and not needs
        ]
    info = {
        "changed": result.changed,
        "unsafe_fixable": unsafe_fixable,  # findings left that `--unsafe-fixes` would fix
        "changes": [{"code": c.code, "cell": c.cell, "message": c.message} for c in result.changes],
        "refused": list(result.refused),
        "remaining": [f"cell {d.cell}:{d.row}:{d.column}: {d.code} {d.message}" for d in result.remaining],
    }
    return fixed, _node(fixed), info


def _is_notebook(target: str, path: str) -> bool:
    """`target` names the notebook: the same name, or a symlink or hard link to it (same inode)."""
    if os.path.abspath(target) == os.path.abspath(path):
        return True
    try:
        return os.path.samefile(target, path)
    except OSError:
        return False


def _check_targets(path: str, output: str | None, report_path: str | None, force: bool) -> None:
    """Before anything runs: -o/--report never name the notebook, each other, or (without
    --force) an existing file."""
    for target in (output, report_path):
        if not target:
            continue
        if _is_notebook(target, path):
            link = "" if os.path.abspath(target) == os.path.abspath(path) else " (a link to it)"
            raise _Failed(path, f"{target} is the notebook itself{link}; nbrefactor run never writes the notebook")
        if not force and os.path.lexists(target):
            raise _Failed(path, f"{target} exists; pass --force to replace it")
    if output and report_path and (os.path.abspath(output) == os.path.abspath(report_path) or _is_notebook(output, report_path)):
        raise _Failed(path, f"-o and --report name the same file ({output})")


def _write(target: str, text: str, path: str, force: bool = False) -> None:
    """Write -o/--report atomically (temporary file + rename, mode 0o666 less the umask); checked
    again at write time, since the run may have created files meanwhile."""
    from nbrefactor.writer import write_output

    try:
        write_output(target, text, force=force, protect=path)
    except ValueError as err:
        raise _Failed(path, f"{err}; nbrefactor run never writes the notebook") from None
    except FileExistsError as err:  # created while the notebook ran
        raise _Failed(path, f"{err.strerror}; nothing written") from None
    except OSError as err:
        raise _Failed(path, f"cannot write {target}: {err.strerror or err}") from None
