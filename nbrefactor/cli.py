"""The command line: the only place that prints or exits.

Exit codes follow ruff: 0 clean, 1 findings, 2 error. A user's mistake (a missing file, a file that
is not a notebook) is one line on stderr naming the file, never a traceback. Heavy modules are
imported inside the commands so that `nbrefactor --help` starts fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from nbrefactor import __version__
from nbrefactor.errors import NotANotebook, NotebookError

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

# nbformat (and so jupytext) imports jsonschema, whose format checkers load `rfc3987_syntax` when it
# is installed (JupyterLab's jupyter_server brings it): that module compiles an IRI grammar at import,
# 3 s of every command that reads a jupytext file, for a format nbformat's schemas never use.
# The command-line process does without it (jsonschema skips that check); a process that already has
# it keeps it.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


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
      nbrefactor fix NOTEBOOK...     rewrite it into the fork-safe layout
      nbrefactor run NOTEBOOK        run it in a real kernel on N forked devices: pass/fail, cell, line, rule
      nbrefactor rules [CODE]        the rule catalogue
      nbrefactor export NB -o F.py   write it as a training script for torchrun, fabric run, SLURM, accelerate launch
    """


_STDIN_HELP = "Name of the notebook read from `-` (stdin): its suffix gives the format (default: JSON is .ipynb, text is a jupytext .py notebook)."
_INCLUDE_SCRIPTS_HELP = (
    "Also take the plain Python scripts (no jupytext header or cell markers) found in folders, and checked "
    "with the rules for scripts. A script named on the command line is always checked."
)
_PRE_COMMIT_HELP = (
    "Run as a pre-commit hook: only the files named (none: nothing to do, exit 0), `.py`/`.md` files "
    "only when they are jupytext notebooks, and `exclude` applies to them."
)


def _paths(paths, settings, pre_commit: bool, include_scripts: bool = False):
    """(files, errors) to work on; the sides of a jupytext pair count once."""
    from nbrefactor.discover import named_notebooks, notebook_paths

    include_scripts = include_scripts or settings.include_scripts
    if pre_commit:
        return named_notebooks(list(paths), settings.exclude, include_scripts)
    return notebook_paths(list(paths or (".",)), settings.exclude, include_scripts)


def _where(name: str, notebook, cell: int) -> str:
    """`name:cell N`, or `name` for a script (one cell: rows are the file's lines)."""
    from nbrefactor.checker import context_of

    return name if context_of(notebook) == "script" else f"{name}:cell {cell}"


def _in_cell(notebook, cell: int) -> str:
    """`cell N: ` before a change, nothing in a script."""
    from nbrefactor.checker import context_of

    return "" if context_of(notebook) == "script" else f"cell {cell}: "


def _load(path, stdin_filename: str | None):
    """(notebook, name to show, jupytext pair or None, bytes read) for a path, `-` being stdin.

    A file that is one side of a jupytext pair is read as `jupytext --sync` reads the pair: the
    notebook comes from its most recently modified side."""
    from nbrefactor.notebook.model import read_file, read_notebook

    if str(path) == "-":
        data = sys.stdin.buffer.read()
        name = stdin_filename or ("stdin.ipynb" if data.lstrip().startswith(b"{") else "stdin.py")
        return read_notebook(name, data), stdin_filename or "-", None, data
    data = read_file(path)
    from nbrefactor.discover import is_plain_script, read_script

    if is_plain_script(Path(path)):
        return read_script(path, data), str(path), None, data
    from nbrefactor.notebook.pairs import may_be_paired, read_pair

    if may_be_paired(path, data):
        pair = read_pair(path, data)
        if pair is not None:
            return pair.notebook, str(path), pair, data
    return read_notebook(path, data), str(path), None, data


def _shown(diagnostics, name: str, notebook) -> list:
    """Diagnostics named as the user named the notebook (a pair's other side, stdin)."""
    import dataclasses

    if name == notebook.path:
        return list(diagnostics)
    return [dataclasses.replace(d, path=name) for d in diagnostics]


