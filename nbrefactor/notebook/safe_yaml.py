"""YAML from untrusted files, parsed with limits before anything expands it.

`yaml.safe_load` runs no code, but it expands aliases: a header of a few hundred bytes whose
anchors refer to each other nine times over (a "billion laughs") builds 9**9 objects and runs for
minutes. Neither a jupytext header nor a jupytext configuration file needs anchors or aliases, so
they are refused, and the text is bounded in size and in events before `safe_load` sees it.
"""

from __future__ import annotations

import re

from nbrefactor.errors import NotebookError

MAX_BYTES = 256 * 1024
MAX_EVENTS = 20_000
MAX_DEPTH = 64


def check_yaml(text: str, path: str, what: str) -> None:
    """Raise a one-line `NotebookError` naming `what` when `text` is YAML nbrefactor will not load."""
    if len(text) > MAX_BYTES:
        raise NotebookError(path, f"{what} is {len(text):,} characters of YAML (at most {MAX_BYTES:,}): not read")
    import yaml

    depth = 0
    try:
        for count, event in enumerate(yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise NotebookError(path, f"{what} uses YAML anchors or aliases, which nbrefactor does not expand")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise NotebookError(path, f"{what} is YAML nested deeper than {MAX_DEPTH} levels: not read")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if count > MAX_EVENTS:
                raise NotebookError(path, f"{what} has more than {MAX_EVENTS:,} YAML items: not read")
    except yaml.YAMLError as err:
        raise NotebookError(path, f"{what} is not valid YAML: {' '.join(str(err).split())}") from None


def safe_load(text: str, path: str, what: str):
    import yaml

    check_yaml(text, path, what)
    return yaml.safe_load(text)


def check_text_header(text: str, path: str, commented: bool) -> None:
    """The YAML header of a jupytext text notebook (`---` ... `---` at its top; in a script each
    line behind `# `) checked with `check_yaml` before jupytext parses it."""
    body: list[str] | None = None
    for line in text.split("\n", 4000)[:4000]:
        bare = line.rstrip()
        if commented:
            if not bare.startswith("#"):
                if body is None and not bare.strip():
                    continue
                return  # no header, or one that never closes: jupytext reads no header either
            bare = re.sub(r"^#\s?", "", bare, count=1)
        if body is None:
            if not bare.strip():
                continue
            if bare != "---":
                return  # no header
            body = []
        elif bare == "---":
            check_yaml("\n".join(body), path, "the jupytext header")
            return
        else:
            body.append(bare)
