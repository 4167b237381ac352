"""Read the common jupytext text notebooks without importing jupytext (or nbformat).

`nbrefactor check` on one jupytext `.py` notebook spent most of its time importing jupytext (which
pulls nbformat, jsonschema and, through its contents manager, jupyter_server) and in jupytext's cell
readers. This module reads the formats most notebooks use, the `.py` percent (`# %%`) and light
(`# +`, or paragraphs) formats, and gives exactly the cells `jupytext.reads` gives: the same
cell types, sources and cell metadata (`tests/test_text_reader.py` compares the two on every text
notebook at hand and on generated ones).

It is a port of jupytext 1.19's reading loop (`jupytext.cell_reader`: `LightScriptCellReader`,
`DoublePercentScriptCellReader`; `jupytext.header`, `jupytext.magics`, `jupytext.pep8`,
`jupytext.formats.guess_format`), restricted to what it can reproduce exactly. Whatever it is not
sure of makes `read` return None, and the caller reads the file with jupytext itself:

- another extension or format (hydrogen, sphinx, marimo, MyST, Markdown, R, ...), or a language
  other than Python;
- a jupytext configuration file for the folder (its options can change how a file is read);
- a header with more than the `jupyter:` mapping, with format options (`cell_markers`,
  `comment_magics`, ...), legacy keys, or a shebang or encoding line before it;
- cell options that change how jupytext reads the cell beyond what is ported here (`active`,
  `run_control`, `active-` tags, a `cell_type` option), values nbformat would not give back as
  parsed (tuples, sets, NaN...), options jupytext fails on, and very long option lines (a title,
  `[markdown]`/`[raw]`/`[md]`, `.attributes`, `key=value` and JSON options are read, and so is a
  cell in another language: `language="html"` becomes the `%%html` magic, as in jupytext);
- input whose reading would take more than linear work (the port stays linear; jupytext's own
  loop is quadratic on some inputs).

Every loop here is linear in the number of lines (line scans that jupytext repeats from every cell
are memoised or precomputed), and the regular expressions are jupytext's own, applied to one line.
"""

from __future__ import annotations

import re
from ast import literal_eval as _literal_eval
from json import JSONDecodeError as _JSONDecodeError
from json import loads as _json_loads
from math import isfinite as _isfinite

__all__ = ["FastText", "read"]


class _Decline(Exception):
    """The fast reader is not sure it would read this as jupytext does."""


class FastText:
    """What `read` found: the format name, the notebook metadata (the YAML header's `jupyter:`
    mapping), the cells as (cell_type, source, metadata) and where each cell lies: [start, end)
    in the text's lines (`str.splitlines`), as jupytext's reading loop takes them."""

    __slots__ = ("format_name", "metadata", "cells", "spans")

    def __init__(self, format_name: str, metadata: dict, cells: list[tuple[str, str, dict]],
                 spans: list[tuple[int, int]] | None = None):
        self.format_name = format_name
        self.metadata = metadata
        self.cells = cells
        self.spans = spans if spans is not None else []


# --- jupytext's regular expressions (for the Python script formats) -----------------------------

_C = re.escape("#")
_MAGIC_RE = re.compile(r"^\s*({0} |{0})*(%|%%|%%%)[a-zA-Z]".format(_C))
_MAGIC_FORCE_ESC_RE = re.compile(r"^\s*({0} |{0})*(%|%%|%%%)[a-zA-Z](.*){0}\s*escape".format(_C))
_MAGIC_NOT_ESC_RE = re.compile(r"^\s*({0} |{0})*(%|%%|%%%)[a-zA-Z](.*){0}\s*noescape".format(_C))
_LINE_CONTINUATION_RE = re.compile(r".*\\\s*$")
_PYTHON_HELP_OR_BASH_CMD = re.compile(r"^\s*(?:(?:# |#)+\s*)?(\?|!)\s*[A-Za-z\.\~\$\\\/\{\}]")
_PYTHON_MAGIC_CMD = re.compile(
    r"^(# |#)*({})($|\s$|\s[^=,])".format(
        "|".join(["cat", "cd", "cp", "mv", "rm", "rmdir", "mkdir"] + ["copy", "ddir", "echo", "ls", "ldir", "mkdir", "ren", "rmdir"])
    )
)
_IPYTHON_MAGIC_HELP = re.compile(r"^\s*(# )*[^\s]*\?\s*$")
_PYTHON_MAGIC_ASSIGN = re.compile(r"^(# |#)*\s*([a-zA-Z_][a-zA-Z_$0-9]*)\s*=\s*(%|%%|%%%|!)[a-zA-Z](.*)")
_ESCAPED_CODE_START = re.compile(r"^({0} |{0})*({0}|{0} )\+".format(_C))

_PERCENT_START = re.compile(rf"^\s*{_C}\s*%%(%*)\s(.*)$")
_PERCENT_ALT_START = re.compile(rf"^\s*{_C}\s*(%%|<codecell>|In\[[0-9 ]*\]:?)\s*$")
_LIGHT_START = re.compile("^" + _C + r"\s*\+(.*)$")
_CODE_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_PY_INDENTED = re.compile(r"^\s")

