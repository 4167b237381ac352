"""jupytext configuration, read without running anything from the checked tree.

jupytext looks for its configuration in the notebook's folder and every folder above it, then in
the user's and the system's configuration folders, and one of the names it accepts,
`.jupytext.py`, is a Python file it executes (traitlets' `PyFileConfigLoader`). `nbrefactor check`
runs on strangers' pull requests, so nbrefactor finds and parses the configuration itself and
accepts only data formats:

- `jupytext`, `jupytext.toml` (and their dotted names) and `[tool.jupytext]` in `pyproject.toml`,
  parsed with `tomllib`;
- `jupytext.yml`/`jupytext.yaml` (and dotted), parsed with `yaml.safe_load` once `safe_yaml` has
  refused anchors, aliases and oversized input (PyYAML is a dependency of jupytext; should it be
  missing, YAML files are passed over as if absent);
- `jupytext.json` (and dotted), parsed with `json`.

`.jupytext.py` is never read, let alone run: it is passed over as if absent (the search goes on to
`pyproject.toml` and the folders above). The search upward stops at the repository root, the
first folder that holds `.git` or `pyproject.toml` (as ruff stops its settings search), and at
jupytext's `JUPYTEXT_CEILING_DIRECTORIES`; configuration above the repository root is not read.
When no folder up to the root has one, the user's and system's jupytext folders are searched as
jupytext searches them (`$XDG_CONFIG_HOME[/jupytext]`, `~/.config[/jupytext]`, `~`,
`$XDG_CONFIG_DIRS[/jupytext]`, ...), with the same data formats only.

The parsed dictionary becomes a `jupytext.config.JupytextConfiguration` exactly as jupytext's own
loader makes it after parsing (validated, `formats` normalised, `notebook_extensions` split), so
pairing from a TOML, YAML or JSON configuration works as with jupytext. A file that does not parse
or validate gives no configuration, as before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# jupytext's search order within one folder (jupytext.config.JUPYTEXT_CONFIG_FILES), without
# `.jupytext.py`; `pyproject.toml` comes after these, as in jupytext.
_NAMES = ("jupytext", "jupytext.toml", "jupytext.yml", "jupytext.yaml", "jupytext.json")
DATA_CONFIG_NAMES = _NAMES + tuple("." + n for n in _NAMES)
PYPROJECT = "pyproject.toml"
EXECUTABLE_CONFIG_NAMES = (".jupytext.py",)  # never read


@dataclass(frozen=True)
class FoundConfig:
    path: str  # the configuration file (absolute)
    data: object  # what it says (for pyproject.toml: its [tool.jupytext] table); a dict when usable

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)


_SKIP = object()  # a file that is not a jupytext configuration after all


def _parse(path: Path) -> object:
    """The file's jupytext settings (a dict, or None for an empty YAML file as jupytext reads it);
    `_SKIP` for a pyproject.toml without [tool.jupytext] or YAML without PyYAML. Raises
    ValueError/OSError when it does not parse."""
    name = path.name
    text = path.read_text(encoding="utf-8")
    if name == PYPROJECT or name.endswith((".toml", "jupytext")):
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        doc = tomllib.loads(text)
        if name == PYPROJECT:
            tool = doc.get("tool")
            doc = tool.get("jupytext") if isinstance(tool, dict) else None
            if doc is None:
                return _SKIP
        return doc
    if name.endswith((".yml", ".yaml")):
        try:
            import yaml
        except ImportError:
            return _SKIP
        from nbrefactor.errors import NotebookError
        from nbrefactor.notebook.safe_yaml import safe_load

        try:
            return safe_load(text, str(path), "the jupytext configuration")
        except (yaml.YAMLError, NotebookError) as err:
            raise ValueError(str(err)) from None
    if name.endswith(".json"):
        return json.loads(text)
    raise ValueError(f"{name} is not a data configuration file")  # never reached: names are vetted


class _Unreadable(Exception):
    pass


def _in_folder(folder: Path) -> FoundConfig | None:
    """The first data configuration in `folder`, in jupytext's order. Raises `_Unreadable` when the
    file that would be used does not parse (jupytext would fail on it too)."""
    for name in (*DATA_CONFIG_NAMES, PYPROJECT):
        candidate = folder / name
        try:
            if not candidate.is_file():
                continue
        except OSError:
            continue
        try:
            data = _parse(candidate)
        except (ValueError, OSError, UnicodeDecodeError) as err:
            raise _Unreadable(str(err)) from None
        if data is _SKIP:
            continue
        return FoundConfig(str(candidate.absolute()), data)
    return None


def is_repository_root(folder: Path) -> bool:
    """The folder holds `.git` (a folder, or a file for worktrees and submodules) or `pyproject.toml`."""
    try:
        return (folder / ".git").exists() or (folder / PYPROJECT).is_file()
    except OSError:
        return False


def _ceilings() -> list[Path]:
    return [Path(p).absolute() for p in os.environ.get("JUPYTEXT_CEILING_DIRECTORIES", "").split(":") if p]


def global_config_directories() -> list[str]:
    """Where jupytext looks for a user's or system's configuration (as
    jupytext.config.global_jupytext_configuration_directories)."""
    env = os.environ
    dirs: list[str] = []
    if "XDG_CONFIG_HOME" in env:
        dirs += env["XDG_CONFIG_HOME"].split(":")
    elif "USERPROFILE" in env:
        dirs.append(env["USERPROFILE"])
    elif "HOME" in env:
        dirs += [os.path.join(env["HOME"], ".config"), env["HOME"]]
    if "XDG_CONFIG_DIRS" in env:
        dirs += env["XDG_CONFIG_DIRS"].split(":")
    elif "ALLUSERSPROFILE" in env:
        dirs.append(env["ALLUSERSPROFILE"])
    else:
        dirs += ["/usr/local/share/", "/usr/share/"]
    out = []
    for d in dirs:
        out += [os.path.join(d, "jupytext"), d]
    return out


def find_global_config() -> FoundConfig | None:
    for d in global_config_directories():
        if not d:
            continue
        try:
            found = _in_folder(Path(d).absolute())
        except _Unreadable:
            return None
        if found:
            return found
    return None


@lru_cache(maxsize=256)
def find_config(directory: str) -> FoundConfig | None:
    """The jupytext configuration that applies to notebooks in `directory` (see the module's
    docstring for where it is looked for), or None."""
    here = Path(directory).absolute()
    ceilings = _ceilings()
    for folder in [here, *here.parents]:
        try:
            found = _in_folder(folder)
        except _Unreadable:
            return None
        if found:
            return found
        if folder in ceilings:
            return None  # as jupytext: no global configuration under a ceiling either
        if is_repository_root(folder):
            break
    return find_global_config()


def configuration(found: FoundConfig | None):
    """A `JupytextConfiguration` from the parsed settings, made as jupytext's own loader makes it
    after parsing (`load_jupytext_configuration_file`); None when there are none or they are invalid."""
    if found is None or not isinstance(found.data, dict):
        return None
    import jupytext.config as jc
    from traitlets import TraitError

    try:
        config = jc.validate_jupytext_configuration_file(found.path, found.data)
        if config is None:
            return None
        normalize = getattr(jc, "normalize_formats", None)
        formats = config.formats or config.default_jupytext_formats
        if normalize is not None:
            formats = normalize(formats)
        config.formats = formats
        if isinstance(config.notebook_extensions, str):
            config.notebook_extensions = config.notebook_extensions.split(",")
        return config
    except (ValueError, TypeError, TraitError):  # JupytextConfigurationError is a ValueError
        return None


@lru_cache(maxsize=64)
def config_for_dir(directory: str):
    """(JupytextConfiguration or None, the file it came from or None) for notebooks in `directory`."""
    found = find_config(directory)
    config = configuration(found)
    return config, (found.path if config is not None else None)
