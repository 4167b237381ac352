"""Where the notebook process first touched CUDA, and whether a fork would still work.

Shared by the launcher's preamble (`nbrefactor run`, which loads this file by path into its kernel)
and the `%load_ext nbrefactor` guard. Only the standard library is imported here; what to do with
a traced call is the caller's (`on_cuda(kind, frame)`), so both keep their own state.

- `PatchOnImport`: patch a module right after it executes, whoever imports it, so the notebook's
  own import order is kept (importing Lightning early would set `PYTORCH_NVML_BASED_CUDA_CHECK`
  and hide an NBR102 problem).
- `patch_torch_cuda`: `torch.cuda._lazy_init` (first CUDA initialisation, reached by `.cuda()`,
  `.to("cuda")`, `torch.cuda.current_device()`...) and `torch._C._cuda_getDeviceCount` /
  `_cuda_getArchFlags` (the device query that poisons fork) report to `on_cuda`.
- `fork_probe`: a throwaway forked child says whether CUDA would still work after fork
  (notes: research-lightning.md 2.9).
- `notebook_frames` / `where`: a stack placed in notebook cells, by a `cell_of(filename)` lookup.
"""

from __future__ import annotations

import os
import sys


class PatchOnImport:
    """Call `apply(name, module)` right after a module named in `names` executes.

    A meta path finder by protocol (`find_spec`), not by `importlib.abc.MetaPathFinder`, whose
    import costs more than the rest of `%load_ext nbrefactor` together."""

    def __init__(self, names, apply):
        self.names = names
        self.apply = apply
        self._busy = set()

    def find_spec(self, name, path, target=None):
        if name not in self.names or name in self._busy:
            return None
        self._busy.add(name)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy.discard(name)
        loader = spec.loader
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec  # a built-in or frozen module: nothing of ours
        original = loader.exec_module
        apply = self.apply

        def exec_module(module):
            original(module)
            apply(name, module)

        loader.exec_module = exec_module
        return spec


# --- the CUDA tracer ---------------------------------------------------------------------------


def patch_torch_cuda(cuda, on_cuda):
    """`on_cuda("init", frame)` before `cuda._lazy_init` first initialises CUDA, and
    `on_cuda("probe", frame)` before each fork-poisoning device query (`frame`: the caller's).
    Returns a function that takes the patches out again (each only while it is still in place)."""
    original_init = cuda._lazy_init

    def _lazy_init():
        if not initialized(cuda):
            on_cuda("init", sys._getframe(1))
        return original_init()

    _lazy_init.__wrapped__ = original_init
    cuda._lazy_init = _lazy_init
    placed = [(cuda, "_lazy_init", _lazy_init, original_init)]
    torch_c = sys.modules.get("torch._C")
    for name in ("_cuda_getDeviceCount", "_cuda_getArchFlags"):
        original = getattr(torch_c, name, None)
        if original is not None:
            query = probe_tracer(original, on_cuda)
            setattr(torch_c, name, query)
            placed.append((torch_c, name, query, original))

    def undo():
        for owner, name, ours, original in placed:
            if getattr(owner, name, None) is ours:
                setattr(owner, name, original)

    return undo


def probe_tracer(original, on_cuda):
    def query(*args, **kwargs):
        on_cuda("probe", sys._getframe(1))
        return original(*args, **kwargs)

    query.__wrapped__ = original
    return query


def initialized(cuda) -> bool:
    try:
        return bool(cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken CUDA build reads as not initialised
        return False


def lightning_imported() -> bool:
    return any(m in sys.modules for m in ("lightning", "pytorch_lightning", "lightning_fabric"))


# --- placing a stack in the notebook ----------------------------------------------------------


def notebook_frames(frames, cell_of) -> list[dict]:
    """The frames that are notebook code, innermost last: `cell_of(filename)` (None: not a cell) and line."""
    out = []
    for fs in frames:
        cell = cell_of(fs.filename)
        if cell is not None:
            out.append({"cell": cell, "line": fs.lineno, "function": fs.name, "code": (fs.line or "").strip()})
    return out


def where(frames, cell_of) -> dict:
    """The innermost notebook frame, the line of the running cell that led there (`called_from`,
    when it is another line), and the innermost frame of all (`via`: the library call that did it)."""
    cells = notebook_frames(frames, cell_of)
    at = dict(cells[-1]) if cells else {"cell": None, "line": None, "function": None, "code": ""}
    if len(cells) > 1 and (cells[0]["cell"], cells[0]["line"]) != (at["cell"], at["line"]):
        at["called_from"] = cells[0]
    if frames:
        last = frames[-1]
        at["via"] = f"{last.filename}:{last.lineno} in {last.name}"
    return at


# --- the fork probe ----------------------------------------------------------------------------


def in_fork(child) -> str:
    """Run `child()` (returning a short str) in a throwaway forked process and return its answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            try:
                answer = str(child())
            except BaseException as err:  # noqa: BLE001 - the answer is the error
                answer = f"error: {type(err).__name__}: {err}"
            os.write(w, answer.encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


def fork_probe(use_cuda: bool) -> dict:
    """Would CUDA work in a forked child? (research-lightning.md 2.9, with the stronger variant on CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"broken": False, "reason": None}
    if initialized(torch.cuda):
        return {"broken": True, "reason": "CUDA is initialised in the notebook process"}

    def child():
        if torch.cuda._is_in_bad_fork():
            return "bad-fork"
        if use_cuda:
            torch.zeros(1, device="cuda")
        return "ok"

    answer = in_fork(child)
    if answer == "ok":
        return {"broken": False, "reason": None}
    if answer == "bad-fork":
        return {"broken": True, "reason": "CUDA was queried or initialised in the notebook process (fork is poisoned)"}
    return {"broken": True, "reason": f"CUDA fails in a forked child: {answer}"}
