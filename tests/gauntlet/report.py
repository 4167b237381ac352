"""Print the gauntlet as a table: per notebook, what the fix did and how each side ran.

    python tests/gauntlet/report.py                 # run every case (2 at a time), then print
    python tests/gauntlet/report.py CASE...         # run only these cases
    python tests/gauntlet/report.py --last          # print what the last pytest run recorded
    python tests/gauntlet/report.py --jobs 1 -v     # one at a time; the fix's changes too

Run from the repository root with the `run` and `test` extras installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

LAST = harness.ROOT / "tests" / "artifacts" / "gauntlet" / "outcomes.json"


def verdict(case: harness.Case, got: dict) -> str:
    spec = case.spec
    expected = {k: spec[k] for k in ("fix", "original", "fixed")}
    actual = {k: got.get(k) for k in expected}
    if "xfail_reason" in spec:
        return "xfail" if actual == {**expected, **spec["observed"]} else ("XPASS" if actual == expected else "CHANGED")
    if actual != expected:
        return "UNEXPECTED"
    return "REGRESSION" if harness.regressions(_outcome(got)) else "ok"


def _outcome(got: dict) -> harness.Outcome:
    return harness.Outcome(**got)


def table(cases: list[harness.Case], results: dict[str, dict], verbose: bool = False) -> str:
    rows = [("case", "notebook", "fix", "original", "fixed", "time", "expected?")]
    for case in cases:
        got = results.get(case.name)
        notebook = case.spec["notebook"].rsplit("/", 1)[-1]
        if got is None:
            rows.append((case.name, notebook, "-", "-", "-", "-", "not run"))
            continue
        fix = got["fix"] + (f" ({len(got['fix_refused'])} refused)" if got.get("fix_refused") else "")
        rows.append((case.name, notebook, fix, got["original"] or "-", got["fixed"] or "-", f"{got['seconds']:.0f}s", verdict(case, got)))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for case in cases:
        got = results.get(case.name)
        notes = []
        if got and got["fix"] == "error":
            notes += [line for line in got["stderr"].splitlines() if line.startswith("error:")][-1:]
        if verbose and got:
            notes += got["fix_changes"] + [f"refused: {r}" for r in got["fix_refused"]]
        if got and "xfail_reason" not in case.spec:
            notes += [f"regression: {r}" for r in harness.regressions(_outcome(got))]
        if "xfail_reason" in case.spec:
            notes.append(f"xfail: {case.spec['xfail_reason']}")
        if notes:
            lines.append(f"\n{case.name} ({case.spec['notebook']}):")
            lines += [f"  {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help="case folder names (default: all)")
    parser.add_argument("--last", action="store_true", help="print the outcomes the last pytest run recorded")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    cases = [c for c in harness.load_cases() if not args.cases or c.name in args.cases]
    if args.last:
        if not LAST.exists():
            print(f"no recorded run: {LAST} is missing (run pytest tests/test_gauntlet.py first)", file=sys.stderr)
            return 2
        results = json.loads(LAST.read_text(encoding="utf-8"))
        seconds = sum(r["seconds"] for r in results.values())
        print(f"{len(results)} cases recorded ({seconds:.0f}s of case time)\n")
    else:
        if not harness.CORPUS.is_dir():
            print(f"{harness.CORPUS} is absent: nothing to run", file=sys.stderr)
            return 2
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="gauntlet-") as tmp:
            outcomes = harness.run_all(cases, Path(tmp), jobs=args.jobs)
        results = {n: harness.as_dict(o) for n, o in outcomes.items()}
        print(f"{len(cases)} cases in {time.monotonic() - start:.0f}s ({args.jobs} at a time)\n")
    print(table(cases, results, args.verbose), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
