"""`nbrefactor run`'s failure report: which static findings it offers as explaining the failure.

A finding is offered only when it could have caused the failure: it is in the failing cell, or its
rule's family is about this kind of failure (NBR1xx/2xx/4xx in a launch, NBR3xx/4xx for a launch
call that raised, NBR5xx in a cell after a launch). The reports here are built by `report.build`
from a `RunResult` and the checker's `Diagnostic`s, as `nbrefactor run` builds them.
"""

from __future__ import annotations

import shutil

import pytest

from nbrefactor.checker import Diagnostic
from nbrefactor.launcher.report import (
    build,
    failure_facts,
    related_findings,
    render_text,
)
from nbrefactor.launcher.runner import CellRun, RunResult, RunSettings
from tests.conftest import ROOT
from tests.test_launcher import nbrefactor_run, needs_kernel, notebook

NB = "nb.ipynb"


def diag(code: str, cell: int, row: int, message: str = "a finding", column: int = 1) -> Diagnostic:
    return Diagnostic(code, f"rule-{code.lower()}", message, NB, cell, row, column, row, column + 1, "unsafe", None)


def launch(number: int, cell: int, status: str | None = "returned", line: int = 1) -> list[dict]:
    """The kernel's events for one launch: started at `cell`, and ended with `status` (None: never ended)."""
    events = [{"event": "launch", "launch": number, "kind": "fabric", "processes": 2, "cell": cell, "line": line, "code": "fabric.launch(train)", "probe": {"broken": False}}]
    if status:
        events.append({"event": "launch_end", "launch": number, "status": status})
    return events


def ranks(number: int, status: str = "finished", **failed) -> list[dict]:
    return [{"launch": number, "rank": r, "pid": 100 + r, "status": status, **failed} for r in (0, 1)]


def error(cell: int, line: int, ename: str, evalue: str, function: str = "<module>") -> dict:
    """The preamble's record of an exception in the notebook process, innermost frame at cell:line."""
    return {
        "event": "error",
        "cell": cell,
        "type": ename,
        "message": evalue,
        "frames": [{"cell": cell, "line": line, "function": function, "code": "..."}],
        "traceback": f'Traceback (most recent call last):\n  File "cell {cell}", line {line}, in {function}\n{ename}: {evalue}',
    }


def result(failing: int, ename: str, evalue: str, *, n: int = 8, events=(), ranks_=(), outcome: str = "failed") -> RunResult:
    """Cells 1..n: ok before `failing`, `failing` failed with ename: evalue, not run after."""
    cells = []
    for number in range(1, n + 1):
        if number < failing:
            cells.append(CellRun(number, "code", "ok", 0.1))
        elif number == failing:
            cells.append(CellRun(number, "code", "failed", 0.1, {"ename": ename, "evalue": evalue, "traceback": ""}))
        else:
            cells.append(CellRun(number, "code", "not run"))
    return RunResult(outcome=outcome, cells=cells, seconds=1.0, events=list(events), ranks=list(ranks_), kernel_pid=1)


def report_for(res: RunResult, findings: list[Diagnostic]) -> dict:
    return build(res, path=NB, settings=RunSettings(accelerator="cpu", devices=2), findings=findings)


def codes(findings: list[dict]) -> list[tuple[str, int]]:
    return [(d["code"], d["cell"]) for d in findings]


# -- failures no rule is about ----------------------------------------------------------------


def test_a_missing_module_is_explained_by_no_finding_and_the_others_are_said_to_be_unrelated():
    res = result(2, "ModuleNotFoundError", "No module named 'foo'", n=3, events=[error(2, 1, "ModuleNotFoundError", "No module named 'foo'")])
    report = report_for(res, [diag("NBR101", 1, 3, "`.cuda()` moves memory to the GPU")])
    f = report["failure"]
    assert f["matching_findings"] == [] and f["explained_by"] is None
    text = render_text(report)
    assert "may explain it" not in text and "agrees" not in text and "explains it" not in text
    lines = text.splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith("FAIL:"))
    other = lines.index("  other findings of the static check (not related to this failure):")
    assert lines[fail] == f"FAIL: {NB}:cell 2:1: ModuleNotFoundError: No module named 'foo'"
    assert other > fail and lines[other + 1] == f"    {NB}:cell 1:3:1: NBR101 `.cuda()` moves memory to the GPU"
    assert lines[-1].startswith("  nothing left running")  # the clean-up line stays last


