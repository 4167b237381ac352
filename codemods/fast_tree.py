"""libcst's nodes for a module, built from CPython's `ast` instead of libcst's parser.

`check` only reads a notebook: the analysis (`codemods/facts.py`) and the rules walk libcst nodes
and never print them back. libcst's parser costs ~15x CPython's `ast` on notebook code, more than
the rest of `check` together, so for a check the same node classes are built here from the `ast`
tree the join already made: only the fields the analysis can see are filled (whitespace, commas and
parentheses are libcst's defaults), without libcst's validation. One analysis serves both trees;
`tests/test_fast_tree.py` compares the findings of the two on every rule example and the corpus.

A `BuiltModule` knows where each node came from: `code` and `code_for_node` give the source text
(a built tree cannot print itself faithfully), and `position` gives libcst's `PositionProvider`
range. Anything this builder does not reproduce exactly (`match`, `except*`, type parameters,
unusual string literals) makes `build` return None, and the caller parses with libcst as before.
Never hand a built module to a codemod: it does not print back as its source.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import threading
import tokenize
import weakref
from collections.abc import Iterable

import libcst as cst


class Decline(Exception):
    """Something this builder would not reproduce exactly: parse with libcst instead."""


# ---------------------------------------------------------------------------------------------
# Making nodes without libcst's constructor (its validation costs more than the building)

_MAKERS: dict[type, object] = {}


def make(cls, **given):
    """A node of class `cls` with the `given` fields (sequences as tuples, as libcst's parser
    makes them) and libcst's defaults for the rest, without validation."""
    maker = _MAKERS.get(cls)
    if maker is None:
        maker = _MAKERS[cls] = _maker(cls)
    return maker(given)


