"""Honest fix labels (issue 11, item 6): each rule says whether a fix is always, sometimes or
never available, and each finding carries the applicability `fix` will really use, found by
asking the fixer. The tests check the labels against what `fix` then does."""

from __future__ import annotations

import json
import shutil

import pytest

from codemods.rules import ALL_RULES, FixAvailability
from nbrefactor.checker import check_notebook
from nbrefactor.config import Selection
from nbrefactor.labels import label
from nbrefactor.notebook.model import notebook_from_cells, read_notebook, split_example
from tests.conftest import ROOT, run_cli

TRAINER = ROOT / "examples" / "trainer_bad.ipynb"
FABRIC = ROOT / "examples" / "fabric_bad.ipynb"
DEVICES_AND_TWICE = """
# %%
import lightning as L
model = None
# %%
trainer = L.Trainer(accelerator="gpu", strategy="ddp_notebook")
trainer.fit(model)
trainer.fit(model)
"""


def _json_findings(path, *args):
    r = run_cli("check", "--output-format", "json", *args, str(path))
    return json.loads(r.stdout)


def _labels(items):
    return [(d["code"], d["cell"], (d["fix"] or {}).get("applicability", "none"), (d["fix"] or {}).get("needs")) for d in items]


def test_trainer_example_labels_and_summary():
    """Plain `fix` moves the Trainer example's data and its strategy; only the `.cuda()` needs
    --unsafe-fixes (the rule's old label said NBR201 was unsafe: plain `fix` fixes it)."""
    assert _labels(_json_findings(TRAINER)) == [
        ("NBR101", 4, "unsafe", None),
        ("NBR201", 5, "safe", None),
        ("NBR201", 5, "safe", None),
        ("NBR401", 6, "safe", None),
    ]
    r = run_cli("check", str(TRAINER))
    assert r.stdout.decode().splitlines()[-1] == "Found 4 findings in 1 notebook. 3 fixable with `nbrefactor fix`, 1 more with `--unsafe-fixes`."


def test_fabric_example_is_fixed_by_plain_fix():
    assert {a for _, _, a, _ in _labels(_json_findings(FABRIC))} == {"safe"}


@pytest.mark.parametrize("example", [TRAINER, FABRIC, *sorted((ROOT / "golden").glob("*/input.ipynb"))[:6]], ids=lambda p: p.parent.name if p.name == "input.ipynb" else p.stem)
def test_labels_say_what_fix_does(example, tmp_path):
    """safe: gone after plain `fix`; unsafe: still there after plain `fix`, gone after
    `fix --unsafe-fixes`; none: still there after both."""
    nb = tmp_path / "nb.ipynb"
    shutil.copy(example, nb)
    labelled = _json_findings(nb)
    if not labelled:
        pytest.skip("no findings")

    def messages(path):
        return sorted((d["code"], d["message"]) for d in _json_findings(path))

    run_cli("fix", str(nb))
    after_plain = messages(nb)
    run_cli("fix", "--unsafe-fixes", str(nb))
    after_unsafe = messages(nb)
    for d in labelled:
        applicability = (d["fix"] or {}).get("applicability", "none")
        if (d["fix"] or {}).get("needs"):
            continue
        key = (d["code"], d["message"])
        if applicability == "safe":
            assert key not in after_plain, d
        elif applicability == "unsafe":
            assert key in after_plain and key not in after_unsafe, d
        else:
            assert key in after_unsafe, d


def test_devices_and_manual_labels_and_fix_help(tmp_path):
    p = tmp_path / "nb.py"
    p.write_text(DEVICES_AND_TWICE.lstrip())
    items = _json_findings(p)
    assert _labels(items) == [("NBR402", 2, "safe", "--devices N"), ("NBR303", 2, "none", None)]
    assert items[1]["fix"] is None
    r = run_cli("check", str(p))
    assert r.stdout.decode().splitlines()[-1].endswith("0 fixable with `nbrefactor fix`, 0 more with `--unsafe-fixes`, 1 with `--devices N`.")
    r = run_cli("fix", str(p))
    out = r.stdout.decode().splitlines()
    assert r.returncode == 1
    assert out[1] == "  help: fixable with `nbrefactor fix --devices N`"
    assert out[3] == "  help: needs a manual fix (see `nbrefactor rules NBR303`)"
    assert out[-1] == "2 findings remain: 1 fixable with `--devices N`, 1 needs a manual fix (see `nbrefactor rules CODE`)."