def _statistics(diagnostics, output_format: str) -> str:
    """A count per rule code, most frequent first (ruff's `--statistics`)."""
    import json
    from collections import Counter

    counts = Counter(d.code for d in diagnostics)
    first = {}
    labels: dict[str, Counter] = {}
    for d in diagnostics:
        first.setdefault(d.code, d)
        labels.setdefault(d.code, Counter())[d.applicability if not d.fix_needs else "option"] += 1
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if output_format == "json":
        return json.dumps(
            [
                {"code": code, "name": first[code].name, "count": n, "fixable": labels[code]["none"] < n,
                 "fix": {k: labels[code][k] for k in ("safe", "unsafe", "option", "none")}}
                for code, n in rows
            ],
            indent=2,
        ) + "\n"
    if not rows:
        return ""
    width = len(str(rows[0][1]))

    def mark(code: str) -> str:  # ruff's marks: [*] some fixed by `fix`, [-] only with a flag
        return "[*] " if labels[code]["safe"] else "[-] " if labels[code]["none"] < counts[code] else "[ ] "

    return "".join(f"{n:>{width}}\t{code}\t{mark(code)}{first[code].name}\n" for code, n in rows)


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
@click.option("--statistics", is_flag=True, help="Print how many findings each rule has, not the findings.")
@click.option("-q", "--quiet", is_flag=True, help="Print findings only: no notes, no summary.")
@click.option("--isolated", is_flag=True, help="Ignore [tool.nbrefactor] in pyproject.toml.")
@click.option("--stdin-filename", metavar="NAME", help=_STDIN_HELP)
@click.option("--pre-commit", "pre_commit", is_flag=True, help=_PRE_COMMIT_HELP)
@click.option("--include-scripts", is_flag=True, help=_INCLUDE_SCRIPTS_HELP)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the results cache (.nbrefactor_cache/ in the project root).")
def check(paths, output_format, select, extend_select, ignore, exit_zero, statistics, quiet, isolated, stdin_filename, pre_commit, include_scripts, no_cache):
    """Find fork-unsafe code in notebooks (files, or folders searched for notebooks; `-` reads stdin).

    Prints `path:cell N:row:col: CODE message` per finding (`path:row:col: ...` in a script).
    Exit 0 clean, 1 findings, 2 error. A side of a jupytext pair is checked as `jupytext --sync`
    would read the pair. Results are cached per file (content, settings, nbrefactor's version and
    code) in .nbrefactor_cache/, so a re-run checks only what changed; --no-cache turns it off.
    """
    from nbrefactor.report import render

    opened = []  # the results cache, opened once the configuration is read (it may name the folder)

    def known_codes(settings):
        cache = None if no_cache else _open_cache(settings)
        opened.append(cache)
        return _LazyRuleCodes(None if cache is None else lambda: cache.remembered("rule-codes", _rule_codes))

    settings = _settings(isolated, select, extend_select, ignore, quiet, known_codes)
    selection = settings.selection()
    cache = opened[0] if opened else None
    # Fix labels (which findings `fix` fixes, with which flags) are what most of a check costs: the
    # fixer is run in memory. Only what prints them asks for them: the summary line, JSON, SARIF,
    # --statistics; `-q` and GitHub annotations print none.
    labels = statistics or output_format in ("json", "sarif") or (output_format in ("text", "concise") and not quiet)
    if cache is not None:
        import dataclasses

        cache.settle({"select": selection.select, "ignore": selection.ignore, "limits": dataclasses.asdict(settings.limits),
                      "include_scripts": include_scripts or settings.include_scripts, "cwd": os.getcwd(), "labels": labels,
                      # where jupytext configurations are looked for (nbrefactor/notebook/jupytext_settings.py)
                      "env": [os.environ.get(v) for v in ("JUPYTEXT_CEILING_DIRECTORIES", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "USERPROFILE", "ALLUSERSPROFILE", "HOME")]})

    files, errors = _paths(paths, settings, pre_commit, include_scripts)
    for err in errors:
        _error(err.one_line())
    diagnostics = []
    checked = scripts = 0
    for outcome in _cached_outcomes(files, stdin_filename, selection, cache, labels):
        for note in outcome.notes:
            _note(note, quiet)
        if outcome.error is not None:
            errors.append(outcome.error)
            _error(outcome.error.one_line())
        checked += outcome.checked
        scripts += outcome.script
        diagnostics.extend(outcome.diagnostics)

    if not files and not errors and not pre_commit:
        _note("no notebooks found under the given paths", quiet)
    if statistics:
        click.echo(_statistics(diagnostics, "json" if output_format == "json" else "text"), nl=False)
    else:
        from nbrefactor.report import sarif_rules

        rules = cache.remembered("sarif-rules", sarif_rules) if output_format == "sarif" and cache is not None else None
        click.echo(render(diagnostics, output_format, rules), nl=False)
    if output_format in ("text", "concise") and not quiet:
        if diagnostics:
            click.echo(f"Found {len(diagnostics)} finding{'s' * (len(diagnostics) != 1)} in {_files(checked, scripts)}. {_fixable_summary(diagnostics)}")
        elif checked:
            click.echo(f"All checks passed ({_files(checked, scripts)}).")
    if errors:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_FINDINGS if diagnostics and not exit_zero else EXIT_CLEAN)