@pytest.mark.parametrize("ename", ["ImportError", "SyntaxError", "KeyboardInterrupt"])
def test_errors_no_rule_is_about_take_no_finding_even_in_their_own_cell(ename):
    res = result(3, ename, "whatever", n=4, events=launch(1, 2) + [error(3, 1, ename, "whatever")], ranks_=ranks(1))
    report = report_for(res, [diag("NBR501", 3, 1), diag("NBR402", 3, 2), diag("NBR101", 1, 1)])
    assert report["failure"]["matching_findings"] == []


def test_a_name_error_takes_only_a_finding_that_names_the_name():
    res = result(4, "NameError", "name 'losses' is not defined", events=[error(4, 2, "NameError", "name 'losses' is not defined")])
    named = diag("NBR302", 2, 1, "`losses` is assigned only inside the training function")
    other = diag("NBR302", 3, 1, "`fabric.backward(loss)` runs at top level")
    f = report_for(res, [other, named])["failure"]
    assert codes(f["matching_findings"]) == [("NBR302", 2)]
    res = result(4, "NameError", "name 'lossess' is not defined", events=[error(4, 2, "NameError", "name 'lossess' is not defined")])
    assert report_for(res, [other, named])["failure"]["matching_findings"] == []


def test_an_error_in_a_plain_cell_takes_only_that_cells_findings_and_none_from_cells_that_never_ran():
    """The gauntlet's LeNet notebook: a TypeError in cell 12 (surfacing in cell 28) was shown with
    an NBR402 finding of cell 30, which never ran."""
    evalue = "Accuracy.__new__() missing 1 required positional argument: 'task'"
    err = error(28, 8, "TypeError", evalue)
    err["frames"] = [{"cell": 28, "line": 8, "function": "<module>", "code": "m = LightningModel("}, {"cell": 12, "line": 19, "function": "__init__", "code": "self.train_acc = torchmetrics.Accuracy()"}]
    res = result(28, "TypeError", evalue, n=30, events=[err])
    report = report_for(res, [diag("NBR402", 30, 9), diag("NBR201", 5, 1), diag("NBR302", 12, 19), diag("NBR402", 28, 2)])
    f = report["failure"]
    assert (f["cell"], f["line"], f["running_cell"]) == (12, 19, 28)
    # the failing line first, then the running cell; cell 5 (no launch ran) and cell 30 (never ran) are not it
    assert codes(f["matching_findings"]) == [("NBR302", 12), ("NBR402", 28)]
    text = render_text(report)
    assert "the static check found (may explain it):" in text
    assert text.index("may explain it") < text.index("not related to this failure") < text.index(f"{NB}:cell 30:9:1: NBR402")


# -- NBR5xx: state read after a launch --------------------------------------------------------


def test_a_file_not_found_after_a_launch_is_explained_by_the_nbr501_finding_in_its_cell():
    evalue = "[Errno 2] No such file or directory: 'lightning_logs/version_1/metrics.csv'"
    events = launch(1, 5) + [error(7, 3, "FileNotFoundError", evalue)]
    res = result(7, "FileNotFoundError", evalue, events=events, ranks_=ranks(1))
    nbr501 = diag("NBR501", 7, 3, "`trainer.logger.log_dir` read after a forked `trainer.fit` names the next version", column=5)
    report = report_for(res, [diag("NBR101", 2, 1), nbr501, diag("NBR502", 6, 2)])
    f = report["failure"]
    assert f["rule"] is None and f["explained_by"]["code"] == "NBR501"
    assert codes(f["matching_findings"]) == [("NBR501", 7), ("NBR502", 6)]  # NBR101 cannot make a FileNotFoundError
    lines = render_text(report).splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith("FAIL:"))
    assert lines[fail] == f"FAIL: {NB}:cell 7:3: FileNotFoundError: {evalue}"
    assert lines[fail + 1] == f"  the static check explains it: {NB}:cell 7:3:5: NBR501 `trainer.logger.log_dir` read after a forked `trainer.fit` names the next version"
    assert lines[fail + 2] == "  see: nbrefactor rules NBR501"
    text = "\n".join(lines)
    assert text.count("NBR501 `trainer") == 1  # not repeated under "may explain it"
    assert f"the static check found (may explain it):\n    {NB}:cell 6:2:1: NBR502" in text
    assert f"not related to this failure):\n    {NB}:cell 2:1:1: NBR101" in text


