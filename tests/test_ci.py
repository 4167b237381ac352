"""CI runs exactly the README's test command."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command[^>]*-->\s*```bash\n(.+?)\n```", readme, re.S)
    assert block, "README lost its marked test command"
    assert block.group(1).strip() in (ROOT / ".ci" / "run").read_text()
