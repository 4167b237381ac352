"""`codemods.fast_tree` builds libcst's nodes from CPython's `ast` for `check`; the analysis and the
rules are one code that reads either tree. These tests hold the two trees to each other: node for
node (every field the analysis can read), position for position, and finding for finding on every
rule example, the goldens and the corpus."""

from __future__ import annotations

import dataclasses
import glob
import os

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, PositionProvider

from codemods.fast_tree import BuiltModule, build, source_of
from codemods.rules import ALL_RULES
from nbrefactor.checker import _RELEVANT, check_notebook
from nbrefactor.config import Selection
from nbrefactor.discover import read_script
from nbrefactor.notebook.join import join
from nbrefactor.notebook.model import notebook_from_cells, read_notebook, split_example

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(ROOT, "..", "shared", "corpus")
EVERY_RULE = Selection(select=tuple(r.code for r in ALL_RULES))

# Fields the builder leaves at libcst's defaults: layout, never read by the analysis.
_LAYOUT = {"lpar", "rpar", "comma", "equal", "semicolon", "dot", "colon", "whitespace", "indent", "header",
           "footer", "newline", "trailing_whitespace", "lines_after_decorators", "lbracket", "rbracket",
           "lbrace", "rbrace", "start", "end", "default_indent", "default_newline", "encoding",
           "has_trailing_newline", "leading_lines", "asynchronous", "second_colon"}


def _same(fast, parsed, path="module") -> list[str]:
    """Where the built tree differs from libcst's, in what the analysis can see."""
    if type(fast) is not type(parsed) and not (isinstance(fast, BuiltModule) and type(parsed) is cst.Module):
        return [f"{path}: {type(fast).__name__} != {type(parsed).__name__}"]
    if isinstance(parsed, (list, tuple)):
        if len(fast) != len(parsed):
            return [f"{path}: {len(fast)} items != {len(parsed)}"]
        return [d for i, (a, b) in enumerate(zip(fast, parsed)) for d in _same(a, b, f"{path}[{i}]")]
    if not isinstance(parsed, cst.CSTNode):
        return [] if fast == parsed else [f"{path}: {fast!r} != {parsed!r}"]
    out = []
    for f in dataclasses.fields(parsed):
        if f.name in _LAYOUT or f.name.startswith("whitespace"):
            continue
        a, b = getattr(fast, f.name), getattr(parsed, f.name)
        if isinstance(b, cst.MaybeSentinel) or isinstance(a, cst.MaybeSentinel):
            if type(a) is not type(b) and not (isinstance(b, cst.MaybeSentinel) and a is None):
                out.append(f"{path}.{f.name}: {a!r} != {b!r}")
            continue
        out += _same(a, b, f"{path}.{f.name}")
    return out


def _cells(text: str) -> str:
    return "".join(f"# %% nbrefactor-cell {i}\n{c.strip()}\n" for i, c in enumerate(text.split("# %%\n")))