@main.command()
def clean():
    """Remove the results cache of `check` for the project in the current folder (like `ruff clean`).

    The folder is .nbrefactor_cache/ in the project root (the folder of pyproject.toml), or
    `cache-dir` in [tool.nbrefactor], or $NBREFACTOR_CACHE_DIR.
    """
    from nbrefactor import cache as _cache
    from nbrefactor.config import load_settings

    settings = load_settings(Path.cwd())
    removed = _cache.clean(_project_root(settings), settings.cache_dir, settings.source)
    click.echo(f"Removed the cache at {removed}" if removed else "No cache to remove.", err=True)


def _files(count: int, scripts: int) -> str:
    """`3 notebooks`, `1 script`, `4 files` (notebooks and scripts)."""
    noun = "notebook" if not scripts else "script" if scripts == count else "file"
    return f"{count} {noun}{'s' * (count != 1)}"


def _fixable_summary(diagnostics) -> str:
    """"N1 fixable with `nbrefactor fix`, N2 more with `--unsafe-fixes`." from the findings' labels."""
    safe = sum(d.applicability == "safe" and not d.fix_needs for d in diagnostics)
    unsafe = sum(d.applicability == "unsafe" and not d.fix_needs for d in diagnostics)
    devices = sum(d.applicability != "none" and bool(d.fix_needs) for d in diagnostics)
    text = f"{safe} fixable with `nbrefactor fix`, {unsafe} more with `--unsafe-fixes`"
    if devices:
        text += f", {devices} with `--devices N`"
    return text + "."


@dataclass
class _FileOutcome:
    """What checking one file gave: printed by the parent, whichever process did the work."""

    diagnostics: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: NotebookError | None = None
    checked: bool = False
    script: bool = False  # a plain script, checked with the rules for scripts
    # For the results cache: the sha256 of the bytes checked, and the other files the result came
    # from (a jupytext pair's sides and configuration), as nbrefactor.cache.dep_of records them.
    sha256: str | None = None
    deps: list | None = None

    def cached(self) -> dict:
        import dataclasses

        return {"diagnostics": [dataclasses.asdict(d) for d in self.diagnostics], "notes": list(self.notes),
                "checked": self.checked, "script": self.script}

    @classmethod
    def from_cache(cls, value: dict | None) -> _FileOutcome | None:
        """The outcome a cache entry holds (None when it is not one: checked, like a miss)."""
        from nbrefactor.diagnostic import Diagnostic

        if value is None:
            return None
        try:
            diagnostics = [Diagnostic(**d) for d in value["diagnostics"]]
            notes = value["notes"]
            if not all(isinstance(n, str) for n in notes) or not all(isinstance(d.message, str) and isinstance(d.path, str) for d in diagnostics):
                return None
            return cls(diagnostics=diagnostics, notes=list(notes), checked=bool(value["checked"]), script=bool(value["script"]))
        except (KeyError, TypeError):
            return None


def _rule_codes() -> list[str]:
    from codemods.rules import ALL_RULES

    return [r.code for r in ALL_RULES]


class _LazyRuleCodes:
    """The rule codes, looked up only when a selector other than `ALL` is checked against them:
    importing the rules imports libcst (about half a second), which a clean text notebook never needs."""

    def __init__(self, codes=None):
        self._codes = codes or _rule_codes  # `check` reads them from its cache when it can
        self._found: list[str] | None = None

    def __iter__(self):
        if self._found is None:
            self._found = list(self._codes())
        return iter(self._found)


def _open_cache(settings):
    """The results cache of this project, or None when it cannot be used (the run goes on uncached)."""
    from nbrefactor import cache as _cache

    root = _project_root(settings)
    folder = _cache.cache_folder(root, settings.cache_dir, settings.source)  # a cache-dir outside the project: an error
    return _cache.Cache.open(root, folder)


def _project_root(settings) -> Path:
    """The folder of the project's pyproject.toml (the one the settings came from, else the nearest
    above the current folder), or the current folder: where the results cache lives."""
    from nbrefactor.config import find_pyproject

    source = settings.source or find_pyproject(Path.cwd())
    return source.parent if source is not None else Path.cwd()


