"""The fork guard: every launch point that forks checks CUDA first, and stops before forking.

Launch points (patched when the notebook imports them, see `patches`):

- Lightning's `_MultiProcessingLauncher.launch` with start method fork / forkserver: `trainer.fit /
  validate / test / predict` with `ddp_notebook` / `ddp_fork`, and `fabric.launch` with a forking
  strategy (`lightning.*` and the standalone `pytorch_lightning` / `lightning_fabric`).
- Accelerate's `notebook_launcher` with `num_processes` > 1 (it forks, except on TPU, ROCm, and on
  Colab with fewer than 2 GPUs, where it runs the function in the notebook process).

The check: CUDA initialised in this kernel (`torch.cuda.is_initialized()`), else a throwaway forked
child asks `torch.cuda._is_in_bad_fork()` (the device query poisoned fork). Either way the launch
raises `ForkGuardError` naming the cell and line the tracer saw, the rule, and what to write
instead; nothing is forked and the kernel stays usable. Lightning >= 2.6.1 no longer stops this
itself (research-lightning.md 2.1): without the guard, each child dies with torch's "Cannot
re-initialize CUDA in forked subprocess".
"""

from __future__ import annotations

import functools
import inspect
import os
import sys

from nbrefactor.kernel import tracer

FORKING = ("fork", "forkserver")


class ForkGuardError(RuntimeError):
    """A launch point would fork a kernel where CUDA cannot work in the children; nothing was forked."""

    def __init__(self, message: str, code: str, first: dict | None = None, launch: dict | None = None):
        super().__init__(message)
        self.code = code
        self.first = first  # the tracer's record of the first CUDA call, if it saw one
        self.launch = launch  # where the launch was called


# --- patches ---------------------------------------------------------------------------------


def patches(state) -> dict:
    """Module name -> patch(state, module) returning an undo function."""
    lightning = {
        f"{root}.strategies.launchers.multiprocessing": _guard_lightning(kind)
        for root, kind in (
            ("lightning.fabric", "fabric"),
            ("lightning_fabric", "fabric"),
            ("lightning.pytorch", "trainer"),
            ("pytorch_lightning", "trainer"),
        )
    }
    return {"torch.cuda": _trace_cuda, **lightning, "accelerate.launchers": _guard_notebook_launcher}


def apply(state, table: dict, name: str, module) -> None:
    if module.__dict__.get("_nbrefactor_guarded") is state:
        return
    try:
        undo = table[name](state, module)
    except Exception as err:  # noqa: BLE001 - never break the notebook's import; `%nbrefactor status` says so
        state.before.setdefault("warnings", []).append(f"could not guard {name}: {type(err).__name__}: {err}")
        return
    module._nbrefactor_guarded = state

    def undo_all():
        undo()
        module.__dict__.pop("_nbrefactor_guarded", None)

    state.undo.append(undo_all)


def _trace_cuda(state, cuda):
    return tracer.patch_torch_cuda(cuda, state.on_cuda)


def _active(state) -> bool:
    from nbrefactor.kernel import ext

    return ext.STATE is state and os.getpid() == state.pid


def _guard_lightning(kind: str):
    def patch(state, module):
        cls = module._MultiProcessingLauncher
        original = cls.__dict__["launch"]

        @functools.wraps(original)
        def launch(self, function, *args, **kwargs):
            if _active(state) and getattr(self, "_start_method", None) in FORKING:
                processes = getattr(getattr(self, "_strategy", None), "num_processes", None)
                check(state, kind, state.where(sys._getframe(1)), processes)
            return original(self, function, *args, **kwargs)

        cls.launch = launch
        return _restore(cls, "launch", launch, original)

    return patch


def _guard_notebook_launcher(state, module):
    original = module.notebook_launcher
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):
        signature = None

    @functools.wraps(original)
    def notebook_launcher(*args, **kwargs):
        if _active(state) and signature is not None:
            try:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                processes = bound.arguments.get("num_processes")
            except TypeError:
                processes = None  # Accelerate says what is wrong with the call
            if isinstance(processes, int) and processes > 1 and _accelerate_forks():
                check(state, "accelerate", state.where(sys._getframe(1)), processes)
        return original(*args, **kwargs)

    module.notebook_launcher = notebook_launcher
    undo = [_restore(module, "notebook_launcher", notebook_launcher, original)]
    package = sys.modules.get("accelerate")  # imported before us: `from accelerate import ...` reads it there
    if package is not None and getattr(package, "notebook_launcher", None) is original:
        package.notebook_launcher = notebook_launcher
        undo.append(_restore(package, "notebook_launcher", notebook_launcher, original))
    return lambda: [u() for u in undo]


def _accelerate_forks() -> bool:
    """Whether `notebook_launcher(num_processes > 1)` forks here (accelerate/launchers.py): not on a
    Colab / Kaggle TPU (xmp.spawn), not on ROCm (spawn), not on Colab with < 2 GPUs (runs in-process:
    decided after the check, see `check`)."""
    tpu = os.environ.get("TPU_NAME") is not None or os.environ.get("PJRT_DEVICE", "") == "TPU"
    kaggle = any(key.startswith("KAGGLE") for key in os.environ)
    if tpu and (kaggle or _in_colab()):
        return False
    torch = sys.modules.get("torch")
    return not (torch is not None and getattr(getattr(torch, "version", None), "hip", None))


def _in_colab() -> bool:
    ipython = sys.modules.get("IPython")
    try:
        return "google.colab" in str(ipython.get_ipython())
    except Exception:  # noqa: BLE001
        return False


def _restore(owner, name: str, ours, original):
    def undo():
        if getattr(owner, name, None) is ours:
            setattr(owner, name, original)

    return undo