SYNTAX = [
    "x = 1; y = 2\nif x: y = 3; z = 4\nelif y:\n    pass\nelse:\n    del x, y\n",
    "def f(a, /, b: int = 2, *args, c, d=4, **kw) -> 'T':\n    return a\n",
    "def g(*, k):\n    global q\n    q = lambda *a, **k: (a, k)\n",
    "@dec(1)\n@other\nclass C(Base, *bases, metaclass=M):\n    x: int\n    y: int = 2\n",
    "async def h():\n    async with a as (b, c), d:\n        async for e in f:\n            await g\n    return [i async for i in j]\n",
    "s = 'a' 'b' \"c\"\nt = (f'{x!r:>{w}}' 'plain'\n     'next')\nu = b'x' rb'\\\\y'\nv = f'{{lit}} {a + b} tail'\n",
    "print(*a, k=1, **b)\nf(x, *y, z=2, **w)\nx[a, b]; x[(a, b)]; x[1:2, ::3]; x[a:b]\n",
    "a = b = c\na += 1\nx = y if z else w\nn = not a and b or c\nm = -a ** 2 @ b\n",
    "d = {1: 2, **e}\ns = {1, *t}\nl = [*a, b]\nc = {k: v for k, v in d.items() if k}\ng = (x for x in y for z in x)\n",
    "try:\n    pass\nexcept (A, B) as e:\n    raise C from e\nexcept D:\n    pass\nelse:\n    pass\nfinally:\n    assert x, 'msg'\n",
    "while x:\n    break\nelse:\n    continue_ = 1\nfor i in range(3):\n    continue\nelse:\n    pass\n",
    "import a.b.c as d, e\nfrom . import f\nfrom ..g.h import (i as j, k)\nfrom m import *\n",
    "x = 0x1F + 1_000 + 2.5e3 + 3j + True + None\nif (n := len(a)) > 3: pass\n",
    "with open(p) as fh: data = fh.read()\nclass D: pass\ndef e(): return 1\n",
    "# %%\n%matplotlib inline\nx = 1\n# %%\n!pip install lightning\nimport lightning as L\n",
    "def outer():\n    def inner():\n        nonlocal_value = 1\n        return nonlocal_value\n    yield inner\n    yield from range(3)\n",
    "x = (  # comment\n    a  # another\n    .b()\n)\nif x:\n    pass\n# %%\n\n\n# a comment at column 0\ny = x\n",
    "x = f(\"é\" \"ü{a}\" f'{b}'\n      \"z\")  # pieces after non-ASCII text\nname = 'ä'; y = g(name, k='ö')\n",
]


@pytest.mark.parametrize("text", SYNTAX, ids=range(len(SYNTAX)))
def test_built_tree_is_libcsts_tree(text):
    nb = notebook_from_cells(split_example(text))
    joined = join(nb, for_reading=True)
    built = build(joined.code, [(c.first_line - 1, c.tree) for c in joined.cells if c.tree is not None])
    assert built is not None
    parsed = cst.parse_module(joined.code)
    assert _same(built, parsed) == []
    _same_positions(built, parsed)


def _same_positions(built: BuiltModule, parsed: cst.Module) -> None:
    """Every node the builder spans sits where libcst's PositionProvider puts its twin, and shows
    the text libcst prints for it."""
    positions = MetadataWrapper(parsed, unsafe_skip_copy=True).resolve(PositionProvider)
    twins: list[tuple[cst.CSTNode, cst.CSTNode]] = []

    def pair(a, b):
        if isinstance(b, cst.CSTNode) and type(a) is type(b) or isinstance(a, BuiltModule):
            twins.append((a, b))
            for f in dataclasses.fields(b):
                if f.name not in _LAYOUT and not f.name.startswith("whitespace"):
                    pair(getattr(a, f.name), getattr(b, f.name))
        elif isinstance(b, (list, tuple)) and len(a) == len(b):
            for x, y in zip(a, b):
                pair(x, y)

    pair(built, parsed)
    checked = 0
    for a, b in twins:
        if isinstance(b, (cst.Call, cst.Attribute, cst.Name, cst.SimpleString, cst.Import, cst.ImportFrom, cst.Arg)):
            span = built.position(a)
            if span is None:
                continue
            assert (span.start, span.end) == (positions[b].start, positions[b].end), cst.Module([]).code_for_node(b)
            if not isinstance(b, (cst.Import, cst.ImportFrom, cst.Arg)):
                assert built.code_for_node(a) == parsed.code_for_node(b)
                assert source_of(a) == parsed.code_for_node(b)
            checked += 1
    assert checked