def _cached_outcomes(files, stdin_filename, selection, cache, labels: bool = True):
    """`_check_file` for every file, in order: what the cache holds is taken from it (in this
    process, before any worker is forked), the rest is checked and stored. `labels=False`: the
    findings are not labelled with what `fix` does (nothing printed shows it)."""
    import functools

    work = functools.partial(_check_file, labels=labels)
    if cache is None:
        yield from _map_files(work, files, stdin_filename, selection)
        return
    probes = [cache.probe(f) for f in files]
    found = [_FileOutcome.from_cache(cache.lookup(p)) for p in probes]
    computed = _map_files(work, [f for f, o in zip(files, found) if o is None], stdin_filename, selection)
    for probe, outcome in zip(probes, found):
        if outcome is None:
            outcome = next(computed)
            if probe is not None and outcome.error is None and outcome.sha256 == probe["sha256"]:
                cache.store(probe, outcome.cached(), outcome.deps)
        yield outcome
    cache.prune()


def _check_file(path, stdin_filename, selection, labels: bool = True) -> _FileOutcome:
    """One file's outcome, whatever happens: the work runs within the limits (nbrefactor.limits),
    and anything it raises is an error for this file while the other files are still checked."""
    from nbrefactor import limits

    if os.environ.get("NBREFACTOR_CACHE_DEBUG"):
        click.echo(f"cache: analysing {path}", err=True)
    try:
        return limits.bounded(str(path), _check_one, path, stdin_filename, selection, labels)
    except NotebookError as err:
        return _FileOutcome(error=err)
    except Exception as err:  # noqa: BLE001 - a bug must not look like findings (exit 1) or crash the run
        return _FileOutcome(error=internal_error(path, err))


def internal_error(path, err: BaseException) -> NotebookError:
    """A bug in nbrefactor, as one line for this file (NBREFACTOR_TRACEBACK=1 shows the traceback)."""
    if isinstance(err, MemoryError):
        return NotebookError(path, "skipped: out of memory while working on it (too large or too complex for this machine)")
    if os.environ.get("NBREFACTOR_TRACEBACK"):
        import traceback

        traceback.print_exception(err)
    detail = " ".join(str(err).split())[:200]
    return NotebookError(path, f"internal error, please report it: {type(err).__name__}{': ' + detail if detail else ''} (NBREFACTOR_TRACEBACK=1 shows where)")


def _check_one(path, stdin_filename, selection, labels: bool = True) -> _FileOutcome:
    from nbrefactor.checker import check_notebook, context_of
    from nbrefactor.notebook.pairs import PairOutsideFolder

    out = _FileOutcome()
    try:
        try:
            notebook, name, pair, data = _load(path, stdin_filename)
        except PairOutsideFolder as err:  # the pairing is refused: the notebook is checked by itself
            out.notes.append(err.checked_alone())
            from nbrefactor.notebook.model import read_file, read_notebook

            data = read_file(path)
            notebook, name, pair = read_notebook(path, data), str(path), None
    except NotANotebook as err:
        out.notes.append(f"{err.one_line()}; skipped")
        from nbrefactor.cache import file_sha256

        out.sha256 = file_sha256(path)
        return out
    except NotebookError as err:
        out.error = err
        return out
    if str(path) != "-":
        out.sha256, out.deps = _cache_facts(path, data, pair)
    if not notebook.is_python:
        out.notes.append(f"{name}: skipped, the kernel language is {notebook.language}")
        return out
    notebook.path = name
    result = check_notebook(notebook, selection, for_reading=True)
    out.checked = True
    out.script = context_of(notebook) == "script"
    for w in result.warnings:
        row = f":{w.row}" if w.row else ""
        out.notes.append(f"{_where(name, notebook, w.cell)}{row}: {w.message}")
    out.diagnostics = result.diagnostics
    if result.diagnostics and labels:  # labelling asks the fixer (libcst): not for a clean notebook
        from nbrefactor.labels import label

        out.diagnostics = label(result, selection)  # what `fix` will really do
    return out


def _cache_facts(path, data: bytes, pair) -> tuple[str, list | None]:
    """(sha256 of the bytes checked, the other files the result came from): a pair's sides (bytes and
    modification times: the newer side is read) and its jupytext configuration file."""
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    if pair is None:
        return digest, None
    from nbrefactor.cache import dep_of
    from nbrefactor.notebook.text import jupytext_config_file

    deps = [dep_of(f.path, f.data) for f in pair.files]
    config = jupytext_config_file(path)
    if config:
        deps.append(dep_of(config, with_mtime=False))
    return digest, deps


