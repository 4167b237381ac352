"""What the HTTP endpoints compute, without HTTP: request body in, reply dict out.

Kept apart from tornado so the logic is plain functions (run in a worker process by
`nbrefactor.server.worker`). Every problem with the request becomes a `BadRequest` with a one-line
message; the worker turns it (and any `NotebookError`) into a 400 reply.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass

API_VERSION = 1


class BadRequest(ValueError):
    """The request cannot be served as sent; the message is one line for the user."""


@dataclass(frozen=True)
class Request:
    name: str  # the notebook's name, for messages only (never opened)
    notebook: dict
    select: tuple[str, ...]
    ignore: tuple[str, ...]
    unsafe_fixes: bool
    devices: int | None


def fixer_available() -> bool:
    try:
        from nbrefactor.fixer import fix_notebook  # noqa: F401
    except ImportError:
        return False
    return True


def version_info() -> dict:
    from nbrefactor import __version__

    return {"name": "nbrefactor", "version": __version__, "api": API_VERSION, "fix": fixer_available()}


# --- parsing the request ---------------------------------------------------------------------


def parse_request(body: bytes) -> Request:
    if not body or not body.strip():
        raise BadRequest('request body is empty: send JSON {"notebook": <the notebook as JSON>}')
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        from nbrefactor.notebook.model import json_error_text

        raise BadRequest(f"request body is not JSON: {json_error_text(err)}") from None
    except RecursionError:
        raise BadRequest("request body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest(f'request body must be a JSON object {{"notebook": ...}}, not {_json_type(data)}')
    unknown = set(data) - {"notebook", "path", "options"}
    if unknown:
        raise BadRequest(f"unknown field(s) in request: {', '.join(sorted(unknown))}")
    if "notebook" not in data:
        raise BadRequest('request has no "notebook" field')
    notebook = data["notebook"]
    if not isinstance(notebook, dict):
        raise BadRequest(f'"notebook" must be a JSON object (nbformat 4), not {_json_type(notebook)}')
    if not isinstance(notebook.get("cells"), list):
        raise BadRequest('"notebook" is not a notebook: it has no "cells" list')
    path = data.get("path", "notebook.ipynb")
    if not isinstance(path, str) or not path.strip():
        raise BadRequest('"path" must be a non-empty string (the notebook\'s name, used in messages)')
    options = data.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise BadRequest(f'"options" must be a JSON object, not {_json_type(options)}')
    unknown = set(options) - {"select", "ignore", "unsafe_fixes", "devices"}
    if unknown:
        raise BadRequest(f"unknown option(s): {', '.join(sorted(unknown))}")
    select = _codes(options, "select", ("ALL",))
    ignore = _codes(options, "ignore", ())
    unsafe = options.get("unsafe_fixes", False)
    if not isinstance(unsafe, bool):
        raise BadRequest('option "unsafe_fixes" must be true or false')
    devices = options.get("devices")
    if devices is not None and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise BadRequest('option "devices" must be a positive integer or null')
    return Request(posixpath.basename(path.replace("\\", "/")) or "notebook.ipynb", notebook, select, ignore, unsafe, devices)


def _codes(options: dict, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = options.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,]+", value) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z]+[0-9]*", v) for v in value):
        raise BadRequest(f'option "{key}" must be a list of rule codes or prefixes such as ["NBR1", "NBR201"]')
    return tuple(v.upper() for v in value) or default


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# --- reading the notebook --------------------------------------------------------------------


def _read(req: Request):
    """The request's notebook as nbrefactor's `Notebook` (read from the JSON, never from disk)."""
    from nbrefactor.errors import NotebookError
    from nbrefactor.notebook.model import read_notebook

    # The reader picks the format from the suffix; what Lab sends is always notebook JSON, even for
    # a jupytext `.py` notebook open as a notebook.
    name = req.name if req.name.endswith(".ipynb") else req.name + ".ipynb"
    text = json.dumps(req.notebook, indent=1, ensure_ascii=False) + "\n"
    try:
        return read_notebook(name, data=text.encode("utf-8"))
    except NotebookError as err:
        raise BadRequest(_one_line(err.message if hasattr(err, "message") else str(err))) from None


def _selection(req: Request):
    from nbrefactor.config import Selection

    return Selection(select=req.select, ignore=req.ignore)


def _cell_ids(notebook) -> list[str | None]:
    return [c.id for c in notebook.cells]


def _diagnostic(d, ids: list[str | None], name: str) -> dict:
    return {
        "code": d.code,
        "name": d.name,
        "message": d.message,
        "path": name,
        "cell": d.cell,
        "cell_id": ids[d.cell - 1] if 0 < d.cell <= len(ids) else None,
        "row": d.row,
        "column": d.column,
        "end_row": d.end_row,
        "end_column": d.end_column,
        "applicability": d.applicability,
        "fix_title": d.fix_title,
    }


def _warning(w, ids: list[str | None]) -> dict:
    return {
        "cell": w.cell,
        "cell_id": ids[w.cell - 1] if w.cell and 0 < w.cell <= len(ids) else None,
        "row": w.row,
        "message": w.message,
    }


# --- check -----------------------------------------------------------------------------------


def check(req: Request) -> dict:
    from nbrefactor.checker import check_notebook

    notebook = _read(req)
    ids = _cell_ids(notebook)
    if not notebook.is_python:
        return {
            "diagnostics": [],
            "warnings": [],
            "skipped": f"the kernel language is {notebook.language}, not Python: nothing to check",
            "summary": "not a Python notebook: nothing to check",
        }
    result = check_notebook(notebook, _selection(req), for_reading=True)
    diagnostics = [_diagnostic(d, ids, req.name) for d in sorted(result.diagnostics, key=lambda d: d.sort_key())]
    return {
        "diagnostics": diagnostics,
        "warnings": [_warning(w, ids) for w in result.warnings],
        "skipped": None,
        "summary": findings_summary(diagnostics),
    }


def findings_summary(diagnostics: list[dict]) -> str:
    if not diagnostics:
        return "no multi-GPU problems found"
    cells = {d["cell"] for d in diagnostics}
    fixable = sum(1 for d in diagnostics if d.get("fix_title") or d.get("applicability") in ("safe", "unsafe"))
    text = f"{_count(len(diagnostics), 'finding')} in {_count(len(cells), 'cell')}"
    return text + (f" ({fixable} with a fix)" if fixable else "")


# --- fix -------------------------------------------------------------------------------------


def fix(req: Request) -> dict:
    try:
        from nbrefactor.celldiff import cell_diff
        from nbrefactor.fixer import fix_notebook
    except ImportError:
        raise NotImplementedError("this nbrefactor has no fixer (nbrefactor.fixer is missing)") from None
    from nbrefactor.errors import NotebookError

    notebook = _read(req)
    ids = _cell_ids(notebook)
    if not notebook.is_python:
        raise BadRequest(f"the kernel language is {notebook.language}, not Python: nothing to fix")
    try:
        result = fix_notebook(notebook, unsafe_fixes=req.unsafe_fixes, devices=req.devices, selection=_selection(req))
    except NotebookError as err:
        raise BadRequest(_one_line(err.message if hasattr(err, "message") else str(err))) from None
    fixed = json.loads(result.fixed) if result.changed else json.loads(result.original)
    before = notebook.cells
    after_cells = fixed.get("cells", [])
    cells = []
    changed_ids = []
    by_id = {c.id: c for c in before if c.id}
    for i, c in enumerate(after_cells):
        source = _source(c.get("source", ""))
        cid = c.get("id") if isinstance(c.get("id"), str) else None
        old = by_id.get(cid) if cid else (before[i] if i < len(before) else None)
        changed = old is None or old.source != source or old.cell_type != c.get("cell_type")
        if changed:
            changed_ids.append(cid)
        cells.append({"id": cid, "cell_type": c.get("cell_type"), "source": source, "changed": changed})
    changes = [
        {
            "code": ch.code,
            "cell": ch.cell,
            "cell_id": ids[ch.cell - 1] if isinstance(ch.cell, int) and 0 < ch.cell <= len(ids) else None,
            "message": ch.message,
        }
        for ch in result.changes
    ]
    remaining = [_diagnostic(d, ids, req.name) for d in result.remaining]
    return {
        "changed": bool(result.changed),
        "summary": change_summary([c["message"] for c in changes]) if result.changed else "nothing to change",
        "changes": changes,
        "changed_cells": changed_ids,
        "cells": cells,
        "notebook": fixed,
        "cells_summary": cells_summary(notebook, after_cells) if result.changed else "",
        "diff": cell_diff(result, req.name) if result.changed else "",
        "remaining": remaining,
        "refused": [_one_line(r) for r in result.refused],
    }


def _source(src) -> str:
    return "".join(src) if isinstance(src, list) else str(src)


def cells_summary(notebook, after_cells: list[dict]) -> str:
    """How many cells the fix rewrote, added and removed: "2 cells rewritten, 1 removed"."""
    before = {c.id: c for c in notebook.cells if c.id}
    after_ids = {c.get("id") for c in after_cells}
    rewritten = sum(1 for c in after_cells if c.get("id") in before and before[c["id"]].source != _source(c.get("source", "")))
    added = sum(1 for c in after_cells if c.get("id") not in before)
    removed = sum(1 for c in notebook.cells if c.id and c.id not in after_ids)
    parts = [f"{_count(rewritten, 'cell')} rewritten"] if rewritten else []
    parts += [f"{added} added"] if added else []
    parts += [f"{removed} removed"] if removed else []
    if parts and not rewritten:
        parts[0] = parts[0].replace(" added", f" {'cell' if added == 1 else 'cells'} added", 1).replace(
            " removed", f" {'cell' if removed == 1 else 'cells'} removed", 1
        )
    return ", ".join(parts)


_COUNTED = re.compile(r"^(?P<verb>\w+) (?P<n>\d+) (?P<rest>.+)$")
_PREPOSITIONS = {"into", "to", "from", "in", "inside", "out", "of", "before", "after", "behind", "with", "by", "for", "at", "on"}


def change_summary(messages: list[str]) -> str:
    """One line from the fixer's change messages, like ones added up.

    ["moved 2 statements into train(fabric)", "moved 1 statement into train(fabric)",
     "deferred 2 CUDA calls"] -> "moved 3 statements into train(fabric), deferred 2 CUDA calls"
    """
    order: list[tuple] = []
    totals: dict[tuple, int] = {}
    forms: dict[tuple, dict[str, str]] = {}
    for message in messages:
        message = _one_line(message).rstrip(".")
        m = _COUNTED.match(message)
        if m:
            words = m["rest"].split(" ")
            cut = next((i for i, w in enumerate(words) if i and (w in _PREPOSITIONS or "(" in w)), len(words))
            noun, tail = words[:cut], " ".join(words[cut:])
            key = ("n", m["verb"], tuple(_singular(w) for w in noun), tail)
            n = int(m["n"])
            totals[key] = totals.get(key, 0) + n
            seen = forms.setdefault(key, {})
            seen.setdefault("one" if n == 1 else "many", " ".join(noun))
        else:
            key = ("s", message)  # the same sentence twice is one change reported per finding
        if key not in order:
            order.append(key)
    out = []
    for key in order:
        if key[0] == "n":
            _, verb, singular, tail = key
            n = totals[key]
            seen = forms[key]
            if n == 1:
                noun = seen.get("one") or " ".join(singular)
            else:
                noun = seen.get("many") or " ".join([*seen["one"].split(" ")[:-1], _plural(singular[-1])])
            out.append(" ".join(p for p in (verb, str(n), noun, tail) if p))
        else:
            out.append(key[1])
    return ", ".join(out) if out else "nothing to change"


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def _plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1].lower() not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("ch", "sh", "ss", "x")):
        return word + "es"
    return word + "s"


def _count(n: int, noun: str) -> str:
    return f"1 {noun}" if n == 1 else f"{n} {_plural(noun)}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
