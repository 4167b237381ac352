"""`[tool.nbrefactor]` in pyproject.toml, merged with the command line (ruff's names and rules).

Keys: `select`, `extend-select`, `ignore`, `unsafe-fixes`, `exclude`, `include-scripts` (folder
search also takes plain Python scripts, as `--include-scripts` does), `export` (notebook -> script
for `nbrefactor export --pre-commit`, read by nbrefactor/export.py), and the limits on the work for
one notebook (`max-file-size`, `max-cells`, `max-cell-lines`, `max-line-length`, `max-nesting`,
`time-budget`: see nbrefactor/limits.py), and `cache-dir` (where `check` keeps its results cache,
relative to the project root and inside it: see nbrefactor/cache.py). Codes match by prefix, as in ruff: `NBR1` selects NBR101
and NBR102, `ALL` selects everything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from nbrefactor.errors import NotebookError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from nbrefactor import limits as _limits

KNOWN_KEYS = {"select", "extend-select", "ignore", "unsafe-fixes", "exclude", "include-scripts", "export", "cache-dir", *_limits.KEYS}
_FLAGS = {"unsafe-fixes", "include-scripts"}  # keys whose value is true or false


@dataclass(frozen=True)
class Selection:
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()

    def enabled(self, code: str) -> bool:
        def matches(patterns):
            return max((len(p) for p in patterns if p == "ALL" or code.startswith(p)), default=-1)

        chosen = matches(self.select)
        ignored = matches(self.ignore)
        return chosen >= 0 and chosen > ignored if ignored >= 0 else chosen >= 0


@dataclass
class Settings:
    select: tuple[str, ...] = ("ALL",)
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    unsafe_fixes: bool = False
    exclude: tuple[str, ...] = ()
    include_scripts: bool = False
    limits: _limits.Limits = field(default_factory=_limits.Limits)
    export: dict = field(default_factory=dict)  # notebook -> script (or a table with `script`), as written
    cache_dir: str | None = None  # `check`'s results cache, relative to the project root (nbrefactor/cache.py)
    source: Path | None = None  # the pyproject.toml the settings came from
    warnings: list[str] = field(default_factory=list)

    def selection(self) -> Selection:
        return Selection(tuple(self.select) + tuple(self.extend_select), tuple(self.ignore))


def find_pyproject(start: Path) -> Path | None:
    start = start.resolve()
    for folder in (start, *start.parents) if start.is_dir() else start.parents:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_settings(start: Path) -> Settings:
    """Settings from the nearest pyproject.toml at or above `start` that exists."""
    path = find_pyproject(start)
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise NotebookError(path, f"invalid TOML: {err}") from None
    table = data.get("tool", {}).get("nbrefactor")
    if table is None:
        return Settings(source=path)
    if not isinstance(table, dict):
        raise NotebookError(path, "[tool.nbrefactor] must be a table")
    settings = Settings(source=path, limits=_limits.from_table(table, str(path)))
    for key, value in table.items():
        if key in _limits.KEYS:
            continue
        if key not in KNOWN_KEYS:
            settings.warnings.append(f"{path}: unknown key `{key}` in [tool.nbrefactor] (known: {', '.join(sorted(KNOWN_KEYS))})")
            continue
        if key == "export":
            if not isinstance(value, dict):
                raise NotebookError(path, '[tool.nbrefactor] export must be a table: {"notebook.ipynb" = "script.py"}')
            settings.export = value
            continue
        if key == "cache-dir":
            if not isinstance(value, str) or not value.strip():
                raise NotebookError(path, "[tool.nbrefactor] cache-dir must be a folder name (a string)")
            settings.cache_dir = value
            continue
        if key in _FLAGS:
            if not isinstance(value, bool):
                raise NotebookError(path, f"[tool.nbrefactor] {key} must be true or false")
            setattr(settings, key.replace("-", "_"), value)
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise NotebookError(path, f"[tool.nbrefactor] {key} must be a list of strings")
        setattr(settings, key.replace("-", "_"), tuple(value))
    return settings


def validate_codes(codes: tuple[str, ...], known: list[str], where: str) -> None:
    for code in codes:
        if code != "ALL" and not any(k.startswith(code) for k in known):
            raise NotebookError(where, f"unknown rule selector `{code}` (see `nbrefactor rules`)")