def test_fix_names_unsafe_fixes_for_what_it_left(tmp_path):
    nb = tmp_path / "nb.ipynb"
    shutil.copy(TRAINER, nb)
    r = run_cli("fix", str(nb))
    out = r.stdout.decode().splitlines()
    i = next(i for i, line in enumerate(out) if " NBR101 " in line)
    assert out[i + 1] == "  help: fixable with `nbrefactor fix --unsafe-fixes`"
    assert out[-1].endswith("1 finding remains: 1 fixable with `--unsafe-fixes`.")
    assert b"help:" not in run_cli("fix", "-q", str(nb)).stdout


def test_statistics_count_labels(tmp_path):
    stats = json.loads(run_cli("check", "--statistics", "--output-format", "json", str(TRAINER)).stdout)
    by_code = {s["code"]: s for s in stats}
    assert by_code["NBR201"]["fix"] == {"safe": 2, "unsafe": 0, "option": 0, "none": 0} and by_code["NBR201"]["fixable"]
    assert by_code["NBR101"]["fix"]["unsafe"] == 1


def test_sarif_carries_labels_and_availability():
    sarif = json.loads(run_cli("check", "--output-format", "sarif", str(TRAINER)).stdout)
    run = sarif["runs"][0]
    assert [r["properties"]["fix_applicability"] for r in run["results"]] == ["unsafe", "safe", "safe", "safe"]
    assert {r["id"]: r["properties"]["fix_availability"] for r in run["tool"]["driver"]["rules"]}["NBR303"] == "none"


def test_rules_show_availability():
    text = run_cli("rules").stdout.decode()
    assert "fix: sometimes" in text and "fix: none" in text and "fix: unsafe" not in text
    data = json.loads(run_cli("rules", "--output-format", "json").stdout)
    nbr303 = next(r for r in data if r["code"] == "NBR303")
    assert nbr303["fix"] == "Fix is not available." and nbr303["fix_availability"] == "none"
    assert "Fix is sometimes available." in run_cli("rules", "NBR201").stdout.decode()


INVALID = [pytest.param(r, i, case, id=f"{r.code}-invalid-{i}") for r in ALL_RULES for i, case in enumerate(r.INVALID)]


@pytest.mark.parametrize("rule, i, case", INVALID)
def test_rule_availability_matches_its_examples(rule, i, case):
    """A rule that says "never" has no finding with a fix; one that says "always" has none
    without (with `--devices N` allowed)."""
    nb = notebook_from_cells(split_example(case.code))  # `Invalid.code` is the notebook text
    check = check_notebook(nb, Selection())
    labelled = [d for d in label(check, Selection()) if d.code == rule.code]
    if rule.fix_availability is FixAvailability.NONE:
        assert all(d.applicability == "none" for d in labelled)
    elif rule.fix_availability is FixAvailability.ALWAYS:
        assert labelled and all(d.applicability != "none" for d in labelled)


def test_clean_notebooks_are_not_fixed_in_memory(monkeypatch):
    import nbrefactor.fixer as fixer

    def boom(*a, **k):
        raise AssertionError("the fixer ran for a notebook without fixable findings")

    monkeypatch.setattr(fixer, "fix_notebook", boom)
    clean = read_notebook(ROOT / "golden" / "trainer_already_safe" / "input.ipynb")
    assert label(check_notebook(clean, Selection()), Selection()) == []
    only_manual = notebook_from_cells(split_example(DEVICES_AND_TWICE))
    labelled = label(check_notebook(only_manual, Selection(select=("NBR303",))), Selection(select=("NBR303",)))
    assert [d.applicability for d in labelled] == ["none"]


def test_quiet_check_does_not_run_the_fixer_and_its_cached_results_are_not_served_to_a_labelled_run(tmp_path):
    """`check -q` (and GitHub annotations) print no fix labels, so they do not ask the fixer (most
    of a check's time); a later run that prints labels does not take those unlabelled results from
    the results cache."""
    import subprocess
    import sys

    shutil.copy(TRAINER, tmp_path / "trainer_bad.ipynb")
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['nbrefactor', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('nbrefactor', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('FIXER' if 'nbrefactor.fixer' in sys.modules else 'NO FIXER', file=sys.stderr)\n"
    )

    def run(*args):
        return subprocess.run([sys.executable, "-c", probe, "check", *args, "trainer_bad.ipynb"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})

    quiet = run("-q")
    assert "NBR401" in quiet.stdout and quiet.stderr.strip().endswith("NO FIXER"), quiet.stderr
    assert run("--output-format", "github").stderr.strip().endswith("NO FIXER")
    full = run()
    assert full.stderr.strip().endswith("FIXER") and "NO FIXER" not in full.stderr
    assert "fixable with `nbrefactor fix`" in full.stdout and "0 fixable" not in full.stdout, full.stdout
    assert quiet.stdout.splitlines() == full.stdout.splitlines()[:-1]  # the same findings, less the summary