def _map_files(work, files, stdin_filename, selection):
    """`work(file, ...)` for every file, in order; on several cores and several files, in worker
    processes (parsing is most of the time, and it is per file)."""
    jobs = min(len(files), os.cpu_count() or 1, 8)
    if jobs < 2 or len(files) < 4 or any(str(f) == "-" for f in files):
        for f in files:
            yield work(f, stdin_filename, selection)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            for outcome in pool.map(work, files, [stdin_filename] * len(files), [selection] * len(files), chunksize=1):
                done += 1
                yield outcome
    except BrokenProcessPool:  # a worker died (out of memory, a signal): finish in this process
        for f in files[done:]:
            yield work(f, stdin_filename, selection)


def _settings(isolated, select, extend_select, ignore, quiet, known_codes=None):
    """The configuration merged with the options; `known_codes(settings)` gives the rule codes to
    validate them against (default: from the rules themselves)."""
    from nbrefactor import config

    from nbrefactor import limits

    settings = config.Settings() if isolated else config.load_settings(Path.cwd())
    limits.configure(settings.limits)
    for w in settings.warnings:
        _note(w, quiet)
    known = known_codes(settings) if known_codes is not None else _LazyRuleCodes()
    if select:
        settings.select = _codes(select)
    settings.extend_select += _codes(extend_select)
    settings.ignore += _codes(ignore)
    for option, codes in (("--select", settings.select), ("--extend-select", settings.extend_select), ("--ignore", settings.ignore)):
        config.validate_codes(codes, known, option)
    return settings


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--diff", "show_diff", is_flag=True, help="Print a unified diff per changed cell and write nothing.")
@click.option("--check", "check_only", is_flag=True, help="Write nothing; exit 1 if something would change (for CI).")
@click.option("--unsafe-fixes", is_flag=True, default=None, help="Also apply fixes that may change what the notebook computes.")
@click.option("--devices", type=click.IntRange(min=1), help="Make `devices` explicit: N devices per Trainer/Fabric (NBR402).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the fixed notebook here (one input only).")
@click.option("--select", multiple=True, help="Rule codes or prefixes to fix (comma-separated).")
@click.option("--extend-select", multiple=True, help="Codes to add to the configured selection.")
@click.option("--ignore", multiple=True, help="Rule codes or prefixes not to fix.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings remain (or, with --diff/--check, something would change).")
@click.option("-q", "--quiet", is_flag=True, help="Print only what remains to fix.")
@click.option("--isolated", is_flag=True, help="Ignore [tool.nbrefactor] in pyproject.toml.")
@click.option("--stdin-filename", metavar="NAME", help=_STDIN_HELP)
@click.option("--pre-commit", "pre_commit", is_flag=True, help=_PRE_COMMIT_HELP)
@click.option("--include-scripts", is_flag=True, help=_INCLUDE_SCRIPTS_HELP)
def fix(paths, show_diff, check_only, unsafe_fixes, devices, output, select, extend_select, ignore, exit_zero, quiet, isolated, stdin_filename, pre_commit, include_scripts):
    """Rewrite notebooks into the fork-safe layout.

    Fabric: training into `def train(fabric)` + `fabric.launch(train)`, data and CUDA work inside
    it. Safe fixes apply by default, unsafe ones with --unsafe-fixes. Only changed cells are
    written (their outputs cleared); everything else in the file stays byte for byte. Both sides
    of a jupytext pair are written, as `jupytext --sync` would. `fix -` reads a notebook on stdin
    and writes it to stdout (messages go to stderr; exit 0 unless --check), so it works as
    `jupytext --sync --pipe "nbrefactor fix -" nb.ipynb`.
    Exit 0 when nothing remains to fix, 1 when findings remain (or, with --diff/--check, when
    something would change), 2 on error.
    """
    from nbrefactor.celldiff import cell_diff
    from nbrefactor.fixer import fix_notebook
    from nbrefactor.labels import hint
    from nbrefactor.report import text_line
    from nbrefactor.writer import fingerprint, write_atomically, write_together

    settings = _settings(isolated, select, extend_select, ignore, quiet)
    if unsafe_fixes is None:
        unsafe_fixes = settings.unsafe_fixes
    selection = settings.selection()
    files, errors = _paths(paths, settings, pre_commit, include_scripts)
    for err in errors:
        _error(err.one_line())
    if output and len(files) != 1:
        _error("-o/--output takes exactly one notebook")
        sys.exit(EXIT_ERROR)
    piped = any(str(p) == "-" for p in files)
    to_stderr = piped or show_diff  # stdout carries the notebook (or the diff)
    would_change = scripts_changed = 0
    remaining_total = 0
    remaining_labels: list = []
    fixed_total = 0
    from nbrefactor import limits

    def fix_one(path):  # the bounded part: reading and fixing (writing happens outside it)
        notebook, name, pair, data = _load(path, stdin_filename)
        if not notebook.is_python:
            return notebook, name, pair, data, None
        return notebook, name, pair, data, fix_notebook(notebook, unsafe_fixes=unsafe_fixes, devices=devices, selection=selection)

    for path in files:
        stdin = str(path) == "-"
        try:
            notebook, name, pair, data, result = limits.bounded(str(path), fix_one, path)
            if result is None:
                _note(f"{name}: skipped, the kernel language is {notebook.language}", quiet)
                if stdin and not (show_diff or check_only):
                    sys.stdout.buffer.write(data)
                continue
            for line in result.refused:
                _note(f"{name}: {line}", quiet)
            also = []
            if result.changed:
                if show_diff:
                    click.echo(cell_diff(result, name), nl=False)
                elif check_only:
                    pass
                elif stdin:
                    pass  # written below
                elif pair is not None:
                    from nbrefactor.notebook.pairs import pair_contents

                    contents = pair_contents(pair, result)
                    if output:
                        mine = next((t for p, t, _ in contents if p == str(path)), data.decode("utf-8"))
                        write_atomically(output, mine, like=data)
                    else:
                        written = write_together(contents)
                        also = [p for p in written if p != str(path)]
                else:
                    write_atomically(output or path, result.fixed, None if output else fingerprint(data), like=data)
                # Counted once written (or shown): a refused write must not read as a change.
                would_change += 1
                scripts_changed += _in_cell(notebook, 0) == ""
                fixed_total += len(list(_dedupe(result.changes)))
                if not quiet and not show_diff:
                    verb = "would fix" if check_only else "fixed"
                    target = f" -> {output}" if output and not check_only else ""
                    paired = f" (and {', '.join(also)}, its jupytext pair)" if also else ""
                    click.echo(f"{name}{target}: {verb}{paired}", err=to_stderr)
                    for ch in _dedupe(result.changes):
                        click.echo(f"  {_in_cell(notebook, ch.cell)}{ch.code} {ch.message}", err=to_stderr)
            if stdin and not (show_diff or check_only):
                from nbrefactor.writer import keep_line_endings

                sys.stdout.buffer.write(keep_line_endings(result.fixed, data).encode("utf-8"))
                sys.stdout.flush()
            remaining = _shown(result.remaining, name, result.after or notebook)
            remaining_total += len(remaining)
            if not quiet and remaining:
                remaining = _with_hints(result, remaining, selection, unsafe_fixes, devices)
                remaining_labels.extend(remaining)
            for d in remaining:
                click.echo(text_line(d), err=to_stderr)
                if not quiet:
                    click.echo(f"  help: {hint(d)}", err=to_stderr)
        except NotANotebook as err:
            _note(f"{err.one_line()}; skipped", quiet)
        except NotebookError as err:
            errors.append(err)
            _error(err.one_line())
        except Exception as err:  # noqa: BLE001 - a bug: an error for this file, the others still fixed
            errors.append(internal_error(path, err))
            _error(errors[-1].one_line())
    if not quiet and (files or not pre_commit):
        summary = []
        if fixed_total:
            summary.append(f"{fixed_total} change{'s' * (fixed_total != 1)} in {_files(would_change, scripts_changed)}" + (" (not written)" if show_diff or check_only else ""))
        if remaining_total:
            summary.append(f"{remaining_total} finding{'s' * (remaining_total != 1)} remain{'s' * (remaining_total == 1)}: {_remaining_summary(remaining_labels)}")
        if summary:
            click.echo("; ".join(summary) + ".", err=to_stderr)
        elif not errors:  # "Nothing to fix." beside an error would contradict it
            click.echo("Nothing to fix.", err=to_stderr)
    if errors:
        sys.exit(EXIT_ERROR)
    if show_diff or check_only:
        sys.exit(EXIT_FINDINGS if would_change and not exit_zero else EXIT_CLEAN)
    if piped:
        sys.exit(EXIT_CLEAN)  # a filter (jupytext --pipe) must not fail because findings remain
    sys.exit(EXIT_FINDINGS if remaining_total and not exit_zero else EXIT_CLEAN)