# guess_format
_TWENTY_HASH = re.compile(r"^#( |)#{19,}\s*$")
_DOUBLE_PERCENT = re.compile(rf"^{_C}( %%|%%)$")
_DOUBLE_PERCENT_AND_SPACE = re.compile(rf"^{_C}( %%|%%)\s")
_NBCONVERT_SCRIPT = re.compile(rf"^{_C}( <codecell>| In\[[0-9 ]*\]:?)")
_VIM_FOLDING = re.compile(rf"^{_C}\s*" + "{{{")
_VSCODE_FOLDING = re.compile(rf"^{_C}\s*region")
_MARIMO_CELL = re.compile(r"^@app.cell.*")

# header
_HEADER_RE = re.compile(r"^---\s*$")
_JUPYTER_RE = re.compile(r"^jupyter\s*:\s*$")
_LEFTSPACE_RE = re.compile(r"^\s")
_ENCODING_RE = re.compile(rf"^[ \t\f]*{_C}.*?coding[:=][ \t]*([-_.a-zA-Z0-9]+)")

_SUPPORTED_FORMATS = ("percent", "light")
# Keys of the header's `jupytext` mapping that do not change how cells are read.
_HARMLESS_JUPYTEXT_KEYS = {"formats", "text_representation", "notebook_metadata_filter", "cell_metadata_filter"}
_LEGACY_KEYS = {"nbrmd_formats", "nbrmd_format_version", "jupytext_formats", "jupytext_format_version", "main_language", "encoding", "executable"}
_SIMPLE_FORMATS = re.compile(
    r"^(?:[A-Za-z0-9_.-]+/)?\.?(?:ipynb|py|md)(?::(?:percent|light|markdown|myst|hydrogen|nomarker))?$"
)


def _blank(line: str) -> bool:  # jupytext's `^\s*$` on a line without line breaks
    return not line.strip()


# --- jupytext.stringparser.StringParser("python"), one line at a time ---------------------------


class _StringParser:
    __slots__ = ("single", "triple")

    def __init__(self):
        self.single = None
        self.triple = None

    def is_quoted(self):
        return self.single or self.triple

    def read_line(self, line: str) -> None:
        if '"' not in line and "'" not in line:
            # No quote: the only effect of jupytext's loop is the end of line (python: no open
            # single quote survives a line).
            self.single = None
            return
        if not (self.single or self.triple) and line.lstrip().startswith("#"):
            return
        triple_start = -1
        single = self.single
        triple = self.triple
        for i, char in enumerate(line):
            if single is None and triple is None and char == "#":
                break
            if char != '"' and char != "'":
                continue
            if line[i - 1 : i] == "\\":
                continue
            if single == char:
                single = None
                continue
            if single is not None:
                continue
            if line[i - 2 : i + 1] == 3 * char and i >= triple_start + 3:
                if triple == char:
                    triple = None
                    triple_start = i
                    continue
                if triple is not None:
                    continue
                triple = char
                triple_start = i
                continue
            if triple is not None:
                continue
            single = char
        self.single = None
        self.triple = triple


class _LanguageStringParser:
    """jupytext.stringparser.StringParser(language) for a cell in another language, as it is."""

    __slots__ = ("comment", "python", "single", "triple")

    def __init__(self, language: str):
        self.single = None
        self.triple = None
        self.python = language != "R"
        self.comment = _COMMENT.get(language)

    def is_quoted(self):
        return self.single or self.triple

    def read_line(self, line: str) -> None:
        comment = self.comment
        if not self.is_quoted() and comment is not None and line.lstrip().startswith(comment):
            return
        triple_start = -1
        for i, char in enumerate(line):
            if self.single is None and self.triple is None and comment and comment.startswith(char) and line[i:].startswith(comment):
                break
            if char not in ('"', "'"):
                continue
            if line[i - 1 : i] == "\\":
                continue
            if self.single == char:
                self.single = None
                continue
            if self.single is not None:
                continue
            if not self.python:
                continue
            if line[i - 2 : i + 1] == 3 * char and i >= triple_start + 3:
                if self.triple == char:
                    self.triple = None
                    triple_start = i
                    continue
                if self.triple is not None:
                    continue
                self.triple = char
                triple_start = i
                continue
            if self.triple is not None:
                continue
            self.single = char
        if self.python:
            self.single = None


def _string_parser(language: str | None):
    return _StringParser() if language is None or language == "python" else _LanguageStringParser(language)


# --- jupytext.magics (python) -------------------------------------------------------------------


def _is_magic(line: str, explicitly_code: bool = False) -> bool:
    if _MAGIC_FORCE_ESC_RE.match(line):
        return True
    if _MAGIC_NOT_ESC_RE.match(line):
        return False
    if _MAGIC_RE.match(line):
        return True
    if _PYTHON_HELP_OR_BASH_CMD.match(line):
        return True
    if _PYTHON_MAGIC_ASSIGN.match(line):
        return True
    if explicitly_code and _IPYTHON_MAGIC_HELP.match(line):
        return True
    return bool(_PYTHON_MAGIC_CMD.match(line))


def _unesc(line: str) -> str:
    unindented = line.lstrip()
    indent = line[: len(line) - len(unindented)]
    if unindented.startswith("# "):
        return indent + unindented[2:]
    if unindented.startswith("#"):
        return indent + unindented[1:]
    return line


def _uncomment_magic(source: list[str], explicitly_code: bool) -> list[str]:
    return _each_magic(source, explicitly_code, lambda line, _continued: _unesc(line))


def _comment_magic(source: list[str]) -> list[str]:
    """jupytext.magics.comment_magic for Python code written explicitly as code (the inverse of
    `_uncomment_magic`): a magic's continuation line is commented where it starts."""
    def comment(line: str, continued: bool) -> str:
        unindented = line if continued else line.lstrip()
        return line[: len(line) - len(unindented)] + "# " + unindented

    return _each_magic(source, True, comment)


