"""The real-notebook gauntlet: corpus notebooks run as they are and as `nbrefactor fix` leaves them,
each forked on 2 CPU processes by `nbrefactor run --compare`, offline, with the stand-ins of
tests/gauntlet/ (see tests/gauntlet/harness.py for what a case is).

Per case: the fix does what case.json says (changed / unchanged / error); each side ends as
case.json says; and, whatever case.json says, the fixed copy is never worse than the original (it
passes where the original passes, and fails no earlier and with no other error). A case whose
fix is wrong today keeps the right outcome in "fix" / "fixed", today's in "observed" (only the keys
that differ), and the fixer bug in "xfail_reason": it xfails while today's outcome holds, and fails
(asking to drop the xfail) once the fixer is right.

All cases run by default, once per session, two at a time (GAUNTLET_JOBS), in a few minutes on 2
CPU cores (small stand-in data: see tests/gauntlet/harness.py); `python tests/gauntlet/report.py`
prints the table.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.gauntlet import harness

CASES = harness.load_cases()
pytestmark = [
    pytest.mark.skipif(not harness.CORPUS.is_dir(), reason="../shared/corpus is absent"),
    pytest.mark.skipif(not CASES, reason="no cases in tests/gauntlet/"),
]
ARTIFACTS = harness.ROOT / "tests" / "artifacts" / "gauntlet"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("lightning")
    pytest.importorskip("matplotlib")
    jobs = int(os.environ.get("GAUNTLET_JOBS", "2"))
    results = harness.run_all(CASES, tmp_path_factory.mktemp("gauntlet"), jobs=jobs)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # for report.py --last
    (ARTIFACTS / "outcomes.json").write_text(json.dumps({n: harness.as_dict(o) for n, o in results.items()}, indent=2) + "\n")
    return results


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gauntlet(case, request):
    out = request.getfixturevalue("outcomes")[case.name]
    spec = case.spec
    log = f"\n--- stdout ---\n{out.stdout[-4000:]}\n--- stderr ---\n{out.stderr[-2000:]}"
    got = {"fix": out.fix, "original": out.original, "fixed": out.fixed}
    expected = {key: spec[key] for key in got}
    if "xfail_reason" in spec:
        if got == expected:
            pytest.fail(f"{case.name} now ends as expected: drop xfail_reason and observed from its case.json")
        today = {**expected, **spec["observed"]}
        assert got == today, f"expected today's outcome {today}, got {got}{log}"
        pytest.xfail(spec["xfail_reason"])
    assert got == expected, f"expected {expected}, got {got}{log}"
    assert not harness.regressions(out), "; ".join(harness.regressions(out)) + log


def test_cases_are_well_formed():
    for case in CASES:
        spec = case.spec
        assert {"notebook", "about", "fix", "original", "fixed"} <= spec.keys(), case.name
        assert spec["fix"] in ("changed", "unchanged", "error"), case.name
        assert ("xfail_reason" in spec) == ("observed" in spec), case.name
        assert "\n" not in spec["about"], case.name
        assert "slow" not in spec, f"{case.name}: every case runs by default; make it quick or replace it"
        if harness.CORPUS.is_dir():
            assert case.notebook.is_file(), f"{case.name}: {spec['notebook']} is not in the corpus"
