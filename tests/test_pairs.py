"""jupytext pairs and text notebooks: `check` and `fix` read a pair as `jupytext --sync` does and
write both sides so that `--sync` has nothing left to do; unpaired text notebooks are fixed in
their own format, cell by cell; `nbrefactor fix -` works as a `jupytext --pipe` filter.

The pair checks use jupytext's own command line (`--set-formats`, `--sync`, `--to`), not our
reading of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

SEED = ROOT / "golden" / "fabric_seed_data" / "input.ipynb"
EXPECTED = ROOT / "golden" / "fabric_seed_data" / "expected.ipynb"
EXPLORE = ROOT / "golden" / "fabric_exploration" / "input.ipynb"
CORPUS_TUTORIALS = ROOT.parent / "shared" / "corpus" / "Lightning-AI__tutorials"


def jupytext(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "jupytext", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def code_sources(path: Path) -> list[str]:
    import jupytext as jt

    return [c.source for c in jt.read(path).cells if c.cell_type == "code"]


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def bump(path: Path, seconds: float = 2.0) -> None:
    """Make `path` the newer side of its pair."""
    t = time.time() + seconds
    os.utime(path, (t, t))


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    nb = tmp_path / "nb.ipynb"
    shutil.copy(SEED, nb)
    jupytext("--set-formats", "ipynb,py:percent", "nb.ipynb", cwd=tmp_path)
    return nb, tmp_path / "nb.py"


def assert_sync_has_nothing_to_do(nb: Path, py: Path) -> None:
    before = snapshot(nb, py)
    r = jupytext("--sync", nb.name, cwd=nb.parent)
    assert f"Unchanged {nb.name}" in r.stderr + r.stdout and f"Unchanged {py.name}" in r.stderr + r.stdout, r.stderr
    assert snapshot(nb, py) == before


def assert_fixed(nb: Path, py: Path) -> None:
    expected = [c for c in code_sources(EXPECTED)]
    assert code_sources(nb) == expected
    converted = nb.parent / "converted.ipynb"
    jupytext("--to", "ipynb", "-o", converted.name, py.name, cwd=nb.parent)
    assert code_sources(converted) == expected  # the text side gives the fixed inputs
    assert "lines_to_next_cell" not in nb.read_text() + converted.read_text()


# --- pairs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("named", ["ipynb", "py"])
@pytest.mark.parametrize("newer", ["ipynb", "py"])
def test_fix_either_side_writes_both_and_sync_has_nothing_to_do(pair, named, newer):
    nb, py = pair
    bump(nb if newer == "ipynb" else py)
    before = snapshot(nb, py)
    target = nb if named == "ipynb" else py
    r = run_cli("fix", target.name, cwd=nb.parent)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert f"{target.name}: fixed (and {(py if target == nb else nb).name}, its jupytext pair)" in out
    assert all(p.read_bytes() != before[p] for p in (nb, py))
    assert py.stat().st_mtime >= nb.stat().st_mtime  # the text side is the newer one, as --sync leaves it
    assert_fixed(nb, py)
    assert_sync_has_nothing_to_do(nb, py)
    # Only the changed cell lost its outputs and execution count; ids and the rest are kept.
    old, new = json.loads(before[nb]), json.loads(nb.read_text())
    assert [c.get("id") for c in old["cells"]] == [c.get("id") for c in new["cells"]]
    assert new["cells"][1]["execution_count"] is None
    assert [c for i, c in enumerate(new["cells"]) if i != 1] == [c for i, c in enumerate(old["cells"]) if i != 1]
    again = run_cli("fix", target.name, cwd=nb.parent)
    assert again.returncode == 0 and b"Nothing to fix." in again.stdout
    assert snapshot(nb, py) == {p: p.read_bytes() for p in (nb, py)}


def test_an_edit_in_the_newer_py_is_what_gets_fixed(pair):
    nb, py = pair
    py.write_text(py.read_text().replace('MyDataset("data/")', 'MyDataset("edited/")'))
    bump(py)
    r = run_cli("fix", nb.name, cwd=nb.parent)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    sources = code_sources(nb)
    assert any('    dataset = MyDataset("edited/")' in s for s in sources), sources
    assert 'MyDataset("edited/")' in py.read_text() and "def train(fabric):\n    # Don't load" in py.read_text()
    assert_sync_has_nothing_to_do(nb, py)


def test_a_stale_text_side_is_rewritten_from_the_newer_ipynb(pair):
    nb, py = pair
    data = json.loads(nb.read_text())
    data["cells"][1]["source"] = [line.replace('"data/"', '"from-jupyter/"') for line in data["cells"][1]["source"]]
    nb.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    bump(nb)  # edited in Jupyter without jupytext: the .py is stale
    r = run_cli("fix", py.name, cwd=nb.parent)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert '    dataset = MyDataset("from-jupyter/")' in py.read_text()
    assert code_sources(py) == code_sources(nb)
    assert_sync_has_nothing_to_do(nb, py)


def test_check_reads_the_newer_side_and_a_folder_counts_the_pair_once(pair):
    nb, py = pair
    r = run_cli("check", ".", cwd=nb.parent)
    out = r.stdout.decode()
    assert r.returncode == 1 and out.count("NBR201") == 2 and "in 1 notebook" in out
    assert all(line.startswith("nb.ipynb:cell 2:") for line in out.splitlines() if "NBR201" in line)
    # The .py is edited (newer): check on the .ipynb sees the edit (the loader no longer reaches training).
    py.write_text(py.read_text().replace("dataloader = torch.utils.data.DataLoader(dataset)", "loader = torch.utils.data.DataLoader(dataset)"))
    bump(py)
    r = run_cli("check", "nb.ipynb", "nb.py", cwd=nb.parent)
    assert (r.returncode, r.stdout) == (0, b"All checks passed (1 notebook).\n"), r.stdout + r.stderr


def test_a_pair_changed_on_disk_while_fixing_is_refused_with_nothing_written(pair, monkeypatch):
    from click.testing import CliRunner

    import nbrefactor.fixer
    from nbrefactor.cli import main

    nb, py = pair
    bump(py)
    real = nbrefactor.fixer.fix_notebook

    def fix_then_someone_saves(*args, **kwargs):
        result = real(*args, **kwargs)
        py.write_text(py.read_text() + "\n# saved by an editor meanwhile\n")
        return result

    monkeypatch.setattr(nbrefactor.fixer, "fix_notebook", fix_then_someone_saves)
    monkeypatch.chdir(nb.parent)
    before_nb = nb.read_bytes()
    r = CliRunner().invoke(main, ["fix", "nb.ipynb"])
    assert r.exit_code == 2, r.output
    message = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert message == ["error: nb.py: changed on disk while nbrefactor was working (paired with nb.ipynb); nothing written, run it again"]
    assert nb.read_bytes() == before_nb  # the .ipynb was checked before anything was written
    assert py.read_text().endswith("# saved by an editor meanwhile\n")
    assert not [p for p in nb.parent.iterdir() if p.name.endswith(".nbrefactor")]


def test_pairing_from_a_jupytext_config_file(tmp_path):
    (tmp_path / "jupytext.toml").write_text('formats = "ipynb,py:percent"\n')
    nb = tmp_path / "nb.ipynb"
    shutil.copy(SEED, nb)
    jupytext("--sync", "nb.ipynb", cwd=tmp_path)  # creates nb.py from the config
    py = tmp_path / "nb.py"
    assert py.exists() and "formats" not in py.read_text()
    r = run_cli("fix", "nb.ipynb", cwd=tmp_path)
    assert r.returncode == 0 and b"(and nb.py, its jupytext pair)" in r.stdout, r.stdout + r.stderr
    assert_fixed(nb, py)
    assert_sync_has_nothing_to_do(nb, py)


def test_a_declared_partner_that_does_not_exist_is_not_created(tmp_path):
    nb = tmp_path / "nb.ipynb"
    data = json.loads(SEED.read_text())
    data["metadata"]["jupytext"] = {"formats": "ipynb,py:percent"}
    nb.write_text(json.dumps(data, indent=1) + "\n")
    r = run_cli("fix", "nb.ipynb", cwd=tmp_path)
    assert r.returncode == 0 and not (tmp_path / "nb.py").exists()
    assert code_sources(nb) == code_sources(EXPECTED)


# --- unpaired text notebooks --------------------------------------------------------------------


HAND_WRITTEN = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# A notebook written by hand: its markers are spelled its own way.

#%%
import torch
from lightning.fabric import Fabric


class MyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([float(i)])

# %% Load the data tags=["data"]
dataset = MyDataset()
dataloader = torch.utils.data.DataLoader(dataset)


def train(fabric):
    for batch in dataloader:
        ...

# %%   the launch
fabric = Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
'''


def _markers(text: str, fmt: str) -> list[str]:
    pattern = {"percent": r"^\s*#\s*%%", "light": r"^# [+-]\s*$", "md": r"^```"}[fmt]
    return [ln for ln in text.splitlines() if re.match(pattern, ln)]


def _header(text: str, fmt: str) -> str:
    end = "---\n"
    start = text.index(end)
    return text[: text.index(end, start + 1) + len(end)]


@pytest.mark.parametrize("fmt", ["py:percent", "py:light", "md"])
def test_unpaired_text_notebooks_are_fixed_in_their_own_format(tmp_path, fmt):
    ext = fmt.split(":")[0]
    target = tmp_path / f"nb.{ext}"
    jupytext("--to", fmt, "-o", target.name, str(SEED), cwd=tmp_path)
    before = target.read_text()
    r = run_cli("fix", target.name, cwd=tmp_path)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    after = target.read_text()
    assert after != before
    kind = fmt.split(":")[-1] if ":" in fmt else "md"
    assert _header(after, kind) == _header(before, kind)  # header lines as they were
    assert _markers(after, kind) == _markers(before, kind)  # markers as they were
    converted = tmp_path / "converted.ipynb"
    jupytext("--to", "ipynb", "-o", converted.name, target.name, cwd=tmp_path)
    assert "lines_to_next_cell" not in converted.read_text()
    assert code_sources(converted) == code_sources(EXPECTED)
    # Only the changed cell's lines differ: the text before it and the next cell are byte for
    # byte (the blank lines between them are settled so jupytext reads the same cell metadata).
    head = before[: before.index("# Don't load")]
    tail = before[before.index("fabric = Fabric") :]
    assert after.startswith(head[: head.rindex("\n")]) and after.endswith(tail)


@pytest.mark.parametrize("fmt", ["py:percent", "py:light", "md"])
def test_every_golden_case_fixed_as_a_text_notebook_gives_the_ipynb_fix(tmp_path, fmt):
    """The same codemods through the text path: the cells `fix` gives for the .ipynb, read back
    from the rewritten text with jupytext, without `lines_to_next_cell`."""
    import jupytext as jt

    from nbrefactor.fixer import fix_notebook
    from nbrefactor.notebook.model import read_notebook

    for case in sorted((ROOT / "golden").iterdir()):
        if not (case / "input.ipynb").exists():
            continue
        args = json.loads((case / "case.json").read_text()).get("args", []) if (case / "case.json").exists() else []
        options = {"unsafe_fixes": "--unsafe-fixes" in args, "devices": int(args[args.index("--devices") + 1]) if "--devices" in args else None}
        want = [(c.cell_type, c.source) for c in fix_notebook(read_notebook(case / "input.ipynb"), **options).after.cells]
        target = tmp_path / f"{case.name}.{fmt.split(':')[0]}"
        target.write_text(jt.writes(jt.read(case / "input.ipynb"), fmt=fmt))
        result = fix_notebook(read_notebook(target), **options)
        back = jt.reads(result.fixed, fmt=fmt)
        assert [(c.cell_type, c.source) for c in back.cells] == want, case.name
        assert not any("lines_to_next_cell" in c.metadata for c in back.cells), case.name


def test_hand_written_markers_and_metadata_stay_as_spelled(tmp_path):
    target = tmp_path / "hand.py"
    target.write_text(HAND_WRITTEN)
    r = run_cli("fix", "--unsafe-fixes", "hand.py", cwd=tmp_path)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    after = target.read_text()
    assert _markers(after, "percent") == ["# %% [markdown]", "#%%", '# %% Load the data tags=["data"]', "# %%   the launch"]
    assert after.startswith(HAND_WRITTEN[: HAND_WRITTEN.index("# %% Load")])
    assert after.endswith('# %%   the launch\nfabric = Fabric(accelerator="cuda", devices=2)\nfabric.launch(train)\n')
    import jupytext as jt

    cells = jt.reads(after, fmt="py:percent").cells
    original = jt.reads(HAND_WRITTEN, fmt="py:percent").cells
    assert cells[2].metadata["title"] == "Load the data" and cells[2].metadata["tags"] == ["data"]
    # No metadata added by the rewrite (jupytext's `lines_to_next_cell` may only go away: it
    # records blank lines that differ from PEP 8's, and PEP 8's count depends on the next cell).
    for new, old in zip(cells, original):
        assert {k: v for k, v in new.metadata.items() if k not in old.metadata or old.metadata[k] != v} == {}
        assert set(old.metadata) - set(new.metadata) <= {"lines_to_next_cell"}
    assert "    dataset = MyDataset()" in cells[2].source


def test_a_format_that_cannot_be_rewritten_by_cell_is_an_error_not_a_reformat(tmp_path):
    target = tmp_path / "nb.md"
    jupytext("--to", "md:myst", "-o", target.name, str(SEED), cwd=tmp_path)
    before = target.read_bytes()
    r = run_cli("fix", "nb.md", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 2 and "cannot rewrite this md:myst notebook cell by cell" in err and "Traceback" not in err
    assert target.read_bytes() == before


# --- pipes ------------------------------------------------------------------------------------


def test_fix_dash_reads_stdin_and_writes_stdout(tmp_path):
    import jupytext as jt

    percent = jt.writes(jt.read(SEED), fmt="py:percent")
    r = run_cli("fix", "-", stdin=percent.encode())
    assert r.returncode == 0, r.stderr.decode()
    assert [c.source for c in jt.reads(r.stdout.decode(), fmt="py:percent").cells if c.cell_type == "code"] == code_sources(EXPECTED)
    assert b"-: fixed" in r.stderr and b"cell 2: NBR201" in r.stderr  # messages on stderr only
    # JSON on stdin is an .ipynb, written back as one.
    r = run_cli("fix", "-", stdin=SEED.read_bytes())
    assert r.returncode == 0 and json.loads(r.stdout)["cells"][1]["source"] == json.loads(EXPECTED.read_text())["cells"][1]["source"]
    # --stdin-filename names it and gives its format.
    md = jt.writes(jt.read(SEED), fmt="md")
    r = run_cli("fix", "-", "--stdin-filename", "notebooks/nb.md", stdin=md.encode())
    assert r.returncode == 0 and b"notebooks/nb.md: fixed" in r.stderr
    assert r.stdout.decode().startswith(md[: md.index("```python")])
    # Findings that remain do not fail a pipe; --check does write nothing and exits 1.
    explore = jt.writes(jt.read(EXPLORE), fmt="py:percent").encode()
    r = run_cli("fix", "-", stdin=explore)
    assert r.returncode == 0 and b"NBR201" in r.stderr and r.stdout == explore
    r = run_cli("fix", "--check", "-", stdin=percent.encode())
    assert r.returncode == 1 and r.stdout == b""


def test_check_dash_with_stdin_filename(tmp_path):
    import jupytext as jt

    percent = jt.writes(jt.read(SEED), fmt="py:percent")
    r = run_cli("check", "-", "--stdin-filename", "nb.py", stdin=percent.encode())
    assert r.returncode == 1 and r.stdout.decode().startswith("nb.py:cell 2:2:11: NBR201")
    r = run_cli("check", "-", stdin=percent.encode())
    assert r.returncode == 1 and r.stdout.decode().startswith("-:cell 2:2:11: NBR201")


def test_jupytext_sync_pipe_through_nbrefactor_fix(pair):
    nb, py = pair
    command = f"{sys.executable} -m nbrefactor fix -"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "jupytext", "--sync", "--pipe", command, "nb.ipynb"],
        cwd=nb.parent, capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert code_sources(nb) == code_sources(EXPECTED)
    assert code_sources(py) == code_sources(EXPECTED)
    assert "lines_to_next_cell" not in nb.read_text()
    assert_sync_has_nothing_to_do(nb, py)


# --- the corpus ---------------------------------------------------------------------------------


def _metadata_kept(old: dict, new: dict) -> bool:
    """The same cell metadata, except that jupytext's derived `lines_to_next_cell` may keep its
    value or go away (never appear or change)."""
    strip = lambda md: {k: v for k, v in md.items() if k != "lines_to_next_cell"}
    return strip(old) == strip(new) and new.get("lines_to_next_cell") in (None, old.get("lines_to_next_cell"))


PERCENT_FILES = sorted(CORPUS_TUTORIALS.glob("*.py")) if CORPUS_TUTORIALS.is_dir() else []


@pytest.mark.skipif(not PERCENT_FILES, reason="../shared/corpus is absent")
def test_corpus_percent_notebooks_are_fixed_in_their_own_format(tmp_path):
    """Every py:percent tutorial, checked and fixed in place (unsafe fixes on), stays a valid
    jupytext notebook with the same cells apart from the changed ones."""
    import difflib

    import jupytext as jt
    import libcst as cst

    from nbrefactor.notebook.join import join
    from nbrefactor.notebook.model import read_notebook
    from nbrefactor.notebook.text import cell_layout

    copies = []
    for src in PERCENT_FILES:
        assert src.read_text().lstrip().startswith("# %%") or "format_name: percent" in src.read_text()
        dst = tmp_path / src.name
        dst.write_bytes(src.read_bytes())  # the corpus is read-only; its copies are not
        copies.append(dst)
    r = run_cli("check", "--exit-zero", "-q", *[p.name for p in copies], cwd=tmp_path)
    assert r.returncode == 0 and b"Traceback" not in r.stderr
    r = run_cli("fix", "--unsafe-fixes", "--exit-zero", *[p.name for p in copies], cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    changed = 0
    for src, dst in zip(PERCENT_FILES, copies):
        original_text, fixed_text = src.read_text(), dst.read_text()
        if fixed_text == original_text:
            continue
        changed += 1
        before, after = jt.reads(original_text, fmt="py:percent"), jt.reads(fixed_text, fmt="py:percent")
        old_layout, new_layout = cell_layout(original_text, "py:percent"), cell_layout(fixed_text, "py:percent")
        assert len(new_layout.spans) == len(after.cells)  # a valid jupytext notebook, cell for cell
        assert fixed_text[: new_layout.spans[0][0]] == original_text[: old_layout.spans[0][0]] or not old_layout.spans[0][0]

        def text_of(layout, i):
            start, end = layout.spans[i]
            return "".join(layout.lines[start:end]).rstrip("\n")

        old = [(c.cell_type, c.source) for c in before.cells]
        new = [(c.cell_type, c.source) for c in after.cells]
        blocks = difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes()
        for tag, i1, i2, j1, j2 in blocks:
            if tag == "equal":  # untouched cells: same source, type, metadata and text (marker included)
                for i, j in zip(range(i1, i2), range(j1, j2)):
                    assert text_of(new_layout, j) == text_of(old_layout, i), (dst.name, i)
                    assert _metadata_kept(before.cells[i].metadata, after.cells[j].metadata), (dst.name, i)
            elif tag in ("replace", "insert"):
                assert tag == "replace" and j2 - j1 <= i2 - i1, (dst.name, tag, i1, j1)  # fix adds no cells
                for i, j in zip(range(i1, i2), range(j1, j2)):
                    assert after.cells[j].cell_type == "code"
                    assert _metadata_kept(before.cells[i].metadata, after.cells[j].metadata), (dst.name, i)
                    assert new_layout.lines[new_layout.spans[j][0]] == old_layout.lines[old_layout.spans[i][0]]  # marker
        # The changed cells parse (the whole notebook as one module).
        fixed = read_notebook(dst)
        cst.parse_module(join(fixed).code)
    print(f"{len(PERCENT_FILES)} py:percent tutorials, {changed} changed by fix")
    assert changed >= 1


@pytest.mark.parametrize("data", [
    b'{"metadata": {"jupytext": {"formats": "ipynb,py:percent"}}}',
    b'\xff\xfe{"jupytext": 1, "formats": 2}',  # bytes that do not decode, before the words
    "{\"jupytext\": \"caf\u00e9 formats\"}".encode(),  # multibyte characters beside them
    b'{"jupyt\xffext": 1, "formats": 2}',  # a word broken by a byte that does not decode
    b'{"metadata": {}}',
])
def test_a_file_may_be_paired_when_its_decoded_text_says_so(tmp_path, data):
    """`may_be_paired` looks for the words in the bytes; that must be what the decoded text says."""
    from nbrefactor.notebook.pairs import may_be_paired

    path = tmp_path / "nb.ipynb"
    path.write_bytes(data)
    text = data.decode("utf-8", errors="replace")
    assert may_be_paired(path) == may_be_paired(path, data) == may_be_paired(path, text)
    if "formats" in text and "jupytext" in text:
        assert may_be_paired(path)
