"""CUDA placement in code that runs in the training processes, onto the process's own device.

Code that a fix moves into `train(fabric)` or into a LightningModule hook runs in each training
process, which the launcher has already given its device (`fabric.device`, `self.device`). Written
the way Lightning recommends, that code names that device instead of CUDA, so the notebook runs on
the CPU, on one GPU or on N:

    x = torch.tensor(1).cuda()                 ->  x = torch.tensor(1).to(fabric.device)
    batch = batch.to("cuda:0", non_blocking=True) -> batch = batch.to(fabric.device, non_blocking=True)
    w = torch.zeros(3, device="cuda")          ->  w = torch.zeros(3, device=fabric.device)
    device = torch.device("cuda")              ->  device = fabric.device
    x.to(device)   # device = torch.device("cuda") at top level  ->  x.to(fabric.device)

What is not CUDA placement stays as written: `.to(torch.float16)`, `.to("cpu")`, `.to(other)`,
`torch.cuda.empty_cache()`, a comparison with `torch.device("cuda")`, a string `device = "cuda"`
(other code may need the string; its placement uses are rewritten instead).

Use one `ProcessDevice` for all the statements that move into one function, in their order: it
remembers which names the moved code binds to a device, and collects what it rewrote for the fix's
change message (`summary()`).
"""

from __future__ import annotations

from typing import Mapping

import libcst as cst

from codemods import names as N
from codemods.facts import NotebookFacts, Value, qualified_name
from codemods.walk import walk

# Tensor methods that take `device=` (besides `.to`).
_TENSOR_DEVICE_METHODS = ("new_tensor", "new_zeros", "new_ones", "new_empty", "new_full")
_LOADERS = ("torch.load", "torch.jit.load")
_DEVICE_METHODS = frozenset(("cuda", "to", "load_from_checkpoint", *_TENSOR_DEVICE_METHODS))  # `leave_Call`'s
_BINDING_NODES = (cst.Assign, cst.AnnAssign, cst.For, cst.WithItem)  # what `leave_Assign` ... follow


def _code(node: cst.CSTNode) -> str:
    text = cst.Module([]).code_for_node(node)
    return text if len(text) <= 40 else text[:37] + "..."


def _root_name(expr: cst.BaseExpression) -> str | None:
    while isinstance(expr, cst.Attribute):
        expr = expr.value
    return expr.value if isinstance(expr, cst.Name) else None


def _param_names(params: cst.Parameters) -> set[str]:
    out = {p.name.value for p in (*params.params, *params.posonly_params, *params.kwonly_params)}
    if isinstance(params.star_arg, cst.Param):
        out.add(params.star_arg.name.value)
    if params.star_kwarg is not None:
        out.add(params.star_kwarg.name.value)
    return out