def test_what_the_builder_would_not_reproduce_goes_to_libcst():
    for text in ("match x:\n    case 1:\n        pass\n", "x = f'{y=}'\n", "try:\n    pass\nexcept* E:\n    pass\n"):
        assert build(text) is None, text
        nb = notebook_from_cells([("code", text + "import lightning as L\ntrainer = L.Trainer(strategy='ddp')\n")])
        assert check_notebook(nb, EVERY_RULE, for_reading=True).diagnostics == check_notebook(nb, EVERY_RULE).diagnostics


def test_a_check_for_reading_is_never_handed_to_a_rewrite():
    from nbrefactor.checker import reusing_checks

    nb = notebook_from_cells([("code", "import lightning as L\ntrainer = L.Trainer(devices='auto', strategy='ddp_notebook')\n")])
    fast = check_notebook(nb, EVERY_RULE, for_reading=True)
    assert isinstance(fast.module, BuiltModule)
    with reusing_checks(fast, selection=EVERY_RULE):
        again = check_notebook(nb, EVERY_RULE)
    assert not isinstance(again.module, BuiltModule)
    assert again.diagnostics == fast.diagnostics


def _findings(nb) -> tuple:
    fast = check_notebook(nb, EVERY_RULE, for_reading=True)
    full = check_notebook(nb, EVERY_RULE)
    return fast.diagnostics, full.diagnostics, fast.warnings, full.warnings


EXAMPLES = [
    pytest.param(ex if isinstance(ex, str) else ex.code, "notebook" if isinstance(ex, str) else ex.context, id=f"{r.code}-{i}")
    for r in ALL_RULES for i, ex in enumerate([*r.VALID, *r.INVALID])
]


@pytest.mark.parametrize("code, context", EXAMPLES)
def test_rule_examples_find_the_same_on_both_trees(code, context):
    if context == "script":
        nb = read_script("<example>.py", code.lstrip("\n").encode("utf-8"))
    else:
        nb = notebook_from_cells(split_example(code))
    fast, full, fast_warnings, full_warnings = _findings(nb)
    assert fast == full
    assert fast_warnings == full_warnings


def _real_notebooks() -> list[str]:
    found = glob.glob(os.path.join(CORPUS, "**", "*.ipynb"), recursive=True)
    found += glob.glob(os.path.join(CORPUS, "**", "*.py"), recursive=True)
    found += glob.glob(os.path.join(ROOT, "golden", "**", "*.ipynb"), recursive=True)
    found += glob.glob(os.path.join(ROOT, "examples", "**", "*.ipynb"), recursive=True)
    return sorted(found)


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="the corpus is not here")
def test_corpus_and_goldens_find_the_same_on_both_trees():
    compared = built = 0
    for path in _real_notebooks():
        try:
            nb = read_notebook(path)
        except Exception:  # noqa: BLE001 - not a notebook (an image named .ipynb): nothing to compare
            continue
        if not any(_RELEVANT.search(c.source) for c in nb.code_cells):
            continue
        fast, full, fast_warnings, full_warnings = _findings(nb)
        assert fast == full, path
        assert fast_warnings == full_warnings, path
        compared += 1
        joined = join(nb, for_reading=True)
        module = build(joined.code, [(c.first_line - 1, c.tree) for c in joined.cells if c.tree is not None])
        if module is not None:
            built += 1
            parsed = cst.parse_module(joined.code)
            assert _same(module, parsed) == [], path
    assert compared >= 40 and built >= compared - 3, (compared, built)


def test_classes_the_analysis_tests_by_identity_have_no_subclasses():
    """The analysis tests these libcst classes with `type(node) is cst.X` (an ABC's isinstance per
    node was a fifth of a check); a libcst that subclassed one would make those tests miss nodes."""
    import re

    used = set()
    for path in glob.glob(os.path.join(ROOT, "codemods", "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            used |= set(re.findall(r"\b(?:type\([^)]*\)|t|kind) is cst\.([A-Za-z]+)", f.read()))
    assert {"Name", "Call", "Attribute", "Assign"} <= used
    for name in sorted(used):
        assert getattr(cst, name).__subclasses__() == [], name