def _with_hints(result, remaining, selection, unsafe_fixes, devices) -> list:
    """`remaining` labelled with what would still fix each finding beyond the flags `fix` was
    given (`--unsafe-fixes`, `--devices N`), found by asking the fixer; else a manual step."""
    import dataclasses

    from nbrefactor.checker import reusing_checks
    from nbrefactor.labels import probe

    after = result.after
    if after is None:
        return remaining
    with reusing_checks(selection=selection):
        labels = probe(after, result.remaining, selection, fixed_with=(unsafe_fixes, devices))
    return [dataclasses.replace(d, applicability=a, fix_needs=n) for d, (a, n) in zip(remaining, labels)]


def _remaining_summary(labelled) -> str:
    """What the findings left after `fix` need: a flag, or a manual step."""
    unsafe = sum(d.applicability == "unsafe" and not d.fix_needs for d in labelled)
    devices = sum(d.applicability != "none" and bool(d.fix_needs) for d in labelled)
    manual = sum(d.applicability == "none" for d in labelled)
    parts = []
    if unsafe:
        parts.append(f"{unsafe} fixable with `--unsafe-fixes`")
    if devices:
        parts.append(f"{devices} fixable with `--devices N`")
    if manual:
        parts.append(f"{manual} need{'s' * (manual == 1)} a manual fix (see `nbrefactor rules CODE`)")
    return ", ".join(parts) if parts else "see `nbrefactor rules CODE`"


