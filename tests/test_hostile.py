"""The hostile-input corpus (tests/hostile.py) through the real CLI: every case ends with a result
or one `error:` line naming the file (exit 2), never a traceback or an exit 1 for a crash, writes
nothing for a file that errors, and stays under its ceilings for wall time and peak memory."""

from __future__ import annotations

import os

import pytest

from tests.hostile import Case, cases, run

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_input(case: Case, tmp_path):
    outcome = run(case, tmp_path)
    where = f"{case.name}: exit {outcome.exit}, {outcome.seconds:.1f} s, {outcome.megabytes:.0f} MB\n{outcome.stderr[-2000:]}"
    assert outcome.exit is not None and outcome.exit >= 0, f"killed (hung, or a signal): {where}"
    assert "Traceback" not in outcome.stderr, where
    assert outcome.exit in case.exit, where
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    if outcome.exit == 2:
        assert len(errors) == 1, where
        assert case.stderr in errors[0], where
        named = case.command[-1].replace("{path}", "").replace("{dir}", "")
        assert os.path.basename(named) in errors[0] or next(iter(case.files)).split("/")[-1] in errors[0], where
    else:
        assert not errors, where
    assert not outcome.changed, f"a file that errors was written: {outcome.changed}"
    assert outcome.seconds <= case.seconds, f"over the time ceiling of {case.seconds} s: {where}"
    assert outcome.megabytes <= case.megabytes, f"over the memory ceiling of {case.megabytes} MB: {where}"
