"""What a node holds, kept with the node while the fixer runs.

The fixer analyses and prints the module again after each fix, and a codemod keeps every node it
does not change (the same objects). Within `keeping_structure`, results that depend on a node
alone (what a statement runs, the assignments in a body, a top-level statement's text) are kept
by the node's identity, so only what a fix changed is walked or printed again. Outside the block
nothing is kept. Readers never change what they get back.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, TypeVar

import libcst as cst
from libcst._nodes.internal import CodegenState

_T = TypeVar("_T")
_tables = threading.local()  # .tables: table name -> {id(node): (node, result)}, inside the block


@contextlib.contextmanager
def keeping_structure():
    outer = getattr(_tables, "tables", None)
    if outer is None:
        _tables.tables = {}
    try:
        yield
    finally:
        _tables.tables = outer


def kept(table: str, node: cst.CSTNode, work: Callable[[cst.CSTNode], _T]) -> _T:
    """`work(node)`, kept with the node inside `keeping_structure` (`table` names the kind of result)."""
    tables = getattr(_tables, "tables", None)
    if tables is None:
        return work(node)
    memo = tables.setdefault(table, {})
    hit = memo.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    result = work(node)
    memo[id(node)] = (node, result)
    return result


def module_code(module: cst.Module) -> str:
    """`module.code`: the same text, with each top-level statement's text kept (the last one is
    printed each time: whether the module's final newline is dropped depends on its last token)."""
    if getattr(_tables, "tables", None) is None:
        return module.code
    state = CodegenState(default_indent=module.default_indent, default_newline=module.default_newline)
    for line in module.header:
        line._codegen(state)
    body = module.body
    table = f"code {module.default_indent!r} {module.default_newline!r}"
    for stmt in body[:-1]:
        state.tokens.append(kept(table, stmt, module.code_for_node))
    for node in (*body[-1:], *module.footer):
        node._codegen(state)
    if module.has_trailing_newline:
        if len(state.tokens) == 0:
            state.add_token(state.default_newline)
    else:
        state.pop_trailing_newline()
    return "".join(state.tokens)


def statement_code(module: cst.Module, stmt: cst.CSTNode) -> str:
    """`module.code_for_node(stmt)` for a top-level statement, kept inside `keeping_structure`."""
    return kept(f"code {module.default_indent!r} {module.default_newline!r}", stmt, module.code_for_node)