def _dedupe(changes):
    seen = set()
    for ch in changes:
        key = (ch.code, ch.cell, ch.message)
        if key not in seen:
            seen.add(key)
            yield ch


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
            click.echo(rule_docs(rule))
        return
    if output_format == "json":
        click.echo(json.dumps([_rule_json(r) for r in ALL_RULES], indent=2))
    elif output_format == "markdown":
        click.echo(rule_table())
    else:
        for r in ALL_RULES:
            click.echo(f"{r.code}  {r.name:<38} fix: {r.fix_availability.value:<9} {r.applies_to():<21} {r.summary}")


def rule_docs(rule) -> str:
    """One rule's documentation as `nbrefactor rules CODE` prints it (the language server's hover too)."""
    return f"# {rule.name} ({rule.code})\n\n{rule.fix_availability.sentence}\n\n{rule.docs()}"


def _rule_json(rule) -> dict:
    return {
        "code": rule.code,
        "name": rule.name,
        "summary": rule.summary,
        "fix": rule.fix_availability.sentence,  # ruff's field and words
        "fix_availability": rule.fix_availability.value,
        "fix_title": rule.fix_title,
        "applies_to": list(rule.contexts),
        "explanation": rule.docs(),
    }


def rule_table() -> str:
    """The README's rule table, generated from the rule classes."""
    from codemods.rules import ALL_RULES

    lines = ["| Code | Name | What it finds | Applies to | Fix |", "| --- | --- | --- | --- | --- |"]
    for r in ALL_RULES:
        lines.append(f"| {r.code} | `{r.name}` | {r.summary} | {r.applies_to()} | {r.fix_availability.value} |")
    return "\n".join(lines)


@main.command("server")
def server_command():
    """A language server for editors (LSP 3.17 notebook sync) on stdin/stdout.

    Per-cell diagnostics, quick fixes and fix-all, hover on rule codes; see the README, "Editors".
    """
    try:
        import pygls  # noqa: F401
    except ImportError:
        _error('`nbrefactor server` needs pygls: pip install "nbrefactor[lsp]"')
        sys.exit(EXIT_ERROR)
    from nbrefactor.lsp.server import serve

    serve()


_EXPORT_PRE_COMMIT_HELP = (
    "Run as a pre-commit hook: of the files named, the notebooks with a script in [tool.nbrefactor] export "
    "(or --map) are exported, and so are those whose script is named; the rest is skipped. Stale scripts are "
    "rewritten (exit 1: the commit fails, add them and commit again), or only reported with --check."
)