class ProcessDevice(cst.CSTTransformer):
    """Rewrites CUDA placement onto `device` (an expression in the training process:
    `"fabric.device"`, `"self.device"`)."""

    def __init__(self, device: str, facts: NotebookFacts | None = None, env: Mapping[str, Value] | None = None):
        self.device = device
        self.device_expr = cst.parse_expression(device)
        self.root = _root_name(self.device_expr)
        self.env: Mapping[str, Value] = env if env is not None else (facts.env if facts is not None else {})
        self.cuda_strings = _cuda_string_globals(facts) if facts is not None else set()
        self.rewrites: list[str] = []  # one line per rewrite, "`.cuda()` -> `.to(fabric.device)`"
        # Names the moved code binds: True for a CUDA device (its placement uses get rewritten),
        # False for anything else (shadows the notebook's global of that name).
        self.local: dict[str, bool] = {}
        self._saved: list[dict[str, bool]] = []  # `local` outside each nested function

    # -- what names a CUDA device ------------------------------------------------------------

    def _qname(self, expr: cst.BaseExpression) -> str | None:
        if isinstance(expr, cst.Name) and expr.value in self.local:
            return None
        return qualified_name(expr, self.env)

    def is_cuda_device(self, expr: cst.BaseExpression | None) -> bool:
        """'cuda', 'cuda:0', f"cuda:{i}", torch.device('cuda'), a conditional that may give one,
        or a name that holds one (bound by the moved code, or by the notebook at top level)."""
        if expr is None:
            return False
        s = N.string_value(expr)
        if s is not None:
            return s.startswith("cuda")
        if isinstance(expr, cst.Name):
            if expr.value in self.local:
                return self.local[expr.value]
            v = self.env.get(expr.value)
            return (v is not None and v.kind == "cuda_device") or expr.value in self.cuda_strings
        if isinstance(expr, cst.IfExp):
            return self.is_cuda_device(expr.body) or self.is_cuda_device(expr.orelse)
        if isinstance(expr, cst.Call) and self._qname(expr.func) == "torch.device":
            first = N.call_arg(expr, "type", 0)
            return first is not None and self.is_cuda_device(first.value)
        return False

    def _is_torch_device_call(self, expr: cst.BaseExpression) -> bool:
        return isinstance(expr, cst.Call) and self._qname(expr.func) == "torch.device" and self.is_cuda_device(expr)

    def leaves_alone(self, node: cst.CSTNode) -> bool:
        """True when visiting `node` would change neither it nor what this transformer remembers:
        no assignment, `for` or `with` (they bind names it follows) and no call it could rewrite.
        A cheap read-only walk, so moving many statements need not rebuild each one. Names bound
        by the moved code are ignored here (they only ever make a call inert): conservative."""
        for n in walk(node):
            kind = type(n)
            if kind in _BINDING_NODES:
                return False
            if kind is cst.Call:
                func = n.func
                q = qualified_name(func, self.env)
                if isinstance(func, cst.Attribute) and q is None:
                    if func.attr.value in _DEVICE_METHODS:
                        return False
                elif q is not None and q.startswith("torch.") and not q.startswith("torch.cuda.") and q != "torch.device":
                    return False
        return True

    # -- scopes --------------------------------------------------------------------------------

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False  # a class body: `self` means something else in there

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return self._enter(node.params)

    def leave_FunctionDef(self, original, updated):
        return self._leave(original.params, updated)

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return self._enter(node.params)

    def leave_Lambda(self, original, updated):
        return self._leave(original.params, updated)

    def _enter(self, params: cst.Parameters) -> bool:
        """A nested function: its parameters shadow the moved code's names; one that rebinds the
        device's own name (`fabric`, `self`) is left as it is."""
        names = _param_names(params)
        if self.root in names:
            return False
        self._saved.append(dict(self.local))
        self.local.update({n: False for n in names})
        return True

    def _leave(self, params: cst.Parameters, updated):
        if self.root not in _param_names(params):
            self.local = self._saved.pop()
        return updated

    # -- assignments ---------------------------------------------------------------------------

    def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
        names = [t.target.value for t in original.targets if isinstance(t.target, cst.Name)]
        others = [t for t in original.targets if not isinstance(t.target, cst.Name)]
        value = original.value
        if names and not others and self._is_torch_device_call(value):
            # `device = torch.device("cuda")` -> `device = fabric.device`: still a torch.device.
            self.rewrites.append(f"`{_code(value)}` -> `{self.device}`")
            for n in names:
                self.local[n] = False
            return updated.with_changes(value=self.device_expr)
        cuda = self.is_cuda_device(value)
        for t in original.targets:
            for n in _bound(t.target):
                self.local[n] = cuda and isinstance(t.target, cst.Name)
        return updated

    def leave_AnnAssign(self, original: cst.AnnAssign, updated: cst.AnnAssign) -> cst.AnnAssign:
        if isinstance(original.target, cst.Name) and original.value is not None:
            if self._is_torch_device_call(original.value):
                self.rewrites.append(f"`{_code(original.value)}` -> `{self.device}`")
                self.local[original.target.value] = False
                return updated.with_changes(value=self.device_expr)
            self.local[original.target.value] = self.is_cuda_device(original.value)
        return updated

    def leave_For(self, original: cst.For, updated: cst.For) -> cst.For:
        for n in _bound(original.target):
            self.local[n] = False
        return updated

    def leave_WithItem(self, original: cst.WithItem, updated: cst.WithItem) -> cst.WithItem:
        if original.asname is not None:
            for n in _bound(original.asname.name):
                self.local[n] = False
        return updated

    # -- calls ---------------------------------------------------------------------------------

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        func = original.func
        if isinstance(func, cst.Attribute) and qualified_name(func, self.env) is None:
            attr = func.attr.value
            if attr == "cuda":
                return self._cuda_call(original, updated)
            if attr == "to":
                dev = N.call_arg(original, "device", 0)
                if dev is not None and not dev.star and self.is_cuda_device(dev.value):
                    self.rewrites.append(f"`.to({_code(dev.value)})` -> `.to({self.device})`")
                    return _replace_arg(original, updated, dev)(self.device_expr)
                return updated
            if attr in _TENSOR_DEVICE_METHODS:
                return self._keyword(original, updated, "device")
            if attr == "load_from_checkpoint":
                return self._keyword(original, updated, "map_location")
            return updated
        q = self._qname(func)
        if q is None or not q.startswith("torch.") or q.startswith("torch.cuda.") or q == "torch.device":
            return updated
        if q in _LOADERS:
            where = N.call_arg(original, "map_location", 1)
            if where is not None and not where.star and self.is_cuda_device(where.value):
                self.rewrites.append(f"`map_location={_code(where.value)}` -> `map_location={self.device}`")
                return _replace_arg(original, updated, where)(self.device_expr)
            return updated
        if q == "torch.set_default_device":
            dev = N.call_arg(original, "device", 0)
            if dev is not None and not dev.star and self.is_cuda_device(dev.value):
                self.rewrites.append(f"`{N.dotted(func)}({_code(dev.value)})` -> `{N.dotted(func)}({self.device})`")
                return _replace_arg(original, updated, dev)(self.device_expr)
            return updated
        return self._keyword(original, updated, "device")

    def _keyword(self, original: cst.Call, updated: cst.Call, keyword: str) -> cst.Call:
        arg = N.call_arg(original, keyword)
        if arg is None or not self.is_cuda_device(arg.value):
            return updated
        self.rewrites.append(f"`{keyword}={_code(arg.value)}` -> `{keyword}={self.device}`")
        return _replace_arg(original, updated, arg)(self.device_expr)

    def _cuda_call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        """`.cuda()`, `.cuda(0)`, `.cuda(device=1, non_blocking=True)` -> `.to(<device>, ...)`:
        the device goes, `non_blocking` and `memory_format` stay (as keywords)."""
        if any(a.star for a in original.args):
            return updated
        kept: list[cst.Arg] = []
        positional = [a for a in updated.args if a.keyword is None]
        if len(positional) > 2:
            return updated
        if len(positional) == 2:  # Tensor.cuda(device, non_blocking)
            kept.append(positional[1].with_changes(keyword=cst.Name("non_blocking"), equal=_EQUAL))
        kept += [a for a in updated.args if a.keyword is not None and a.keyword.value != "device"]
        args = [cst.Arg(self.device_expr), *kept]
        args = [a.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))) for a in args[:-1]] + [
            args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT, whitespace_after_arg=cst.SimpleWhitespace(""))
        ]
        shown = _code(original.with_changes(func=cst.Name("_"))).removeprefix("_")
        self.rewrites.append(f"`.cuda{shown}` -> `.to({self.device})`")
        return updated.with_changes(func=updated.func.with_changes(attr=cst.Name("to")), args=args)

    # -- the message ---------------------------------------------------------------------------

    def summary(self, since: int = 0) -> str | None:
        """The rewrites (from `rewrites[since]` on: what one statement's visit added), each kind
        once, with a count where it happened more than once:
        "`.cuda()` -> `.to(fabric.device)`, `device="cuda"` -> `device=fabric.device` (2x)"."""
        if len(self.rewrites) <= since:
            return None
        counts: dict[str, int] = {}
        for r in self.rewrites[since:]:
            counts[r] = counts.get(r, 0) + 1
        return ", ".join(r if n == 1 else f"{r} ({n}x)" for r, n in counts.items())


