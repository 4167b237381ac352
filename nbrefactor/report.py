"""Diagnostics as text, JSON, GitHub annotations and SARIF (ruff's formats and field names)."""

from __future__ import annotations

import json
import os

from nbrefactor import __version__
from nbrefactor.diagnostic import Diagnostic

FORMATS = ("text", "json", "github", "sarif", "concise")


def text_line(d: Diagnostic) -> str:
    """`path:cell N:row:col: CODE message`; a script is one cell: `path:line:col: CODE message`."""
    if d.context == "script":
        return f"{d.path}:{d.row}:{d.column}: {d.code} {d.message}"
    return f"{d.path}:cell {d.cell}:{d.row}:{d.column}: {d.code} {d.message}"


def _cell(d: Diagnostic) -> int | None:
    return None if d.context == "script" else d.cell


def as_text(diagnostics: list[Diagnostic]) -> str:
    return "".join(text_line(d) + "\n" for d in diagnostics)


def _fix(d: Diagnostic):
    if d.applicability == "none":
        return None
    fix = {"applicability": d.applicability, "message": d.fix_title, "edits": []}
    if d.fix_needs:
        fix["needs"] = d.fix_needs  # an option besides --unsafe-fixes, such as `--devices N`
    return fix


def as_json(diagnostics: list[Diagnostic]) -> str:
    items = [
        {
            "cell": _cell(d),
            "code": d.code,
            "end_location": {"column": d.end_column, "row": d.end_row},
            "filename": os.path.abspath(d.path),
            "fix": _fix(d),
            "location": {"column": d.column, "row": d.row},
            "message": d.message,
            "name": d.name,
            "noqa_row": d.row,
            "url": None,
        }
        for d in diagnostics
    ]
    return json.dumps(items, indent=2) + "\n"


def _escape_property(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace(":", "%3A").replace(",", "%2C")


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def as_github(diagnostics: list[Diagnostic]) -> str:
    """GitHub workflow commands; the cell is in the title and the message, since GitHub places
    annotations on file lines and a notebook's lines are JSON."""
    out = []
    for d in diagnostics:
        props = ",".join(
            [
                f"title={_escape_property(f'nbrefactor ({d.code})' + (f' cell {d.cell}' if _cell(d) else ''))}",
                f"file={_escape_property(d.path)}",
                f"line={d.row}",
                f"col={d.column}",
                f"endLine={d.end_row}",
                f"endColumn={d.end_column}",
            ]
        )
        out.append(f"::error {props}::{_escape_data(text_line(d))}\n")
    return "".join(out)


def sarif_rules() -> list[dict]:
    """The rule catalogue as SARIF's `rules` (JSON-able: `check` keeps it in its cache, so that a
    warm run printing SARIF need not import the rules)."""
    from codemods.rules import ALL_RULES

    return [
        {
            "id": r.code,
            "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.docs()},
            "help": {"text": r.docs(), "markdown": r.docs()},
            "properties": {"fix_availability": r.fix_availability.value},
        }
        for r in ALL_RULES
    ]


def as_sarif(diagnostics: list[Diagnostic], rules: list[dict] | None = None) -> str:
    rules = sarif_rules() if rules is None else rules
    results = [
        {
            "ruleId": d.code,
            "level": "error",
            "message": {"text": f"cell {d.cell}: {d.message}" if _cell(d) else d.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": d.path.replace(os.sep, "/")},
                        "region": {
                            "startLine": d.row,
                            "startColumn": d.column,
                            "endLine": d.end_row,
                            "endColumn": d.end_column,
                        },
                    },
                    "logicalLocations": [{"name": f"cell {d.cell}", "kind": "notebookCell"}] if _cell(d) else [],
                }
            ],
            "properties": {"cell": _cell(d), "fix_applicability": d.applicability, **({"fix_needs": d.fix_needs} if d.fix_needs else {})},
        }
        for d in diagnostics
    ]
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "nbrefactor", "version": __version__, "rules": rules}},
                "results": results,
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def render(diagnostics: list[Diagnostic], fmt: str, sarif_rules: list[dict] | None = None) -> str:
    if fmt == "sarif":
        return as_sarif(diagnostics, sarif_rules)
    return {"text": as_text, "concise": as_text, "json": as_json, "github": as_github}[fmt](diagnostics)