@main.command()
@click.argument("notebooks", metavar="NOTEBOOK", nargs=-1, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="The script to write (default: train.py).")
@click.option("--engine", type=click.Choice(["torchrun", "fabric", "accelerate", "slurm"]), help="Print the launch commands for this engine (slurm also writes SCRIPT.sbatch beside the script).")
@click.option("--nodes", type=click.IntRange(min=1), help="Machines for the multi-node commands and the sbatch file (default: the notebook's num_nodes; 2 in the torchrun/fabric example).")
@click.option("--check", "check_only", is_flag=True, help="Write nothing; exit 1 if the files on disk differ from what export would write (for CI).")
@click.option("--pre-commit", "pre_commit", is_flag=True, help=_EXPORT_PRE_COMMIT_HELP)
@click.option("--map", "maps", multiple=True, metavar="NOTEBOOK=SCRIPT", help="With --pre-commit: export NOTEBOOK to SCRIPT (paths from the repository root), besides [tool.nbrefactor] export.")
def export(notebooks, output, engine, nodes, check_only, pre_commit, maps):
    """Write NOTEBOOK, as `fix` leaves it, as a training script for torchrun, `fabric run`, SLURM or
    `accelerate launch`.

    The Trainer/Fabric reads `--accelerator`, `--devices`, `--num-nodes` (Fabric also `--strategy`,
    `--precision` where the notebook sets them), defaulting to the notebook's values; training runs
    in `main(args)` under `if __name__ == "__main__":`. Accelerate: the function notebook_launcher
    ran is called from `main(args)` (`accelerate launch` starts the processes; the script's `--cpu`
    keeps them on the CPU). Display-only code is left out with a comment. Exit 0 written (or, with
    --check, up to date), 1 stale (--check; with --pre-commit, also when a stale script was
    rewritten), 2 error.
    """
    if pre_commit:
        if output:
            raise click.UsageError("-o names one script; with --pre-commit, scripts come from [tool.nbrefactor] export or --map NOTEBOOK=SCRIPT")
        sys.exit(_export_pre_commit(notebooks, maps, engine, nodes, check_only))
    if len(notebooks) != 1 or maps:
        raise click.UsageError("export takes one NOTEBOOK and -o SCRIPT (several notebooks and --map only with --pre-commit)")
    output = output or "train.py"
    from nbrefactor import export as ex

    files, name, plan = _exported(notebooks[0], output, engine, nodes)
    if check_only:
        stale = ex.stale(files)
        for path in stale:
            click.echo(f"{path}: out of date with {name} (run `nbrefactor export {name} -o {output}`)")
        sys.exit(EXIT_FINDINGS if stale else EXIT_CLEAN)
    _write_export(files, name)
    if engine:
        click.echo(ex.commands(plan, output, engine, nodes), nl=False)


def _exported(notebook, output: str, engine, nodes):
    """(path -> text export writes, the notebook's name, the plan)."""
    from nbrefactor import export as ex

    nb, name, _pair, _data = _load(notebook, None)
    try:
        result = ex.export_notebook(nb, name)
    except NotebookError:
        raise
    except Exception as err:  # noqa: BLE001 - a bug: one error line, not a traceback
        raise internal_error(name, err) from None
    refused = ex.engine_error(result.plan, engine)
    if refused:
        raise NotebookError(name, f"cannot export: {refused}")
    return ex.outputs(result, output, engine, nodes), name, result.plan


def _write_export(files: dict[str, str], name: str) -> None:
    from nbrefactor.writer import write_atomically

    for path, text in files.items():
        write_atomically(path, text, like=text.encode("utf-8"))  # the script's own \n endings
        click.echo(f"{name} -> {path}", err=True)


def _export_pre_commit(files, maps, engine, nodes, check_only: bool) -> int:
    """The hook: each entry a named file belongs to, exported; stale scripts rewritten (or reported)."""
    from nbrefactor import export as ex
    from nbrefactor.config import load_settings
    from nbrefactor.writer import write_atomically

    root = Path.cwd()  # pre-commit runs hooks from the repository's root; nothing is written outside it
    settings = load_settings(root)
    found = ex.touched(ex.targets(settings.export, settings.source, maps, engine, nodes, root), list(files), root)
    code = EXIT_CLEAN
    for target in found:
        try:
            written, name, _plan = _exported(target.notebook, target.script, target.engine, target.nodes)
        except NotebookError as err:
            _error(err.one_line())
            code = EXIT_ERROR
            continue
        for path in ex.stale(written):
            code = max(code, EXIT_FINDINGS)
            if check_only:
                click.echo(f"{path}: out of date with {name} (run `nbrefactor export {name} -o {target.script}`)")
            else:
                Path(path).parent.mkdir(parents=True, exist_ok=True)  # inside the root: targets() checked
                write_atomically(path, written[path], like=written[path].encode("utf-8"))
                click.echo(f"{path}: rewritten, it was out of date with {name}")
    return code


from nbrefactor.launcher.command import run as _run  # noqa: E402 - imports click only; torch/nbclient load inside

main.add_command(_run)


if __name__ == "__main__":  # pragma: no cover
    main()