def _cuda_string_globals(facts: NotebookFacts) -> set[str]:
    """Top-level names whose last binding is a CUDA string (`device = "cuda:0"`): facts.py
    tracks values, not strings, so `.to(device)` would otherwise go unseen."""
    out: set[str] = set()
    for st in facts.statements:
        out -= st.defines
        if isinstance(st.node, cst.SimpleStatementLine):
            for small in st.node.body:
                if isinstance(small, cst.Assign) and (N.string_value(small.value) or "").startswith("cuda"):
                    out |= {t.target.value for t in small.targets if isinstance(t.target, cst.Name)}
    return out


_EQUAL = cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace(""))


def _bound(target: cst.CSTNode) -> list[str]:
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for el in target.elements for n in _bound(el.value)]
    if isinstance(target, cst.StarredElement):
        return _bound(target.value)
    return []


def _replace_arg(original: cst.Call, updated: cst.Call, arg: cst.Arg):
    """A function that gives `updated` with `arg` (found in `original`) holding a new value."""
    index = next(i for i, a in enumerate(original.args) if a is arg)

    def with_value(value: cst.BaseExpression) -> cst.Call:
        args = list(updated.args)
        args[index] = args[index].with_changes(value=value)
        return updated.with_changes(args=args)

    return with_value


def on_process_device(stmt: cst.BaseStatement, device: str, facts: NotebookFacts | None = None) -> cst.BaseStatement:
    """One statement, its CUDA placement onto `device`. For several statements that move into one
    function, use one `ProcessDevice` for all of them (it follows the names they bind)."""
    return stmt.visit(ProcessDevice(device, facts))


def on_process_device_all(
    stmts: list[cst.BaseStatement], device: str, facts: NotebookFacts | None = None
) -> tuple[list[cst.BaseStatement], str | None]:
    """Statements that run in order in one training function: (rewritten, change message or None)."""
    t = ProcessDevice(device, facts)
    out = [s.visit(t) for s in stmts]
    return out, t.summary()


__all__ = ["ProcessDevice", "on_process_device", "on_process_device_all"]