def _maker(cls):
    """A function that makes a `cls` from a dict of fields: one straight-line setter per field
    (a loop over the fields cost as much as the rest of the building)."""
    env = {"new": object.__new__, "put": object.__setattr__, "cls": cls}
    lines = ["def maker(given):", "    node = new(cls)"]
    for i, f in enumerate(dataclasses.fields(cls)):
        if f.default is not dataclasses.MISSING:
            env[f"d{i}"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            env[f"d{i}"] = f.default_factory()
        else:
            env[f"d{i}"] = None  # required: always given
        if "Sequence" in str(f.type):
            lines.append(f"    v = given.get({f.name!r}, d{i})")
            lines.append(f"    put(node, {f.name!r}, tuple(v) if type(v) is list else v)")
        else:
            lines.append(f"    put(node, {f.name!r}, given.get({f.name!r}, d{i}))")
    lines.append("    return node")
    exec("\n".join(lines), env)  # noqa: S102 - our own code, from libcst's field names
    return env["maker"]


class BuiltModule(cst.Module):
    """A module built by `build`: its nodes' source spans, and the source itself."""

    __slots__ = ("__weakref__", "lines", "source", "spans")

    @property
    def code(self) -> str:
        return self.source

    def code_for_node(self, node: cst.CSTNode) -> str:
        span = self.spans.get(id(node))
        if span is None:
            return super().code_for_node(node)
        return _with_parentheses(self.lines, *span)

    def position(self, node: cst.CSTNode):
        """libcst's `PositionProvider` range of `node` (module lines, columns in characters), or None."""
        span = self.spans.get(id(node))
        if span is None:
            return None
        from libcst.metadata import CodePosition, CodeRange

        line, col, end_line, end_col = span
        if type(node) is cst.Tuple:
            try:
                wrapped = _parenthesized(self.lines, *span)
            except Decline:
                return None
            if wrapped:  # libcst's range leaves out a tuple's own parentheses
                col, end_col = col + 1, end_col - 1
        start = CodePosition(line, _chars(self.lines[line - 1], col))
        end = CodePosition(end_line, _chars(self.lines[end_line - 1], end_col))
        return CodeRange(start, end)


_LIVE: weakref.WeakSet[BuiltModule] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()  # the Lab server and the language server check in threads


def source_of(node: cst.CSTNode) -> str:
    """The code of `node` as its module shows it: the source text for a built node (a live built
    module holds every node it spans, so an id found there is that node), else libcst's printing."""
    with _LIVE_LOCK:
        modules = list(_LIVE)
    for module in modules:
        if id(node) in module.spans:
            return module.code_for_node(node)
    return cst.Module([]).code_for_node(node)


def _chars(line: str, byte_col: int) -> int:
    if line.isascii():
        return byte_col
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", "replace"))


def _segment(lines: list[str], line: int, col: int, end_line: int, end_col: int) -> str:
    if line == end_line:
        return lines[line - 1].encode("utf-8")[col:end_col].decode("utf-8")
    first = lines[line - 1].encode("utf-8")[col:].decode("utf-8")
    last = lines[end_line - 1].encode("utf-8")[:end_col].decode("utf-8")
    return "\n".join([first, *lines[line : end_line - 1], last])


_KEYWORDS_BEFORE_PARENTHESES = frozenset(
    ["and", "as", "assert", "await", "elif", "else", "for", "from", "if", "in", "is", "lambda", "not", "or", "return", "while", "with", "yield", "del"]
)


def _parenthesized(lines, line, col, end_line, end_col) -> bool:
    return _wrapped(_segment(lines, line, col, end_line, end_col))


def _wrapped(text: str) -> bool:
    """Is all of `text` inside one pair of parentheses (`(a, b)`, not `(a), (b)`)?"""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    try:
        tokens = tokenize.generate_tokens(io.StringIO(text).readline)
        depth = 0
        for tok in tokens:
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                if depth == 0:
                    return tok.end == (text.count("\n") + 1, len(text.rsplit("\n", 1)[-1]))
    except (tokenize.TokenError, SyntaxError):
        raise Decline("parentheses") from None
    return False


def _with_parentheses(lines: list[str], line: int, col: int, end_line: int, end_col: int) -> str:
    """The node's text with the parentheses that belong to it (libcst's `lpar`/`rpar`): a `(`
    before it (comments and line breaks between) that is not a call's, matched by a `)` after it."""
    start = (line, _chars(lines[line - 1], col))
    end = (end_line, _chars(lines[end_line - 1], end_col))
    while True:
        opening, closing = _code_before(lines, *start), _code_after(lines, *end)
        if opening is None or closing is None or lines[opening[0] - 1][opening[1]] != "(" or lines[closing[0] - 1][closing[1]] != ")":
            break
        head = _code_before(lines, *opening)
        if head is not None:
            text = lines[head[0] - 1][: head[1] + 1]
            word = re.search(r"[\w.]+$", text)
            if text.endswith((")", "]", "}", '"', "'")) or (word and word.group(0) not in _KEYWORDS_BEFORE_PARENTHESES):
                break  # f(x): the call's parentheses
        start, end = opening, (closing[0], closing[1] + 1)
    (line, col), (end_line, end_col) = start, end
    if line == end_line:
        return lines[line - 1][col:end_col]
    return "\n".join([lines[line - 1][col:], *lines[line : end_line - 1], lines[end_line - 1][:end_col]])


def _code_part(text: str) -> str:
    """A line without its comment (a `#` outside quotes)."""
    quote = None
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            return text[:i]
    return text


def _code_before(lines: list[str], line: int, col: int) -> tuple[int, int] | None:
    """(line, column) of the last code character before (line, col), over blank and comment lines."""
    text = lines[line - 1][:col].rstrip()
    while not text:
        line -= 1
        if line < 1:
            return None
        text = _code_part(lines[line - 1]).rstrip()
    return line, len(text) - 1


def _code_after(lines: list[str], line: int, col: int) -> tuple[int, int] | None:
    """(line, column) of the first code character at or after (line, col), over comments and line breaks."""
    rest = _code_part(lines[line - 1][col:])
    while not rest.strip():
        line += 1
        if line > len(lines):
            return None
        col, rest = 0, _code_part(lines[line - 1])
    return line, col + len(rest) - len(rest.lstrip())


# ---------------------------------------------------------------------------------------------
# The builder

_OPERATORS = {
    ast.Add: cst.Add, ast.Sub: cst.Subtract, ast.Mult: cst.Multiply, ast.MatMult: cst.MatrixMultiply,
    ast.Div: cst.Divide, ast.Mod: cst.Modulo, ast.Pow: cst.Power, ast.LShift: cst.LeftShift,
    ast.RShift: cst.RightShift, ast.BitOr: cst.BitOr, ast.BitXor: cst.BitXor, ast.BitAnd: cst.BitAnd,
    ast.FloorDiv: cst.FloorDivide,
}
_AUGMENTED = {
    ast.Add: cst.AddAssign, ast.Sub: cst.SubtractAssign, ast.Mult: cst.MultiplyAssign,
    ast.MatMult: cst.MatrixMultiplyAssign, ast.Div: cst.DivideAssign, ast.Mod: cst.ModuloAssign,
    ast.Pow: cst.PowerAssign, ast.LShift: cst.LeftShiftAssign, ast.RShift: cst.RightShiftAssign,
    ast.BitOr: cst.BitOrAssign, ast.BitXor: cst.BitXorAssign, ast.BitAnd: cst.BitAndAssign,
    ast.FloorDiv: cst.FloorDivideAssign,
}
_UNARY = {ast.UAdd: cst.Plus, ast.USub: cst.Minus, ast.Not: cst.Not, ast.Invert: cst.BitInvert}
_BOOLEAN = {ast.And: cst.And, ast.Or: cst.Or}
_COMPARE = {
    ast.Eq: cst.Equal, ast.NotEq: cst.NotEqual, ast.Lt: cst.LessThan, ast.LtE: cst.LessThanEqual,
    ast.Gt: cst.GreaterThan, ast.GtE: cst.GreaterThanEqual, ast.Is: cst.Is, ast.IsNot: cst.IsNot,
    ast.In: cst.In, ast.NotIn: cst.NotIn,
}
_SIMPLE_STATEMENTS = (
    ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Pass, ast.Break, ast.Continue,
    ast.Raise, ast.Assert, ast.Delete, ast.Global, ast.Nonlocal, ast.Import, ast.ImportFrom,
)
_STRING_PREFIX = re.compile(r"[rRbBuUfF]{0,2}('''|\"\"\"|'|\")")


class _Builder:
    def __init__(self, source: str):
        self.lines = source.split("\n")
        self.spans: dict[int, tuple[int, int, int, int]] = {}
        # Trees parsed apart from the module (a cell; a literal of an implicit string concatenation)
        # are placed by these: lines before the tree, and columns before its first line.
        self.line_shift = 0
        self.col_shift = 0
        self._ops: dict[type, cst.CSTNode] = {}
        self.previous_end = 0  # the module line where the last top-level statement ended

    def leading(self, stmt: ast.stmt) -> list:
        """libcst's `leading_lines` of a top-level statement, as far as the analysis reads them:
        the comment lines at column 0 (cell markers) between the previous statement and this one."""
        start = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", ()))]) + self.line_shift
        out = []
        for k in range(self.previous_end, start - 1):
            text = self.lines[k]
            if text.startswith("#"):
                out.append(make(cst.EmptyLine, comment=make(cst.Comment, value=text.rstrip())))
        return out

    # -- helpers -----------------------------------------------------------------------------

    def op(self, cls: type) -> cst.CSTNode:
        node = self._ops.get(cls)
        if node is None:
            node = self._ops[cls] = cls()
        return node

    def spanned(self, node: cst.CSTNode, src: ast.AST) -> cst.CSTNode:
        self.spans[id(node)] = self.spans_of(src)
        return node

    def text(self, src: ast.AST) -> str:
        return _segment(self.lines, *self.spans_of(src))

    def spans_of(self, src: ast.AST) -> tuple[int, int, int, int]:
        if not self.col_shift:
            shift = self.line_shift
            return src.lineno + shift, src.col_offset, src.end_lineno + shift, src.end_col_offset
        line = src.lineno + self.line_shift
        col = src.col_offset + (self.col_shift if src.lineno == 1 else 0)
        end_line = src.end_lineno + self.line_shift
        end_col = src.end_col_offset + (self.col_shift if src.end_lineno == 1 else 0)
        return line, col, end_line, end_col

    def name(self, value: str) -> cst.Name:
        return make(cst.Name, value=value)

    def dotted(self, text: str) -> cst.BaseExpression:
        parts = text.split(".")
        node: cst.BaseExpression = self.name(parts[0])
        for part in parts[1:]:
            node = make(cst.Attribute, value=node, attr=self.name(part))
        return node

    # -- expressions -------------------------------------------------------------------------

    def expr(self, node: ast.expr | None):
        if node is None:
            return None
        method = _EXPRESSIONS.get(type(node))
        if method is None:
            raise Decline(type(node).__name__)
        built = method(self, node)
        self.spans[id(built)] = self.spans_of(node)
        return built

    def e_Name(self, node: ast.Name):
        return make(cst.Name, value=node.id)

    def e_Constant(self, node: ast.Constant):
        value = node.value
        if value is None or value is True or value is False:
            return make(cst.Name, value=repr(value))
        if value is Ellipsis:
            return make(cst.Ellipsis)
        if isinstance(value, (str, bytes)):
            return self.string(node)
        text = self.text(node)
        if isinstance(value, complex):
            return make(cst.Imaginary, value=text)
        if isinstance(value, float):
            return make(cst.Float, value=text)
        return make(cst.Integer, value=text)

    def e_JoinedStr(self, node: ast.JoinedStr):
        return self.string(node)

    def string(self, node: ast.expr):
        text = self.text(node)
        pieces = _string_pieces(text)
        if pieces is None:
            raise Decline("string literal")
        if len(pieces) == 1:
            return self.one_string(node, text)
        # Implicit concatenation: libcst's ConcatenatedString(left=first, right=the rest).
        line, col, _, _ = self.spans_of(node)
        built = []
        for (row, column), piece in pieces:
            text_line = self.lines[line + row - 1]
            chars = (_chars(text_line, col) if row == 0 else 0) + column  # the piece's column, in characters
            built.append(self.piece(piece, line + row, len(text_line[:chars].encode("utf-8"))))
        out = built[-1]
        for left in reversed(built[:-1]):
            out = make(cst.ConcatenatedString, left=left, right=out)
        return out

    def piece(self, text: str, line: int, col: int):
        """One literal of an implicit concatenation, parsed on its own and placed at (line, col)."""
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError:
            raise Decline("string piece") from None
        saved = self.line_shift, self.col_shift
        self.line_shift, self.col_shift = line - 1, col
        try:
            return self.spanned(self.one_string(tree, text), tree)
        finally:
            self.line_shift, self.col_shift = saved

    def one_string(self, node: ast.expr, text: str):
        prefix = _STRING_PREFIX.match(text)
        if prefix is None:
            raise Decline("string prefix")
        if "f" not in text[: prefix.start(1)].lower():
            return make(cst.SimpleString, value=text)
        if not isinstance(node, ast.JoinedStr):
            raise Decline("f-string")
        quote = prefix.group(1)
        body = text[prefix.end() : len(text) - len(quote)]
        if re.search(r"=\s*[}!:]", body):  # `f"{x=}"`: ast folds the `x=` into the text
            raise Decline("f-string self-documenting expression")
        literals = _raw_literals(body)  # the text between replacement fields, as written
        fields = [v for v in node.values if isinstance(v, ast.FormattedValue)]
        if literals is None or len(literals) != len(fields) + 1:
            raise Decline("f-string parts")
        parts = []
        for i, literal in enumerate(literals):
            if literal:
                parts.append(make(cst.FormattedStringText, value=literal))
            if i < len(fields):
                parts.append(self.formatted(fields[i]))
        return make(cst.FormattedString, parts=parts, start=text[: prefix.end()], end=quote)

    def formatted(self, value: ast.FormattedValue):
        spec = None
        if value.format_spec is not None:
            spec = []
            for part in value.format_spec.values:
                if isinstance(part, ast.Constant):
                    spec.append(make(cst.FormattedStringText, value=str(part.value)))
                elif isinstance(part, ast.FormattedValue):
                    spec.append(self.formatted(part))
                else:
                    raise Decline("format spec")
        conversion = None if value.conversion == -1 else chr(value.conversion)
        return make(cst.FormattedStringExpression, expression=self.expr(value.value), conversion=conversion, format_spec=spec)

    def e_Attribute(self, node: ast.Attribute):
        return make(cst.Attribute, value=self.expr(node.value), attr=self.name(node.attr))

    def e_Call(self, node: ast.Call):
        args = [(a.lineno, a.col_offset, self.positional(a)) for a in node.args]
        args += [(k.lineno, k.col_offset, self.keyword(k)) for k in node.keywords]
        if node.keywords and node.args:
            args.sort(key=lambda a: (a[0], a[1]))
        return make(cst.Call, func=self.expr(node.func), args=[a for _, _, a in args])

    def positional(self, node: ast.expr):
        if isinstance(node, ast.Starred):
            return self.spanned(make(cst.Arg, value=self.expr(node.value), star="*"), node)
        return self.spanned(make(cst.Arg, value=self.expr(node)), node)

    def keyword(self, node: ast.keyword):
        if node.arg is None:
            arg = make(cst.Arg, value=self.expr(node.value), star="**")
        else:
            arg = make(cst.Arg, value=self.expr(node.value), keyword=self.name(node.arg))
        return self.spanned(arg, node)

    def e_BinOp(self, node: ast.BinOp):
        return make(cst.BinaryOperation, left=self.expr(node.left), operator=self.op(_OPERATORS[type(node.op)]), right=self.expr(node.right))

    def e_BoolOp(self, node: ast.BoolOp):
        operator = self.op(_BOOLEAN[type(node.op)])
        out = self.expr(node.values[0])
        for value in node.values[1:]:
            out = make(cst.BooleanOperation, left=out, operator=operator, right=self.expr(value))
        return out

    def e_UnaryOp(self, node: ast.UnaryOp):
        return make(cst.UnaryOperation, operator=self.op(_UNARY[type(node.op)]), expression=self.expr(node.operand))

    def e_Compare(self, node: ast.Compare):
        targets = [
            make(cst.ComparisonTarget, operator=self.op(_COMPARE[type(o)]), comparator=self.expr(c))
            for o, c in zip(node.ops, node.comparators)
        ]
        return make(cst.Comparison, left=self.expr(node.left), comparisons=targets)

    def e_IfExp(self, node: ast.IfExp):
        return make(cst.IfExp, test=self.expr(node.test), body=self.expr(node.body), orelse=self.expr(node.orelse))

    def e_Lambda(self, node: ast.Lambda):
        return make(cst.Lambda, params=self.parameters(node.args), body=self.expr(node.body))

    def e_NamedExpr(self, node: ast.NamedExpr):
        return make(cst.NamedExpr, target=self.expr(node.target), value=self.expr(node.value))

    def e_Await(self, node: ast.Await):
        return make(cst.Await, expression=self.expr(node.value))

    def e_Yield(self, node: ast.Yield):
        return make(cst.Yield, value=self.expr(node.value))

    def e_YieldFrom(self, node: ast.YieldFrom):
        return make(cst.Yield, value=make(cst.From, item=self.expr(node.value)))

    def e_Starred(self, node: ast.Starred):  # only where an element is expected; see elements()
        raise Decline("starred expression")

    def elements(self, items: list[ast.expr]) -> list:
        out = []
        for item in items:
            if isinstance(item, ast.Starred):
                out.append(self.spanned(make(cst.StarredElement, value=self.expr(item.value)), item))
            else:
                out.append(make(cst.Element, value=self.expr(item)))
        return out

    def e_Tuple(self, node: ast.Tuple):
        return make(cst.Tuple, elements=self.elements(node.elts))

    def e_List(self, node: ast.List):
        return make(cst.List, elements=self.elements(node.elts))

    def e_Set(self, node: ast.Set):
        return make(cst.Set, elements=self.elements(node.elts))

    def e_Dict(self, node: ast.Dict):
        elements = []
        for key, value in zip(node.keys, node.values):
            if key is None:
                elements.append(make(cst.StarredDictElement, value=self.expr(value)))
            else:
                elements.append(make(cst.DictElement, key=self.expr(key), value=self.expr(value)))
        return make(cst.Dict, elements=elements)

    def comprehension(self, generators: list[ast.comprehension]):
        inner = None
        for gen in reversed(generators):
            inner = make(
                cst.CompFor,
                target=self.expr(gen.target),
                iter=self.expr(gen.iter),
                ifs=[make(cst.CompIf, test=self.expr(t)) for t in gen.ifs],
                inner_for_in=inner,
                asynchronous=make(cst.Asynchronous) if gen.is_async else None,
            )
        return inner

    def e_ListComp(self, node: ast.ListComp):
        elt = self.expr(node.elt)
        return make(cst.ListComp, elt=elt, for_in=self.comprehension(node.generators))

    def e_SetComp(self, node: ast.SetComp):
        elt = self.expr(node.elt)
        return make(cst.SetComp, elt=elt, for_in=self.comprehension(node.generators))

    def e_GeneratorExp(self, node: ast.GeneratorExp):
        elt = self.expr(node.elt)
        return make(cst.GeneratorExp, elt=elt, for_in=self.comprehension(node.generators))

    def e_DictComp(self, node: ast.DictComp):
        key, value = self.expr(node.key), self.expr(node.value)
        return make(cst.DictComp, key=key, value=value, for_in=self.comprehension(node.generators))

    def e_Subscript(self, node: ast.Subscript):
        value = self.expr(node.value)
        index = node.slice
        if isinstance(index, ast.Tuple) and not _wrapped(self.text(index)):
            items = index.elts  # x[a, b]: one element each
        else:
            items = [index]
        elements = []
        for item in items:
            if isinstance(item, ast.Slice):
                inner = self.spanned(make(cst.Slice, lower=self.expr(item.lower), upper=self.expr(item.upper), step=self.expr(item.step)), item)
            elif isinstance(item, ast.Starred):
                raise Decline("starred subscript")
            else:
                inner = make(cst.Index, value=self.expr(item))
            elements.append(make(cst.SubscriptElement, slice=inner))
        return make(cst.Subscript, value=value, slice=elements)

    def e_Slice(self, node: ast.Slice):  # a slice outside a subscript's element list
        raise Decline("slice")

    # -- parameters --------------------------------------------------------------------------

    def param(self, arg: ast.arg, default: ast.expr | None = None, star: str = ""):
        annotation = make(cst.Annotation, annotation=self.expr(arg.annotation)) if arg.annotation is not None else None
        node = make(cst.Param, name=self.name(arg.arg), annotation=annotation, default=self.expr(default), star=star)
        return self.spanned(node, arg)

    def parameters(self, args: ast.arguments):
        positional = [*args.posonlyargs, *args.args]
        defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        params = [self.param(a, d) for a, d in zip(positional, defaults)]
        posonly, params = params[: len(args.posonlyargs)], params[len(args.posonlyargs) :]
        kwonly = [self.param(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
        if args.vararg is not None:
            star_arg = self.param(args.vararg, star="*")
        elif kwonly:
            star_arg = make(cst.ParamStar)
        else:
            star_arg = cst.MaybeSentinel.DEFAULT
        star_kwarg = self.param(args.kwarg, star="**") if args.kwarg is not None else None
        return make(
            cst.Parameters, params=params, star_arg=star_arg, kwonly_params=kwonly, star_kwarg=star_kwarg,
            posonly_params=posonly, posonly_ind=make(cst.ParamSlash) if posonly else cst.MaybeSentinel.DEFAULT,
        )

    # -- statements --------------------------------------------------------------------------

    def block(self, body: list[ast.stmt]):
        """An indented block, or the statements after the colon on the header's own line."""
        first = body[0]
        line = self.lines[first.lineno - 1 + self.line_shift]
        if line.encode("utf-8")[: first.col_offset].strip():  # `if x: y`
            if not all(isinstance(s, _SIMPLE_STATEMENTS) for s in body):
                raise Decline("suite")
            return make(cst.SimpleStatementSuite, body=[self.small(s) for s in body])
        return make(cst.IndentedBlock, body=self.statements(body))

    def statements(self, body: list[ast.stmt], leading=None) -> list:
        out: list = []
        line_of_last_small = -1
        for stmt in body:
            if isinstance(stmt, _SIMPLE_STATEMENTS):
                if out and isinstance(out[-1], cst.SimpleStatementLine) and stmt.lineno == line_of_last_small:
                    object.__setattr__(out[-1], "body", (*out[-1].body, self.small(stmt)))  # `a = 1; b = 2`
                else:
                    lines = leading(stmt) if leading is not None else []
                    out.append(make(cst.SimpleStatementLine, body=[self.small(stmt)], leading_lines=lines))
                line_of_last_small = stmt.end_lineno
                if leading is not None:
                    self.previous_end = stmt.end_lineno + self.line_shift
                continue
            method = getattr(self, "s_" + type(stmt).__name__, None)
            if method is None:
                raise Decline(type(stmt).__name__)
            node = method(stmt)
            if leading is not None:
                object.__setattr__(node, "leading_lines", leading(stmt))
            self.spanned(node, stmt)
            out.append(node)
            line_of_last_small = -1
            if leading is not None:
                self.previous_end = stmt.end_lineno + self.line_shift
        return out

    def small(self, stmt: ast.stmt):
        method = getattr(self, "t_" + type(stmt).__name__)
        return self.spanned(method(stmt), stmt)

    def t_Expr(self, s):
        return make(cst.Expr, value=self.expr(s.value))

    def t_Assign(self, s):
        targets = [make(cst.AssignTarget, target=self.expr(t)) for t in s.targets]
        return make(cst.Assign, targets=targets, value=self.expr(s.value))

    def t_AugAssign(self, s):
        return make(cst.AugAssign, target=self.expr(s.target), operator=self.op(_AUGMENTED[type(s.op)]), value=self.expr(s.value))

    def t_AnnAssign(self, s):
        annotation = make(cst.Annotation, annotation=self.expr(s.annotation))
        return make(cst.AnnAssign, target=self.expr(s.target), annotation=annotation, value=self.expr(s.value))

    def t_Return(self, s):
        return make(cst.Return, value=self.expr(s.value))

    def t_Pass(self, s):
        return make(cst.Pass)

    def t_Break(self, s):
        return make(cst.Break)

    def t_Continue(self, s):
        return make(cst.Continue)

    def t_Raise(self, s):
        cause = make(cst.From, item=self.expr(s.cause)) if s.cause is not None else None
        return make(cst.Raise, exc=self.expr(s.exc), cause=cause)

    def t_Assert(self, s):
        return make(cst.Assert, test=self.expr(s.test), msg=self.expr(s.msg))

    def t_Delete(self, s):
        if len(s.targets) == 1:
            target = self.expr(s.targets[0])
        else:
            target = make(cst.Tuple, elements=[make(cst.Element, value=self.expr(t)) for t in s.targets])
        return make(cst.Del, target=target)

    def t_Global(self, s):
        return make(cst.Global, names=[make(cst.NameItem, name=self.name(n)) for n in s.names])

    def t_Nonlocal(self, s):
        return make(cst.Nonlocal, names=[make(cst.NameItem, name=self.name(n)) for n in s.names])

    def alias(self, alias: ast.alias):
        asname = make(cst.AsName, name=self.name(alias.asname)) if alias.asname else None
        return make(cst.ImportAlias, name=self.dotted(alias.name), asname=asname)

    def t_Import(self, s):
        return make(cst.Import, names=[self.alias(a) for a in s.names])

    def t_ImportFrom(self, s):
        if len(s.names) == 1 and s.names[0].name == "*":
            names = make(cst.ImportStar)
        else:
            names = [self.alias(a) for a in s.names]
        module = self.dotted(s.module) if s.module else None
        return make(cst.ImportFrom, module=module, names=names, relative=[make(cst.Dot) for _ in range(s.level or 0)])

    def orelse(self, body: list[ast.stmt], elif_allowed: bool = False):
        if not body:
            return None
        first = body[0]
        if elif_allowed and len(body) == 1 and isinstance(first, ast.If):
            line = self.lines[first.lineno - 1 + self.line_shift].encode("utf-8")
            if line[first.col_offset : first.col_offset + 4] == b"elif":
                return self.spanned(self.s_If(first), first)
        return make(cst.Else, body=self.block(body))

    def s_If(self, s):
        return make(cst.If, test=self.expr(s.test), body=self.block(s.body), orelse=self.orelse(s.orelse, elif_allowed=True))

    def s_For(self, s, asynchronous=False):
        return make(
            cst.For, target=self.expr(s.target), iter=self.expr(s.iter), body=self.block(s.body),
            orelse=self.orelse(s.orelse), asynchronous=make(cst.Asynchronous) if asynchronous else None,
        )

    def s_AsyncFor(self, s):
        return self.s_For(s, asynchronous=True)

    def s_While(self, s):
        return make(cst.While, test=self.expr(s.test), body=self.block(s.body), orelse=self.orelse(s.orelse))

    def s_With(self, s, asynchronous=False):
        items = [
            make(cst.WithItem, item=self.expr(i.context_expr),
                 asname=make(cst.AsName, name=self.expr(i.optional_vars)) if i.optional_vars is not None else None)
            for i in s.items
        ]
        return make(cst.With, items=items, body=self.block(s.body), asynchronous=make(cst.Asynchronous) if asynchronous else None)

    def s_AsyncWith(self, s):
        return self.s_With(s, asynchronous=True)

    def s_Try(self, s):
        handlers = [
            self.spanned(make(cst.ExceptHandler, body=self.block(h.body), type=self.expr(h.type),
                              name=make(cst.AsName, name=self.name(h.name)) if h.name else None), h)
            for h in s.handlers
        ]
        final = make(cst.Finally, body=self.block(s.finalbody)) if s.finalbody else None
        return make(cst.Try, body=self.block(s.body), handlers=handlers, orelse=self.orelse(s.orelse), finalbody=final)

    def decorators(self, s) -> list:
        return [make(cst.Decorator, decorator=self.expr(d)) for d in s.decorator_list]

    def s_FunctionDef(self, s, asynchronous=False):
        if getattr(s, "type_params", None):
            raise Decline("type parameters")
        returns = make(cst.Annotation, annotation=self.expr(s.returns)) if s.returns is not None else None
        return make(
            cst.FunctionDef, name=self.name(s.name), params=self.parameters(s.args), body=self.block(s.body),
            decorators=self.decorators(s), returns=returns, asynchronous=make(cst.Asynchronous) if asynchronous else None,
        )

    def s_AsyncFunctionDef(self, s):
        return self.s_FunctionDef(s, asynchronous=True)

    def s_ClassDef(self, s):
        if getattr(s, "type_params", None):
            raise Decline("type parameters")
        bases = [self.positional(b) for b in s.bases]
        keywords = [self.keyword(k) for k in s.keywords]
        return make(cst.ClassDef, name=self.name(s.name), body=self.block(s.body), bases=bases, keywords=keywords,
                    decorators=self.decorators(s))


_EXPRESSIONS = {
    getattr(ast, name[2:]): method for name, method in vars(_Builder).items() if name.startswith("e_") and hasattr(ast, name[2:])
}


def _string_pieces(text: str):
    """[((row, column), literal)] for each literal of a string expression's text (an implicit
    concatenation has several): row is relative to the text's first line, column in characters
    from the text's start on row 0, else from the line's start. None when not sure."""
    prefix = _STRING_PREFIX.match(text)
    if prefix is not None:  # one literal, the usual case: it ends where the text ends
        quote = prefix.group(1)
        end = _literal_end(text, prefix.end(), quote)
        if end == len(text):
            return [((0, 0), text)]
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    pieces = []
    for tok in tokens:
        if tok.type == tokenize.STRING:
            pieces.append(((tok.start[0] - 1, tok.start[1]), tok.string))
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT):
            return None
    return pieces or None


def _literal_end(text: str, start: int, quote: str) -> int:
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if text.startswith(quote, i):
            return i + len(quote)
        i += 1
    return -1


def _raw_literals(body: str) -> list[str] | None:
    """An f-string's literal texts around its replacement fields, as written (`{{` kept): one more
    than there are fields. None when its braces do not balance."""
    out, i, n, literal_start = [], 0, len(body), 0
    while i < n:
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if body.startswith("{{", i) or body.startswith("}}", i):
            i += 2
            continue
        if c == "{":
            out.append(body[literal_start:i])
            i = _field_end(body, i)
            if i < 0:
                return None
            literal_start = i
            continue
        i += 1
    out.append(body[literal_start:])
    return out


def _field_end(body: str, i: int) -> int:
    """The index after the `}` that closes the replacement field opened at `body[i]`, or -1."""
    depth, quote = 0, None
    while i < len(body):
        c = body[i]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


# ---------------------------------------------------------------------------------------------
# Entry point

def build(source: str, segments: Iterable[tuple[int, ast.Module]] | None = None) -> BuiltModule | None:
    """libcst nodes for `source`, or None when the builder is not sure to reproduce libcst's tree
    (then parse with libcst). `segments`: `source`'s `ast`, already parsed in pieces, as
    (lines before the piece, its tree) in order (a joined notebook's cells); default: parse it."""
    try:
        if segments is None:
            segments = [(0, ast.parse(source))]
        builder = _Builder(source)
        body: list = []
        for offset, tree in segments:
            builder.line_shift = offset
            body += builder.statements(tree.body, builder.leading)
    except (Decline, RecursionError, KeyError, IndexError, UnicodeError, ValueError, SyntaxError):
        return None
    module = make(BuiltModule, body=body)
    object.__setattr__(module, "source", source)
    object.__setattr__(module, "lines", builder.lines)
    object.__setattr__(module, "spans", builder.spans)
    with _LIVE_LOCK:
        _LIVE.add(module)
    return module