def _each_magic(source: list[str], explicitly_code: bool, edit) -> list[str]:
    """`source` with each magic line (outside strings), and each line continuing one, replaced by
    `edit(line, is_a_continuation)`: jupytext's loop for commenting and uncommenting magics."""
    parser = _StringParser()
    next_is_magic = False
    for pos, line in enumerate(source):
        if not parser.is_quoted() and (next_is_magic or _is_magic(line, explicitly_code)):
            source[pos] = edit(line, next_is_magic)
            next_is_magic = bool(_LINE_CONTINUATION_RE.match(line))
        parser.read_line(line)
    return source


def _need_explicit_marker(source: list[str]) -> bool:
    parser = _StringParser()
    for line in source:
        if not parser.is_quoted() and _is_magic(line, True):
            if not _is_magic(line, False):
                return True
        parser.read_line(line)
    return False


def _unescape_code_start(source: list[str]) -> list[str]:
    parser = _StringParser()
    for pos, line in enumerate(source):
        if not parser.is_quoted() and _ESCAPED_CODE_START.match(line):
            unescaped = _unesc(line)
            if _ESCAPED_CODE_START.match(unescaped):
                source[pos] = unescaped
        parser.read_line(line)
    return source


def _uncomment(lines: list[str], prefix: str = "#") -> list[str]:
    if not prefix:
        return lines
    ps = prefix + " "
    return [line[len(ps) :] if line.startswith(ps) else (line[len(prefix) :] if line.startswith(prefix) else line) for line in lines]


def _uncomment_one(line: str, prefix: str = "#") -> str:
    if prefix:
        if line.startswith(prefix + " "):
            return line[len(prefix) + 1 :]
        if line.startswith(prefix):
            return line[len(prefix) :]
    return line


# --- cell options (jupytext.cell_metadata.text_to_metadata, allow_title=True) -------------------

# jupytext.cell_metadata's regular expressions
_IS_IDENTIFIER = re.compile(r"^[a-zA-Z_\.]+[a-zA-Z0-9_\.]*$")
_IS_VALID_METADATA_KEY = re.compile(r"^[a-zA-Z0-9_\.@/-]+$")
# Longer option lines are left to jupytext (its key=value parser tries every '=' with a JSON and a
# Python literal parse, and recurses once per option).
_MAX_OPTIONS = 1000

# jupytext.languages: the comment of each script language (StringParser's `_COMMENT`), and the
# languages that `set_main_and_cell_language` turns into a `%%language` cell magic
# (tests/test_text_reader.py checks both against jupytext's own tables).
_COMMENT = {
    "python": "#", "coconut": "#", "R": "#", "julia": "#", "c++": "//", "scheme": ";;", "clojure": ";;",
    "bash": "#", "powershell": "#", "q": "/", "matlab": "%", "wolfram language": "(*", "idl": ";",
    "javascript": "//", "typescript": "//", "scala": "//", "rust": "//", "robotframework": "#",
    "csharp": "//", "fsharp": "//", "sos": "#", "java": "//", "groovy": "//", "sage": "#", "ocaml": "(*",
    "haskell": "--", "tcl": "#", "maxima": "/*", "gnuplot": "#", "stata": "//", "sas": "/*", "jenner": "/*",
    "xonsh": "#", "logtalk": "%", "lua": "--", "go": "//",
}
_JUPYTER_LANGUAGES = frozenset([
    "R", "bash", "sh", "python", "python2", "python3", "coconut", "javascript", "js", "perl", "html", "latex",
    "markdown", "pypy", "ruby", "script", "svg", "matlab", "octave", "idl", "robotframework", "sas", "spark",
    "sql", "cython", "haskell", "tcl", "gnuplot", "wolfram language", "c#", "f#", "cs", "fs",
]).union(_COMMENT)


def _relax_json_loads(text: str):
    """relax_json_loads(text): JSON, else a Python literal (its ValueError/SyntaxError propagate)."""
    text = text.strip()
    try:
        return _json_loads(text)
    except _JSONDecodeError:
        pass
    return _literal_eval(text)


def _parse_key_equal_value(text: str) -> dict:
    """parse_key_equal_value: 'key1=value1 key2=value2', parsed from the right."""
    text = text.strip()
    if not text:
        return {}
    last_space_pos = text.rfind(" ")
    if not text.startswith("--") and _IS_IDENTIFIER.match(text[last_space_pos + 1 :]):
        result: dict = {text[last_space_pos + 1 :]: None}
        if last_space_pos > 0:
            result.update(_parse_key_equal_value(text[:last_space_pos]))
        return result
    equal_sign_pos = None
    while True:
        equal_sign_pos = text.rfind("=", None, equal_sign_pos)
        if equal_sign_pos < 0:
            return {"incorrectly_encoded_metadata": text}
        prev_whitespace = text[:equal_sign_pos].rstrip().rfind(" ")
        key = text[prev_whitespace + 1 : equal_sign_pos].strip()
        if not _IS_VALID_METADATA_KEY.match(key):
            continue
        try:
            value = _relax_json_loads(text[equal_sign_pos + 1 :])
        except (ValueError, SyntaxError):
            continue
        metadata = _parse_key_equal_value(text[:prev_whitespace]) if prev_whitespace > 0 else {}
        metadata[key] = value
        return metadata


