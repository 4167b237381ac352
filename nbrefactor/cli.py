"""The command line: the only place that prints or exits.

Exit codes follow ruff: 0 clean, 1 findings, 2 error. A user's mistake (a missing file, a file that
is not a notebook) is one line on stderr naming the file, never a traceback. Heavy modules are
imported inside the commands so that `nbrefactor --help` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nbrefactor import __version__
from nbrefactor.errors import NotANotebook, NotebookError

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        click.echo(f"note: {message}", err=True)


def _codes(values: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        out.extend(c.strip().upper() for c in v.split(",") if c.strip())
    return tuple(out)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NotebookError as err:  # a user's mistake that escaped a command
            _error(err.one_line())
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbrefactor")
def main() -> None:
    """Make Lightning notebooks safe to train on several GPUs (fork-safe, `ddp_notebook`).

    \b
      nbrefactor check NOTEBOOK...   find fork-unsafe code (cell, line, rule code)
      nbrefactor rules [CODE]        the rule catalogue
    """


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--output-format",
    type=click.Choice(["text", "concise", "json", "github", "sarif"]),
    default="text",
    show_default=True,
    help="How findings are printed.",
)
@click.option("--select", multiple=True, help="Rule codes or prefixes to check (comma-separated; `ALL`).")
@click.option("--extend-select", multiple=True, help="Codes to add to the configured selection.")
@click.option("--ignore", multiple=True, help="Rule codes or prefixes to skip (comma-separated).")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when there are findings.")
@click.option("-q", "--quiet", is_flag=True, help="Print findings only: no notes, no summary.")
@click.option("--isolated", is_flag=True, help="Ignore [tool.nbrefactor] in pyproject.toml.")
def check(paths, output_format, select, extend_select, ignore, exit_zero, quiet, isolated):
    """Find fork-unsafe code in notebooks (files, or folders searched for notebooks).

    Prints `path:cell N:row:col: CODE message` per finding. Exit 0 clean, 1 findings, 2 error.
    """
    from codemods.rules import ALL_RULES
    from nbrefactor import config
    from nbrefactor.checker import check_notebook
    from nbrefactor.discover import notebook_paths
    from nbrefactor.notebook.model import read_file, read_notebook
    from nbrefactor.report import render

    if not paths:
        paths = (".",)
    settings = config.Settings() if isolated else config.load_settings(Path.cwd())
    for w in settings.warnings:
        _note(w, quiet)
    known = [r.code for r in ALL_RULES]
    if select:
        settings.select = _codes(select)
    settings.extend_select += _codes(extend_select)
    settings.ignore += _codes(ignore)
    for option, codes in (("--select", settings.select), ("--extend-select", settings.extend_select), ("--ignore", settings.ignore)):
        config.validate_codes(codes, known, option)
    selection = settings.selection()

    files, errors = notebook_paths(list(paths), settings.exclude)
    for err in errors:
        _error(err.one_line())
    diagnostics = []
    checked = 0
    for path in files:
        try:
            data = sys.stdin.buffer.read() if str(path) == "-" else read_file(path)
            notebook = read_notebook(path, data)
        except NotANotebook as err:
            _note(f"{err.one_line()}; skipped", quiet)
            continue
        except NotebookError as err:
            errors.append(err)
            _error(err.one_line())
            continue
        if not notebook.is_python:
            _note(f"{notebook.path}: skipped, the kernel language is {notebook.language}", quiet)
            continue
        result = check_notebook(notebook, selection)
        checked += 1
        for w in result.warnings:
            row = f":{w.row}" if w.row else ""
            _note(f"{w.path}:cell {w.cell}{row}: {w.message}", quiet)
        diagnostics.extend(result.diagnostics)

    if not files and not errors:
        _note("no notebooks found under the given paths", quiet)
    click.echo(render(diagnostics, output_format), nl=False)
    if output_format in ("text", "concise") and not quiet:
        if diagnostics:
            fixable = sum(d.applicability != "none" for d in diagnostics)
            click.echo(f"Found {len(diagnostics)} finding{'s' * (len(diagnostics) != 1)} in {checked} notebook{'s' * (checked != 1)} ({fixable} with a fix).")
        elif checked:
            click.echo(f"All checks passed ({checked} notebook{'s' * (checked != 1)}).")
    if errors:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_FINDINGS if diagnostics and not exit_zero else EXIT_CLEAN)


@main.command()
@click.argument("code", required=False)
@click.option(
    "--output-format",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
    help="`markdown` prints the README's rule table.",
)
def rules(code, output_format):
    """The rule catalogue, or one rule's documentation."""
    import json

    from codemods.rules import ALL_RULES, RULES_BY_CODE

    if code:
        rule = RULES_BY_CODE.get(code.upper())
        if rule is None:
            _error(f"unknown rule `{code}` (known: {', '.join(RULES_BY_CODE)})")
            sys.exit(EXIT_ERROR)
        if output_format == "json":
            click.echo(json.dumps(_rule_json(rule), indent=2))
        else:
            click.echo(f"# {rule.name} ({rule.code})\n\nFix: {rule.applicability.value}\n\n{rule.docs()}")
        return
    if output_format == "json":
        click.echo(json.dumps([_rule_json(r) for r in ALL_RULES], indent=2))
    elif output_format == "markdown":
        click.echo(rule_table())
    else:
        for r in ALL_RULES:
            click.echo(f"{r.code}  {r.name:<38} fix: {r.applicability.value:<7} {r.summary}")


def _rule_json(rule) -> dict:
    return {
        "code": rule.code,
        "name": rule.name,
        "summary": rule.summary,
        "fix": rule.applicability.value,
        "fix_title": rule.fix_title,
        "explanation": rule.docs(),
    }


def rule_table() -> str:
    """The README's rule table, generated from the rule classes."""
    from codemods.rules import ALL_RULES

    lines = ["| Code | Name | What it finds | Fix |", "| --- | --- | --- | --- |"]
    for r in ALL_RULES:
        lines.append(f"| {r.code} | `{r.name}` | {r.summary} | {r.applicability.value} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