# --- the check -------------------------------------------------------------------------------


def diagnose() -> dict | None:
    """None when forked children could use CUDA; else why not ({"kind": "init" | "probe", "reason"})."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None  # no torch in this kernel: nothing of CUDA to inherit
    if tracer.initialized(torch.cuda):
        return {"kind": "init", "reason": "CUDA is initialised in this kernel"}
    if not hasattr(torch.cuda, "_is_in_bad_fork"):
        return None
    probe = tracer.fork_probe(use_cuda=False)  # one throwaway child, no training process
    if probe["broken"]:
        return {"kind": "probe", "reason": probe["reason"]}
    return None


def check(state, kind: str, launch: dict, processes) -> None:
    cause = diagnose()
    if cause is not None and kind == "accelerate" and _in_colab():
        torch = sys.modules["torch"]
        if torch.cuda.device_count() < 2:  # Accelerate runs the function in this process: no fork
            cause = None
    state.launches.append({"kind": kind, "where": launch, "processes": processes, "stopped": cause is not None})
    if cause is None:
        return
    text, code, first = message(state, kind, launch, cause, processes)
    raise ForkGuardError(text, code, first, launch)


CALLS = {"trainer": "the Trainer's launch", "fabric": "fabric.launch", "accelerate": "notebook_launcher"}

INSTEAD = {
    "trainer": "do that CUDA work in the training processes: in the LightningModule or DataModule "
    "(its hooks run in each process; use `self.device`, not \"cuda\")",
    "fabric": "do that CUDA work in the function you pass to `fabric.launch` (use `fabric.device`, not \"cuda\")",
    "accelerate": "do that CUDA work in the function you pass to `notebook_launcher` (make the `Accelerator()` "
    "there and use `accelerator.device`)",
}


def message(state, kind: str, launch: dict, cause: dict, processes) -> tuple[str, str, dict | None]:
    """The guard's error: what was stopped, where CUDA was first touched, the rule, what to write instead."""
    init, probe = state.cuda.get("init"), state.cuda.get("probe")
    first = init if cause["kind"] == "init" else (init or probe)
    code = "NBR101"
    if cause["kind"] == "probe" and first is probe and probe is not None and not probe.get("lightning_imported"):
        code = "NBR102"
    call = f"`{launch['code']}`" if launch.get("code") else CALLS[kind]
    at = f" ({_place(state, launch)})" if launch.get("cell") is not None else ""
    n = f"{processes} training processes" if isinstance(processes, int) else "the training processes"
    what = "CUDA is already initialised in this kernel" if cause["kind"] == "init" else "fork is poisoned: " + cause["reason"]
    lines = [f"nbrefactor stopped {call}{at} before it forked {n}: {what} [{code}]."]
    if first is not None and first.get("cell") is not None:
        verb = "initialised" if first is init else "queried (the device count, which poisons fork)"
        line = f"CUDA was first {verb} at {_place(state, first)}: `{first['code']}`"
        if first.get("function") not in (None, "<module>"):
            line += f" in {first['function']}()"
        called = first.get("called_from")
        if called:
            line += f", called from {_place(state, called)}: `{called['code']}`"
        lines.append(line + ".")
    elif first is not None:
        lines.append(f"CUDA was first touched outside the notebook's cells, by {first.get('via', 'a library')} (running {state.label(first.get('running_cell'))}).")
    elif state.before.get("cuda_initialized") or state.before.get("torch"):
        loaded = state.label(state.loaded_at) if state.loaded_at else "its cell"
        happened = "was initialised" if state.before.get("cuda_initialized") else "was probably touched"
        lines.append(
            f"CUDA {happened} before `%load_ext nbrefactor` ran ({loaded}; torch was already imported), so the tracer "
            "cannot say where: load the extension in the first cell to see the line. `%nbrefactor check` lists the "
            "lines that do it."
        )
    else:
        lines.append("The tracer saw no call that did it (a library may have initialised the GPU driver itself).")
    lines.append('Forked processes cannot use CUDA after that: each would fail with "Cannot re-initialize CUDA in forked subprocess", or hang.')
    if code == "NBR102":
        instead = (
            "import Lightning before the first `torch.cuda.is_available()` (importing it sets "
            "PYTORCH_NVML_BASED_CUDA_CHECK=1, which makes the query harmless), or move the query into the training code"
        )
    else:
        instead = INSTEAD[kind]
    lines.append(
        f"Instead: {instead}; then restart the kernel (CUDA stays {'initialised' if cause['kind'] == 'init' else 'poisoned'} "
        "until you do) and run the notebook again. `%nbrefactor fix` shows that rewrite; `nbrefactor fix NOTEBOOK.ipynb` writes it."
    )
    lines.append(f"Nothing was forked; this kernel still works. (`nbrefactor rules {code}` explains the rule.)")
    return "\n".join(lines), code, first


def _place(state, record: dict) -> str:
    return f"{state.label(record.get('cell'))}, line {record.get('line')}"


# --- showing it ------------------------------------------------------------------------------


def show_briefly(shell, state) -> None:
    """`ForkGuardError` shows as its message, not a traceback through Lightning's internals."""
    previous_types, previous_handler = shell.custom_exceptions, shell.CustomTB

    def handler(self, etype, value, tb, tb_offset=None):
        if not isinstance(value, ForkGuardError):
            return previous_handler(etype, value, tb, tb_offset=tb_offset)
        stb = [f"{etype.__name__}: {value}"]
        self._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc(tuple(previous_types) + (ForkGuardError,), handler)
    ours = shell.CustomTB

    def undo():
        if shell.CustomTB == ours:
            shell.custom_exceptions, shell.CustomTB = previous_types, previous_handler

    state.undo.append(undo)