def _text_to_metadata(text: str) -> tuple[str, object]:
    """text_to_metadata(text, allow_title=True): the title, and the options."""
    text = text.strip()
    first_curly_bracket = text.find("{")
    first_equal_sign = text.find("=")
    if first_curly_bracket < 0 or (0 <= first_equal_sign < first_curly_bracket):
        if first_equal_sign >= 0:
            words = text[:first_equal_sign].split(" ")
            while words and not words[-1]:
                words.pop()
            if words:
                words.pop()
        else:
            words = text.split(" ")
        while words and (not words[-1].strip() or words[-1].startswith(".")):
            words.pop()
        title = " ".join(words)
        return title, _parse_key_equal_value(text[len(title) :])
    # relax_json_loads(catch=True)
    options = text[first_curly_bracket:].strip()
    try:
        metadata = _json_loads(options)
    except _JSONDecodeError:
        try:
            metadata = _literal_eval(options)
        except (ValueError, SyntaxError):
            metadata = {"incorrectly_encoded_metadata": options}
    return text[:first_curly_bracket].strip(), metadata


def _spend_on_options(ctx, options: str) -> str:
    """Charge the file's work budget for parsing `options`: the key=value parser may try a JSON and
    a Python literal parse from every '=' sign, so a file of long option lines with many '=' is
    left to jupytext instead of being read in quadratic time."""
    if "=" in options or "{" in options:
        ctx.spend(len(options) * (options.count("=") + 1) // 8)
    return options


def _is_plain_json(value, depth: int = 0) -> bool:
    """A value that reads back the same through nbformat (no tuple, set, bytes, complex, NaN...)."""
    if depth > 50:
        return False
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return _isfinite(value)
    if type(value) is list:
        return all(_is_plain_json(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def _options_to_metadata(options: str, light: bool = False) -> dict:
    """LightScriptCellReader.options_to_metadata: the title (with `[markdown]`, `[raw]`, `[md]`,
    Spyder's sub-cell `%`) and the key=value or JSON options. Declines on options that change how
    jupytext reads the cell in ways not ported here (`active`, `tags` with `active-`, `run_control`,
    a `cell_type` option), and on values nbformat would not give back as parsed."""
    if ("=" in options or "{" in options) and len(options) > _MAX_OPTIONS:
        raise _Decline("long cell options")
    try:
        title, metadata = _text_to_metadata(options)
    except Exception:  # noqa: BLE001 - what jupytext's parse raises (TypeError, RecursionError...): let it
        raise _Decline("cell options jupytext fails on") from None
    if type(metadata) is not dict or not _is_plain_json(metadata):
        raise _Decline("cell options")
    if "active" in metadata or "run_control" in metadata or "cell_type" in metadata:
        raise _Decline("cell options that change reading")
    if "tags" in metadata:
        tags = metadata["tags"]
        if type(tags) is not list or not all(isinstance(t, str) and not t.startswith("active-") for t in tags):
            raise _Decline("cell tags")
    if "language" in metadata:
        language = metadata["language"]
        if not isinstance(language, str) or not language:
            raise _Decline("cell language")
        if "magic_args" in metadata and not isinstance(metadata["magic_args"], str):
            raise _Decline("magic_args")
    if light and "endofcell" in metadata and not isinstance(metadata["endofcell"], str):
        raise _Decline("endofcell")
    for cell_type in ("markdown", "raw", "md"):
        code = f"[{cell_type}]"
        if code in title:
            title = title.replace(code, "").strip()
            metadata["cell_type"] = cell_type
            if cell_type == "md":
                metadata["region_name"] = cell_type
                metadata["cell_type"] = "markdown"
            break
    depth = 0
    while title.startswith("%"):
        depth += 1
        title = title[1:]
    if depth:
        metadata["cell_depth"] = depth
        title = title.strip()
    if title:
        metadata["title"] = title
    return metadata


# --- the file's lines, with the look-ahead scans jupytext repeats, precomputed ------------------


class _Lines:
    def __init__(self, lines: list[str]):
        self.lines = lines
        self.n = n = len(lines)
        self.blank = [not ln.strip() for ln in lines]
        # next_code_is_indented(lines[i:]): the first non-blank line from i is indented
        nxt = [False] * (n + 1)
        for i in range(n - 1, -1, -1):
            nxt[i] = nxt[i + 1] if self.blank[i] else bool(_PY_INDENTED.match(lines[i]))
        self.next_code_indented = nxt
        self._has_code: list[bool] | None = None
        self._next_def: dict[int, bool] = {}
        self._closing: dict[tuple[str, str], list[int]] = {}
        self.budget = 8 * n + 10_000  # steps for the look-ahead scans that cannot be precomputed

    def spend(self, steps: int = 1) -> None:
        self.budget -= steps
        if self.budget < 0:
            raise _Decline("too much look-ahead")

    # pep8.cell_has_code(lines[p:])
    def has_code(self, p: int) -> bool:
        if self._has_code is None:
            n, lines, blank = self.n, self.lines, self.blank
            h = [False] * (n + 1)
            for j in range(n - 1, -1, -1):
                if blank[j]:
                    h[j] = False if (j + 1 < n and blank[j + 1]) else h[j + 1]
                elif lines[j].strip().startswith("#"):
                    h[j] = h[j + 1]
                else:
                    h[j] = True
            self._has_code = h
        return self._has_code[p]

    # pep8.next_instruction_is_function_or_class(lines[p:])
    def next_is_def(self, p: int) -> bool:
        lines, blank, n = self.lines, self.blank, self.n
        chain: list[int] = []
        result = False
        j = p
        while True:
            if j in self._next_def:
                result = self._next_def[j]
                break
            if j >= n:
                result = False
                break
            chain.append(j)
            self.spend()
            line = lines[j]
            if blank[j]:
                # fresh at j (blank: no state change); the next line is checked against this one
                if j + 1 < n and blank[j + 1]:
                    result = False
                    break
                j += 1
                continue
            if line.startswith(("def ", "async ", "class ")):
                result = True
                break
            if not line.startswith(("#", "@", " ", ")")):
                result = False
                break
            parser = _StringParser()
            parser.read_line(line)
            k = j + 1
            while parser.is_quoted() and k < n:
                self.spend()
                parser.read_line(lines[k])  # a quoted line is skipped whatever it holds
                k += 1
            if parser.is_quoted():  # the file ends inside a string
                result = False
                break
            j = k  # fresh state at k, and line k - 1 is not blank
        for c in chain:
            self._next_def[c] = result
        return result

    # any(_closes_fence(uncomment([l], comment)[0], fence) for l in lines[p:])
    def fence_closes_after(self, p: int, fence: tuple[str, int], comment: str) -> bool:
        key = (comment, fence[0])
        table = self._closing.get(key)
        if table is None:
            n = self.n
            table = [0] * (n + 1)
            for j in range(n - 1, -1, -1):
                best = table[j + 1]
                m = _CODE_FENCE.match(_uncomment_one(self.lines[j], comment))
                if m and m.group(1)[0] == fence[0] and not m.group(2).strip():
                    best = max(best, len(m.group(1)))
                table[j] = best
            self._closing[key] = table
        return table[p] >= fence[1]


def _opening_fence(text: str):
    match = _CODE_FENCE.match(text)
    if not match or (match.group(1)[0] == "`" and "`" in match.group(2)):
        return None
    return match.group(1)[0], len(match.group(1))


def _closes_fence(text: str, fence) -> bool:
    match = _CODE_FENCE.match(text)
    return bool(match) and match.group(1)[0] == fence[0] and len(match.group(1)) >= fence[1] and not match.group(2).strip()


# --- jupytext.pep8 ------------------------------------------------------------------------------


def _cell_ends_with_function_or_class(lines: list[str]) -> bool:
    non_quoted = []
    parser = _StringParser()
    for line in lines:
        if not parser.is_quoted():
            non_quoted.append(line)
        parser.read_line(line)
    rev = non_quoted[::-1]
    for i, line in enumerate(rev):
        if not line.strip():
            if i > 0 and not rev[i - 1].strip():
                return False
            continue
        if line.startswith(("#", " ", ")")):
            continue
        if line.startswith(("def ", "async ", "class ")):
            return True
        return False
    return False


def _cell_ends_with_code(lines: list[str]) -> bool:
    if not lines:
        return False
    if not lines[-1].strip():
        return False
    return not lines[-1].startswith("#")


def _pep8_lines_between_cells(prev_lines: list[str], ctx: _Lines, p: int) -> int:
    """pep8_lines_between_cells(prev_lines, lines[p:], ".py")"""
    if p >= ctx.n:
        return 1
    if not prev_lines:
        return 0
    if _cell_ends_with_function_or_class(prev_lines):
        return 2 if ctx.has_code(p) else 1
    if _cell_ends_with_code(prev_lines) and ctx.next_is_def(p):
        return 2
    return 1


def _count_lines_to_next_cell(cell_end_marker: int, next_cell_start: int, total: int, explicit_eoc: bool) -> int:
    if cell_end_marker < total:
        lines_to_next_cell = next_cell_start - cell_end_marker
        if explicit_eoc:
            lines_to_next_cell -= 1
        if next_cell_start >= total:
            lines_to_next_cell += 1
        return lines_to_next_cell
    return 1


def _last_two_lines_blank(source: list[str]) -> bool:
    if len(source) < 3:
        return False
    return not _blank(source[-3]) and _blank(source[-2]) and _blank(source[-1])


# --- cell content (BaseCellReader.extract_content and ScriptCellReader) --------------------------


def _extract_content(source: list[str], cell_type: str, metadata: dict, explicit_soc: bool,
                     language: str | None = None) -> list[str]:
    # The metadata here never holds `active`, `run_control` or `active-` tags (see
    # _options_to_metadata), so every cell is active.
    if cell_type != "code":
        content = "\n".join(source).strip()
        for prefix in ("", "r", "R"):
            for triple_quote in ('"""', "'''"):
                left = prefix + triple_quote
                right = triple_quote
                if content.startswith(left) and content.endswith(right) and len(content) >= len(left + right):
                    content = content[len(left) : -len(right)]
                    if content.startswith("\n"):
                        content = content[1:]
                        left = left + "\n"
                    if content.endswith("\n"):
                        content = content[:-1]
                        right = "\n" + right
                    if not prefix:
                        if len(left) == len(right) == 4:
                            metadata["cell_marker"] = left[:3]
                    elif len(left[1:]) == len(right) == 4:
                        metadata["cell_marker"] = left[:4]
                    else:
                        metadata["cell_marker"] = left + "," + right
                    return content.splitlines()
    if language is not None and language != "python":  # a cell in another language: just uncommented
        return _uncomment(source, "#")
    lines = _uncomment_magic(source, explicitly_code=explicit_soc)
    if cell_type == "code" and not explicit_soc and _need_explicit_marker(lines):
        metadata["comment_questions"] = False
    if cell_type == "code":
        return _unescape_code_start(lines)
    return _uncomment(lines, "#")


def _finish(ctx: _Lines, s: int, cell_type: str, metadata: dict, org_content: list[str], content: list[str],
            pos_next_cell: int, lines_to_next_cell: int, language: str | None = None):
    """BaseCellReader.read, after the content: the `lines_to_next_cell` metadata, and the cell's
    language back in its metadata."""
    expected = _pep8_lines_between_cells(org_content or [""], ctx, pos_next_cell)
    if lines_to_next_cell != expected:
        metadata["lines_to_next_cell"] = lines_to_next_cell
    if language:
        metadata["language"] = language
    return (cell_type, "\n".join(content), metadata), pos_next_cell


# --- the percent format (DoublePercentScriptCellReader) ------------------------------------------


def _is_percent_marker(line: str) -> bool:
    if "%%" not in line and "<codecell>" not in line and "In[" not in line:
        return False
    return bool(_PERCENT_START.match(line) or _PERCENT_ALT_START.match(line))


def _percent_cell(ctx: _Lines, s: int):
    lines, n = ctx.lines, ctx.n
    line0 = lines[s]
    if _PERCENT_START.match(line0):
        text = _uncomment_one(line0)
        metadata = _options_to_metadata(_spend_on_options(ctx, text[text.find("%%") + 2 :]))
    else:
        metadata = {}
    language = metadata.pop("language", None)
    if metadata and "cell_type" in metadata:
        cell_type = metadata.pop("cell_type")
    else:
        cell_type = "code"
    next_cell = n
    parser = _string_parser(language)
    fence = None
    text_cell = cell_type in ("markdown", "raw")
    for i in range(s, n):
        line = lines[i]
        if parser.is_quoted():
            parser.read_line(line)
            continue
        parser.read_line(line)
        if text_cell:
            text = _uncomment_one(line)
            if fence:
                if _closes_fence(text, fence):
                    fence = None
                continue
            opening = _opening_fence(text)
            if opening and ctx.fence_closes_after(i + 1, opening, "#"):
                fence = opening
                continue
        if i > s and _is_percent_marker(line):
            next_cell = i
            break
    if next_cell - s >= 3 and not ctx.blank[next_cell - 3] and ctx.blank[next_cell - 2] and ctx.blank[next_cell - 1]:
        end, nxt = next_cell - 2, next_cell
    elif next_cell > s and lines[next_cell - 1] == "":
        end, nxt = next_cell - 1, next_cell
    else:
        end, nxt = next_cell, next_cell
    cell_start = s + 1 if _is_percent_marker(line0) else s
    source = lines[cell_start:end]
    org_content = list(source)
    content = _extract_content(source, cell_type, metadata, explicit_soc=True, language=language)
    ltnc = _count_lines_to_next_cell(end - s, nxt - s, n - s, False)
    return _finish(ctx, s, cell_type, metadata, org_content, content, nxt, ltnc, language)


# --- the light format (LightScriptCellReader, default cell markers) ------------------------------


def _paragraph_is_fully_commented(ctx: _Lines, s: int) -> bool:
    lines, n = ctx.lines, ctx.n
    for i in range(s, n):
        line = lines[i]
        if line.startswith("#"):
            if line[1:].lstrip().startswith("#"):
                continue
            if _is_magic(line):
                return False
            continue
        return i > s and ctx.blank[i]
    return True


def _light_cell(ctx: _Lines, s: int):
    lines, n, blank = ctx.lines, ctx.n, ctx.blank
    line0 = lines[s]
    metadata = None
    ignore_end_marker = True
    m = _LIGHT_START.match(line0)
    if m:
        metadata = _options_to_metadata(_spend_on_options(ctx, m.group(1)), light=True)
        ignore_end_marker = False
    language = metadata.pop("language", None) if metadata else None
    # find_cell_end
    explicit_eoc = False
    if metadata is None and _paragraph_is_fully_commented(ctx, s):
        cell_type = "markdown"
        end = nxt = n
        for i in range(s, n):
            if blank[i]:
                end, nxt = i, i + 1
                break
    else:
        end_code_re = None
        if metadata is not None:
            end_code_re = re.compile("^" + _C + " " + re.escape(metadata.get("endofcell", "-")) + r"\s*$")
        if metadata and "cell_type" in metadata:
            cell_type = metadata.pop("cell_type")
        else:
            cell_type = "code"
        parser = _string_parser(language)
        end = nxt = n
        for i in range(s, n):
            if metadata is not None and i == s:
                continue
            line = lines[i]
            if parser.is_quoted():
                parser.read_line(line)
                continue
            parser.read_line(line)
            if _LIGHT_START.match(line):
                if i > s and blank[i - 1]:
                    if i > s + 1 and blank[i - 2]:
                        end, nxt = i - 2, i
                    else:
                        end, nxt = i - 1, i
                else:
                    end, nxt = i, i
                break
            if not ignore_end_marker and end_code_re is not None:
                if end_code_re.match(line):
                    end, nxt, explicit_eoc = i, i + 1, True
                    break
            elif blank[i]:
                if not ctx.next_code_indented[i]:
                    if i > s:
                        end, nxt = i, i + 1
                    elif n - s > 1 and not blank[s + 1]:
                        end, nxt = s + 1, s + 1
                    else:
                        end, nxt = s + 1, s + 2
                    break
    # BaseCellReader.find_cell_content
    if metadata is None:
        cell_start = s
        metadata = {}
    else:
        cell_start = s + 1
    source = lines[cell_start:end]
    org_content = list(source)
    if explicit_eoc:
        if _last_two_lines_blank(source):
            source = source[:-2]
            to_end_marker = 2
        else:
            to_end_marker = 0
        pep8_lines = _pep8_lines_between_cells(source, ctx, end)
        if to_end_marker != (0 if pep8_lines == 1 else 2):
            metadata["lines_to_end_of_cell_marker"] = to_end_marker
    explicit_soc = cell_start > s
    content = _extract_content(source, cell_type, metadata, explicit_soc, language)
    total = n - s
    rel = nxt - s
    if rel + 1 < total and blank[nxt] and not blank[nxt + 1]:
        nxt += 1
    elif explicit_eoc and rel + 2 < total and blank[nxt] and blank[nxt + 1] and not blank[nxt + 2]:
        nxt += 2
    ltnc = _count_lines_to_next_cell(end - s, nxt - s, total, explicit_eoc)
    return _finish(ctx, s, cell_type, metadata, org_content, content, nxt, ltnc, language)


# --- header and format ----------------------------------------------------------------------------


def _header(lines: list[str]) -> tuple[dict, int]:
    """header_to_metadata_and_cell(lines, "#", "", ".py") for a header that holds only the
    `jupyter:` mapping: (metadata, first line after the header). Declines on anything else."""
    if not lines:
        return {}, 0
    if lines[0].startswith("#!") or _ENCODING_RE.match(lines[0]) or (len(lines) > 1 and _ENCODING_RE.match(lines[1])):
        raise _Decline("shebang or encoding line")
    header: list[str] = []
    jupyter: list[str] = []
    in_jupyter = started = ended = False
    i = -1
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        line = _uncomment_one(line)
        if _HEADER_RE.match(line):
            if not started:
                started = True
                continue
            ended = True
            break
        if not started and line.strip():
            break
        if _JUPYTER_RE.match(line):
            in_jupyter = True
        elif line and not _LEFTSPACE_RE.match(line):
            in_jupyter = False
        if in_jupyter:
            jupyter.append(line)
        else:
            header.append(line)
    if not ended:
        return {}, 0
    if header:  # root-level YAML besides `jupyter:` becomes a raw cell: left to jupytext
        raise _Decline("header with more than jupyter metadata")
    metadata: dict = {}
    if jupyter:
        try:
            import yaml

            loaded = yaml.safe_load("\n".join(jupyter))
        except Exception:  # noqa: BLE001 - jupytext would fail or read it otherwise
            raise _Decline("header YAML") from None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("jupyter"), dict):
            raise _Decline("header shape")
        metadata = loaded["jupyter"]
    if len(lines) > i + 1:
        if _blank(_uncomment_one(lines[i + 1])):
            i += 1
    return metadata, i + 1


def _check_metadata(metadata: dict) -> str | None:
    """The format name the header states (None: guess it); declines on what changes reading."""
    if _LEGACY_KEYS & set(metadata):
        raise _Decline("legacy jupytext metadata")
    jupytext = metadata.get("jupytext", {})
    if not isinstance(jupytext, dict) or set(jupytext) - _HARMLESS_JUPYTEXT_KEYS:
        raise _Decline("jupytext format options")
    for key in ("notebook_metadata_filter", "cell_metadata_filter"):
        if key in jupytext and not isinstance(jupytext[key], str):
            raise _Decline("metadata filter")
    if "formats" in jupytext:
        formats = jupytext["formats"]
        if not isinstance(formats, str) or not all(_SIMPLE_FORMATS.match(f) for f in formats.split(",") if f):
            raise _Decline("formats")
    kernelspec = metadata.get("kernelspec", {})
    if not isinstance(kernelspec, dict):
        raise _Decline("kernelspec")
    language = kernelspec.get("language")
    if language is not None and (not isinstance(language, str) or language.lower() != "python" or language in ("R", "sas")):
        raise _Decline("not python")
    if "text_representation" in jupytext:
        text_repr = jupytext["text_representation"]
        if not isinstance(text_repr, dict):
            raise _Decline("text_representation")
        ext, name = text_repr.get("extension"), text_repr.get("format_name")
        if ext != ".py" or name not in _SUPPORTED_FORMATS:
            raise _Decline("stated format")
        return name
    if jupytext.get("formats"):  # the format may come from `formats`: left to jupytext
        raise _Decline("format from formats")
    return None


def _guess_format(lines: list[str]) -> str:
    """guess_format(text, ".py") for a file without a stated format."""
    twenty_hash = double_percent = magic = vim = vscode = marimo = 0
    parser = _StringParser()
    for line in lines:
        parser.read_line(line)
        if parser.is_quoted():
            continue
        if line.startswith("#"):
            if _DOUBLE_PERCENT.match(line) or _DOUBLE_PERCENT_AND_SPACE.match(line) or _NBCONVERT_SCRIPT.match(line):
                double_percent += 1
            if _TWENTY_HASH.match(line):
                twenty_hash += 1
            if _VIM_FOLDING.match(line):
                vim += 1
            if _VSCODE_FOLDING.match(line):
                vscode += 1
        else:
            if _is_magic(line):
                magic += 1
            if line in {"import marimo", "app = marimo.App()"} or _MARIMO_CELL.match(line):
                marimo += 1
    if double_percent >= 1:
        if magic:
            raise _Decline("hydrogen")
        return "percent"
    if marimo >= 2 or vim or vscode or twenty_hash >= 2:
        raise _Decline("another script format")
    return "light"


# --- entry point ----------------------------------------------------------------------------------


def read(text: str, ext: str) -> FastText | None:
    """The notebook jupytext would read from `text` (a file with extension `ext`), or None when the
    fast reader is not sure (then read it with jupytext). The caller checks first that no jupytext
    configuration applies to the file."""
    if ext != ".py":
        return None
    try:
        return _read_py(text)
    except _Decline:
        return None
    except RecursionError:
        return None


def _read_py(text: str) -> FastText:
    all_lines = text.splitlines()
    metadata, pos = _header(all_lines)
    format_name = _check_metadata(metadata) or _guess_format(all_lines)
    ctx = _Lines(all_lines[pos:])
    reader = _percent_cell if format_name == "percent" else _light_cell
    cells: list[tuple[str, str, dict]] = []
    spans: list[tuple[int, int]] = []
    s = 0
    while s < ctx.n:
        cell, nxt = reader(ctx, s)
        if nxt <= s:  # jupytext raises "Blocked at lines": let it
            raise _Decline("no progress")
        cells.append(_check_schema(_cell_language(cell)))
        spans.append((pos + s, pos + nxt))
        s = nxt
    return FastText(format_name, metadata, cells, spans)


# --- writing one percent cell, and reading one cell (for `nbrefactor.notebook.text`) --------------


def is_percent_marker(line: str) -> bool:
    """Does this line (line end allowed) start a cell in the percent format (jupytext's
    `start_code_re` or `alternative_start_code_re`)?"""
    return _is_percent_marker(line.rstrip("\r\n"))


def percent_code_lines(source: str) -> list[str] | None:
    """The lines under the marker of a Python code cell with `source`, as jupytext's percent
    exporter writes them (`DoublePercentCellExporter.cell_to_text` with the default options: the
    magics commented out), up to the last non-blank line; None for a cell it would write
    otherwise (a cell magic, which jupytext turns into cell options)."""
    lines = [""] if source == "" else source.splitlines() + ([""] if source.endswith("\n") else [])
    if lines[0].startswith("%%"):
        return None
    _comment_magic(lines)
    while lines and _blank(lines[-1]):
        lines.pop()
    return lines


def read_one_cell(lines: list[str], format_name: str) -> tuple[dict, int]:
    """(the cell's metadata, the number of lines it takes) for the first cell of `lines` (no line
    ends) in a `.py` notebook of this format without options: what jupytext's cell reader's
    `read(lines)` gives. Raises ValueError where the fast reader would not be sure."""
    try:
        (_, _, metadata), used = (_percent_cell if format_name == "percent" else _light_cell)(_Lines(lines), 0)
    except (_Decline, RecursionError) as err:
        raise ValueError(str(err)) from None
    return metadata, used


_SCHEMA_KEYS = frozenset(["jupyter", "name", "tags", "collapsed", "scrolled", "execution", "format"])
_NAME_PATTERN = re.compile(r"^.+$")
_TAG_PATTERN = re.compile(r"^[^,]+$")


def _check_schema(cell: tuple[str, str, dict]) -> tuple[str, str, dict]:
    """nbformat validates each cell jupytext makes (nbformat.v4 schema): cell metadata it would
    refuse (a `tags` that is not a list of unique strings without commas, an empty `name`, a
    `jupyter` that is not a mapping...) makes jupytext fail, so the fast reader declines."""
    cell_type, _source, metadata = cell
    if _SCHEMA_KEYS.isdisjoint(metadata):
        return cell
    if "jupyter" in metadata and type(metadata["jupyter"]) is not dict:
        raise _Decline("cell metadata nbformat refuses")
    if "name" in metadata and not (isinstance(metadata["name"], str) and _NAME_PATTERN.search(metadata["name"])):
        raise _Decline("cell metadata nbformat refuses")
    if "tags" in metadata:
        tags = metadata["tags"]
        if type(tags) is not list or not all(isinstance(t, str) and _TAG_PATTERN.search(t) for t in tags) or len(set(tags)) != len(tags):
            raise _Decline("cell metadata nbformat refuses")
    if cell_type == "code":
        if "execution" in metadata:
            raise _Decline("execution metadata")
        if "collapsed" in metadata and not isinstance(metadata["collapsed"], bool):
            raise _Decline("cell metadata nbformat refuses")
        if "scrolled" in metadata and metadata["scrolled"] is not True and metadata["scrolled"] is not False and metadata["scrolled"] != "auto":
            raise _Decline("cell metadata nbformat refuses")
    if cell_type == "raw" and "format" in metadata and not isinstance(metadata["format"], str):
        raise _Decline("cell metadata nbformat refuses")
    return cell


def _cell_language(cell: tuple[str, str, dict]) -> tuple[str, str, dict]:
    """set_main_and_cell_language for a Python notebook: a cell in another Jupyter language gets
    its `%%language` magic back (and loses the `language` metadata)."""
    cell_type, source, metadata = cell
    if "language" not in metadata:
        return cell
    language = metadata["language"]
    if language == "python":
        metadata.pop("language")
    elif language.lower() != "python" and language in _JUPYTER_LANGUAGES:
        metadata.pop("language")
        if "magic_args" in metadata:
            source = f"%%{language} {metadata.pop('magic_args')}\n" + source
        else:
            source = f"%%{language}\n" + source
    return cell_type, source, metadata