def test_an_nbr5xx_finding_elsewhere_may_explain_an_index_error_after_a_launch_but_not_outright():
    events = launch(1, 4) + [error(6, 1, "IndexError", "list index out of range")]
    res = result(6, "IndexError", "list index out of range", events=events, ranks_=ranks(1))
    f = report_for(res, [diag("NBR502", 3, 4, "`losses` is appended to in the training processes")])["failure"]
    assert codes(f["matching_findings"]) == [("NBR502", 3)] and f["explained_by"] is None


def test_nbr5xx_findings_do_not_explain_a_failure_before_any_launch():
    events = [error(3, 1, "IndexError", "list index out of range")] + launch(1, 5, status=None)
    res = result(3, "IndexError", "list index out of range", n=6, events=events)
    f = report_for(res, [diag("NBR502", 2, 1), diag("NBR501", 6, 1)])["failure"]
    assert f["matching_findings"] == [] and f["explained_by"] is None


def test_a_launch_in_the_failing_cell_that_returned_makes_the_rest_of_the_cell_after_the_launch():
    events = launch(1, 5, line=2) + [error(5, 4, "FileNotFoundError", "no such file")]
    res = result(5, "FileNotFoundError", "no such file", events=events, ranks_=ranks(1))
    f = report_for(res, [diag("NBR501", 5, 4)])["failure"]
    assert f["explained_by"]["code"] == "NBR501"
    assert failure_facts(f, report_for(res, [])["launches"]).stage == "after launch"


# -- failures in a launch: as before ----------------------------------------------------------


def test_a_forked_process_cuda_error_is_nbr101_and_its_finding_agrees():
    message = "Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use the 'spawn' start method"
    traced = {"event": "cuda", "kind": "init", "cell": 2, "line": 3, "code": "x = t.cuda()", "running_cell": 2, "lightning_imported": True}
    failed = {"type": "RuntimeError", "message": message, "frames": [{"cell": 4, "line": 2, "function": "train", "code": "model.cuda()"}], "traceback": f"RuntimeError: {message}"}
    events = [traced] + launch(1, 4, status="raised") + [error(4, 6, "ProcessRaisedException", f"-- Process 0 terminated with the following error:\nRuntimeError: {message}")]
    res = result(4, "ProcessRaisedException", f"-- Process 0 terminated with the following error:\nRuntimeError: {message}", n=5, events=events, ranks_=ranks(1, "failed", **failed))
    report = report_for(res, [diag("NBR402", 4, 5), diag("NBR101", 2, 3), diag("NBR101", 5, 1)])
    f = report["failure"]
    assert f["rule"]["code"] == "NBR101" and (f["cell"], f["line"]) == (2, 3)
    assert codes(f["matching_findings"]) == [("NBR101", 2)]  # cell 5 never ran; NBR402 is not about CUDA
    assert f["explained_by"] is None
    text = render_text(report)
    assert f"FAIL: {NB}:cell 2:3: NBR101" in text and f"the static check agrees:\n    {NB}:cell 2:3:1: NBR101" in text


def test_an_error_in_the_training_function_may_be_explained_by_a_fork_rule_not_by_a_launch_call_rule():
    failed = {"type": "ValueError", "message": "boom", "frames": [{"cell": 3, "line": 4, "function": "train", "code": "raise ValueError"}], "traceback": "ValueError: boom"}
    events = launch(1, 3, status="raised") + [error(3, 6, "ProcessRaisedException", "-- Process 0 terminated with the following error:\nValueError: boom")]
    res = result(3, "ProcessRaisedException", "ValueError: boom", n=4, events=events, ranks_=ranks(1, "failed", **failed))
    report = report_for(res, [diag("NBR201", 1, 2), diag("NBR303", 2, 1), diag("NBR501", 4, 1)])
    f = report["failure"]
    assert f["rule"] is None and codes(f["matching_findings"]) == [("NBR201", 1)]
    assert "the static check found (may explain it):\n    nb.ipynb:cell 1:2:1: NBR201" in render_text(report)


