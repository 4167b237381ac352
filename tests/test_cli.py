"""The `check` and `rules` commands as a user runs them: formats, exit codes, selection, noqa,
configuration, and a start-up that imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "fabric_bad.ipynb"


def test_text_format_and_exit_code():
    r = run_cli("check", str(EXAMPLE))
    assert r.returncode == 1
    lines = r.stdout.decode().splitlines()
    assert lines[0] == f"{EXAMPLE}:cell 3:2:5: NBR101 `.cuda()` moves memory to the GPU in the notebook process before the launch point; forked training processes cannot use CUDA"
    assert lines[-1].startswith("Found 3 findings in 1 notebook")


def test_json_format_uses_ruff_field_names():
    r = run_cli("check", "--output-format", "json", str(EXAMPLE))
    items = json.loads(r.stdout)
    first = items[0]
    assert set(first) >= {"code", "message", "filename", "cell", "location", "end_location", "fix", "noqa_row"}
    assert first["code"] == "NBR101" and first["cell"] == 3
    assert first["location"] == {"row": 2, "column": 5}
    assert first["end_location"] == {"row": 2, "column": 27}
    assert first["fix"]["applicability"] == "safe"  # plain `fix` wraps it into train(fabric)


def test_github_and_sarif_formats():
    gh = run_cli("check", "--output-format", "github", str(EXAMPLE)).stdout.decode().splitlines()
    assert gh[0].startswith("::error title=nbrefactor (NBR101) cell 3,file=") and ",line=2,col=5," in gh[0]
    sarif = json.loads(run_cli("check", "--output-format", "sarif", str(EXAMPLE)).stdout)
    run = sarif["runs"][0]
    assert sarif["version"] == "2.1.0" and {r["id"] for r in run["tool"]["driver"]["rules"]} >= {"NBR101", "NBR402"}
    assert run["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 2
    assert run["results"][0]["properties"]["cell"] == 3


def test_select_ignore_and_exit_zero():
    r = run_cli("check", "--select", "NBR2", str(EXAMPLE))
    assert {ln.split()[2] for ln in r.stdout.decode().splitlines()[:-1]} == {"NBR201"}
    r = run_cli("check", "--ignore", "NBR101,NBR201", str(EXAMPLE))
    assert r.returncode == 0
    r = run_cli("check", "--exit-zero", str(EXAMPLE))
    assert r.returncode == 0 and b"NBR101" in r.stdout
    r = run_cli("check", "--select", "NBR999", str(EXAMPLE))
    assert r.returncode == 2 and b"unknown rule selector `NBR999`" in r.stderr


def test_noqa_on_the_line(tmp_path):
    nb = json.loads(EXAMPLE.read_text())
    nb["cells"][2]["source"][1] = "x = torch.tensor(1).cuda()  # noqa: NBR101\n"
    p = tmp_path / "noqa.ipynb"
    p.write_text(json.dumps(nb))
    out = run_cli("check", str(p)).stdout.decode()
    assert "NBR101" not in out and "NBR201" in out
    nb["cells"][3]["source"][2] = "dataloader = torch.utils.data.DataLoader(dataset)  # noqa\n"
    p.write_text(json.dumps(nb))
    out = run_cli("check", str(p)).stdout.decode()
    assert out.count("NBR201") == 1


def test_pyproject_configuration(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = ["NBR2"]\n')
    nb = tmp_path / "nb.ipynb"
    nb.write_bytes(EXAMPLE.read_bytes())
    out = run_cli("check", "nb.ipynb", cwd=tmp_path).stdout.decode()
    assert "NBR101" in out and "NBR201" not in out
    out = run_cli("check", "--isolated", "nb.ipynb", cwd=tmp_path).stdout.decode()
    assert "NBR201" in out
    (tmp_path / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = "NBR2"\n')
    r = run_cli("check", "nb.ipynb", cwd=tmp_path)
    assert r.returncode == 2 and b"must be a list of strings" in r.stderr


def test_rules_catalogue_and_docs():
    from codemods.rules import ALL_RULES

    r = run_cli("rules")
    assert r.returncode == 0 and r.stdout.decode().count("NBR") == len(ALL_RULES)
    doc = run_cli("rules", "nbr101").stdout.decode()
    assert "## Why is this bad?" in doc and "Fix is sometimes available." in doc
    assert run_cli("rules", "NBR999").returncode == 2


def test_readme_rule_table_is_generated_from_the_rules():
    from nbrefactor.cli import rule_table

    assert rule_table() in (ROOT / "README.md").read_text(), "README's rule table is stale: paste `nbrefactor rules --output-format markdown`"


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from nbrefactor.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'lightning', 'nbclient', 'jupyter_server', 'jupytext', 'nbformat', 'libcst') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("args", [["--version"], ["check", "--help"], ["rules", "--help"]])
def test_other_entry_points(args):
    assert run_cli(*args).returncode == 0