def test_a_launch_call_that_raised_before_forking_may_be_explained_by_an_nbr3xx_finding():
    events = launch(1, 3, status="raised") + [error(3, 2, "TypeError", "launch() got an unexpected keyword argument")]
    res = result(3, "TypeError", "launch() got an unexpected keyword argument", n=4, events=events)
    f = report_for(res, [diag("NBR101", 1, 1), diag("NBR302", 2, 1)])["failure"]
    assert failure_facts(f, report_for(res, [])["launches"]).stage == "launch error"
    assert codes(f["matching_findings"]) == [("NBR302", 2)]


def test_related_findings_order_the_failing_line_then_its_cell_then_the_family():
    events = launch(1, 2) + [error(6, 3, "KeyError", "'val_loss'")]
    res = result(6, "KeyError", "'val_loss'", events=events, ranks_=ranks(1))
    report = report_for(res, [diag("NBR502", 4, 1), diag("NBR402", 6, 1), diag("NBR501", 6, 3)])
    facts = failure_facts(report["failure"], report["launches"])
    assert codes(related_findings(report["static_findings"], facts)) == [("NBR501", 6), ("NBR402", 6), ("NBR502", 4)]


def test_at_most_five_unrelated_findings_are_listed():
    res = result(9, "ModuleNotFoundError", "No module named 'foo'", n=9, events=[error(9, 1, "ModuleNotFoundError", "No module named 'foo'")])
    text = render_text(report_for(res, [diag("NBR402", c, 1) for c in range(1, 8)]))
    assert text.count(": NBR402 ") == 5 and "... and 2 more (`nbrefactor check`)" in text


# -- end to end --------------------------------------------------------------------------------


@needs_kernel
def test_a_missing_module_is_not_blamed_on_an_unrelated_finding_end_to_end(tmp_path):
    nb = notebook(
        tmp_path / "missing.ipynb",
        "if False:\n    x = torch.ones(1).cuda()",  # NBR101 for the static check; never runs
        "import not_a_module_xyz",
        "from lightning.fabric import Fabric\n\ndef train(fabric):\n    return 1\n\nfabric = Fabric(accelerator='cpu', devices=2)\nfabric.launch(train)",
    )
    r, report = nbrefactor_run(nb)
    assert r.returncode == 1, r.stdout + r.stderr
    f = report["failure"]
    assert (f["cell"], f["line"], f["exception"]) == (2, 1, "ModuleNotFoundError")
    assert [(d["code"], d["cell"]) for d in report["static_findings"]] == [("NBR101", 1)]
    assert f["matching_findings"] == [] and f["explained_by"] is None
    assert "may explain it" not in r.stdout
    assert r.stdout.index(f"FAIL: {nb}:cell 2:1: ModuleNotFoundError") < r.stdout.index("not related to this failure):\n") < r.stdout.index(f"{nb}:cell 1:2:")


@needs_kernel
def test_a_logger_folder_read_after_a_forked_fit_is_explained_by_nbr501_end_to_end(tmp_path):
    """The golden CSVLogger notebook as it was before the fix: `run` names NBR501, and the fixed
    copy passes (`--compare`), with 2 ranks each."""
    pytest.importorskip("lightning")
    nb = tmp_path / "metrics.ipynb"
    shutil.copy(ROOT / "golden" / "trainer_logger_version" / "input.ipynb", nb)
    r, report = nbrefactor_run(nb)
    assert r.returncode == 1, r.stdout + r.stderr
    f = report["failure"]
    assert (f["cell"], f["exception"]) == (6, "FileNotFoundError")
    assert f["explained_by"]["code"] == "NBR501"
    assert f"the static check explains it: {nb}:cell 6:1:24: NBR501" in r.stdout
    r, _ = nbrefactor_run(nb, "--compare", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FileNotFoundError cell 6" in r.stdout and "PASS" in r.stdout
