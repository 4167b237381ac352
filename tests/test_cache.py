"""The results cache of `nbrefactor check` (nbrefactor/cache.py), through the real command line.

A warm run prints exactly what a cold run prints, in every format, and analyses nothing (the
`NBREFACTOR_CACHE_DEBUG=1` line `cache: analysing PATH` is printed by the code that analyses a
file, whichever process runs it; and a warm run imports no parser at all). Whatever changes what
a check would say (the file, its jupytext partner, the settings) invalidates; a planted, forged,
corrupt or symlinked cache never changes what is printed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SEED = ROOT / "golden" / "fabric_seed_data" / "input.ipynb"
NOTEBOOKS = {
    "seed.ipynb": SEED,
    "trainer.ipynb": ROOT / "golden" / "trainer_synthetic" / "input.ipynb",
    "safe.ipynb": ROOT / "golden" / "fabric_already_safe" / "input.ipynb",
    "logger.ipynb": ROOT / "golden" / "trainer_logger_version" / "input.ipynb",
    "cuda.ipynb": ROOT / "golden" / "trainer_cuda_around_fit" / "input.ipynb",
}
R_NOTEBOOK = ROOT.parent / "shared" / "corpus" / "IRkernel__IRkernel" / "example-notebooks__Display.ipynb"


@pytest.fixture
def project(tmp_path) -> Path:
    """A project (pyproject.toml) with five Lightning notebooks (enough for `check` to fork workers
    when cold), one of another kernel (a note), and one that is not JSON (an error, which is never cached)."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[tool.nbrefactor]\n")
    for name, src in NOTEBOOKS.items():
        shutil.copy(src, root / name)
    if R_NOTEBOOK.is_file():
        shutil.copy(R_NOTEBOOK, root / "r.ipynb")
    (root / "broken.ipynb").write_text("not json")
    return root


def run(*args: str, cwd: Path, key_home: Path, debug: bool = False, env: dict | None = None, python: tuple[str, ...] = ()):
    environ = {k: v for k, v in os.environ.items() if k not in ("NBREFACTOR_CACHE_DIR", "NBREFACTOR_CACHE_DEBUG")}
    environ.update({"PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(key_home)})
    if debug:
        environ["NBREFACTOR_CACHE_DEBUG"] = "1"
    environ.update(env or {})
    return subprocess.run([sys.executable, *python, "-m", "nbrefactor", *args], cwd=cwd, capture_output=True, env=environ, timeout=300, check=False)


def analysed(result) -> list[str]:
    prefix = "cache: analysing "
    return sorted(line[len(prefix):] for line in result.stderr.decode().splitlines() if line.startswith(prefix))


_code_at_start: list[str] = []


@pytest.fixture(autouse=True)
def _code_fingerprint():
    """Entries are keyed by nbrefactor's code: an edit to this checkout during a test (another
    session at work in it) rightly invalidates them all. Such a test cannot tell, and is skipped."""
    from nbrefactor.cache import code_fingerprint

    _code_at_start[:] = [code_fingerprint()]
    yield


def expect_analysed(result, expected: list[str]) -> None:
    from nbrefactor.cache import code_fingerprint

    found = analysed(result)
    if found != expected and code_fingerprint() != _code_at_start[0]:
        pytest.skip("nbrefactor's code changed during the test: every entry was rightly invalidated")
    assert found == expected


def entries(root: Path) -> list[Path]:
    return sorted((root / ".nbrefactor_cache" / "v1").glob("*.json"))


def same(a, b) -> None:
    assert (a.returncode, a.stdout.decode(), a.stderr.decode()) == (b.returncode, b.stdout.decode(), b.stderr.decode())


@pytest.fixture
def key_home(tmp_path) -> Path:
    return tmp_path / "xdg-cache"


# --- warm equals cold ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [(), ("--output-format", "concise"), ("--output-format", "json"), ("--output-format", "github"),
     ("--output-format", "sarif"), ("--statistics",), ("--statistics", "--output-format", "json")],
    ids=lambda o: "-".join(o) or "text",
)
def test_a_warm_run_prints_exactly_what_a_cold_run_prints(project, key_home, options):
    cold = run("check", *options, ".", cwd=project, key_home=key_home)
    assert cold.returncode == 2, cold.stderr  # broken.ipynb is an error; the others are findings and notes
    assert entries(project), "the cold run stored nothing"
    warm = run("check", *options, ".", cwd=project, key_home=key_home)
    same(cold, warm)
    same(cold, run("check", *options, ".", cwd=project, key_home=key_home))  # what the first warm run kept (SARIF's rules)
    uncached = run("check", "--no-cache", *options, ".", cwd=project, key_home=key_home)
    same(cold, uncached)


@pytest.mark.parametrize("options", [(), ("--output-format", "sarif"), ("--statistics",)], ids=["text", "sarif", "statistics"])
def test_a_warm_run_analyses_nothing_and_imports_no_parser(project, key_home, options):
    (project / "broken.ipynb").unlink()  # an error is never cached (it is cheap, and may depend on the time budget)
    cold = run("check", *options, ".", cwd=project, key_home=key_home, debug=True)
    assert len(analysed(cold)) == len(list(project.glob("*.ipynb")))
    warm = run("check", *options, ".", cwd=project, key_home=key_home, debug=True, python=("-X", "importtime"))
    expect_analysed(warm, [])
    imported = {line.split("|")[-1].strip() for line in warm.stderr.decode().splitlines() if line.startswith("import time:")}
    assert imported, "no -X importtime output"
    heavy = {m for m in imported if m.split(".")[0] in ("libcst", "jupytext", "nbformat", "codemods") or m in ("multiprocessing", "concurrent.futures.process")}
    assert not heavy, f"a warm run imported {sorted(heavy)}"
    assert warm.stdout == cold.stdout and warm.returncode == cold.returncode == 1


def test_the_pre_commit_mode_is_cached_too(project, key_home):
    names = ["seed.ipynb", "safe.ipynb", "trainer.ipynb", "logger.ipynb"]
    cold = run("check", "--pre-commit", "--output-format", "github", *names, cwd=project, key_home=key_home, debug=True)
    assert analysed(cold) == sorted(names)
    warm = run("check", "--pre-commit", "--output-format", "github", *names, cwd=project, key_home=key_home, debug=True)
    expect_analysed(warm, [])
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout) and cold.returncode == 1


# --- what invalidates -------------------------------------------------------------------------


def test_editing_a_notebook_invalidates_only_that_notebook(project, key_home):
    run("check", ".", cwd=project, key_home=key_home)
    nb = json.loads((project / "safe.ipynb").read_text())
    nb["cells"].insert(0, {"cell_type": "code", "execution_count": None, "id": "added", "metadata": {}, "outputs": [],
                           "source": ["import torch\n", "x = torch.zeros(2).cuda()\n"]})
    (project / "safe.ipynb").write_text(json.dumps(nb, indent=1))
    after = run("check", ".", cwd=project, key_home=key_home, debug=True)
    expect_analysed(after, ["broken.ipynb", "safe.ipynb"])  # broken: errors are not cached
    truth = run("check", "--no-cache", ".", cwd=project, key_home=key_home)
    assert after.stdout == truth.stdout and after.returncode == truth.returncode
    assert b"safe.ipynb" in after.stdout


def test_changing_the_selection_or_the_configuration_invalidates(project, key_home):
    run("check", ".", cwd=project, key_home=key_home)
    every = len(list(project.glob("*.ipynb")))
    for args in (("--select", "NBR2"), ("--ignore", "NBR201"), ("--extend-select", "NBR1")):
        r = run("check", *args, ".", cwd=project, key_home=key_home, debug=True)
        assert len(analysed(r)) == every, args
        truth = run("check", "--no-cache", *args, ".", cwd=project, key_home=key_home)
        assert r.stdout == truth.stdout, args
        again = run("check", *args, ".", cwd=project, key_home=key_home, debug=True)
        expect_analysed(again, ["broken.ipynb"])
    (project / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = ["NBR1"]\n')
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)
    assert len(analysed(r)) == every
    assert b"NBR101" not in r.stdout and b"NBR201" in r.stdout
    (project / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = ["NBR201"]\n')  # as `--ignore NBR201` above
    expect_analysed(run("check", ".", cwd=project, key_home=key_home, debug=True), ["broken.ipynb"])
    (project / "pyproject.toml").write_text('[tool.nbrefactor]\nmax-cells = 5000\n')  # a limit is a setting too
    assert len(analysed(run("check", ".", cwd=project, key_home=key_home, debug=True))) == every


def test_no_cache_writes_nothing(project, key_home):
    r = run("check", "--no-cache", ".", cwd=project, key_home=key_home, debug=True)
    assert r.returncode == 2
    assert not (project / ".nbrefactor_cache").exists()
    assert not key_home.exists()


def test_the_cache_folder_is_tagged_and_ignored_by_git(project, key_home):
    run("check", ".", cwd=project, key_home=key_home)
    folder = project / ".nbrefactor_cache"
    assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (folder / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    key = key_home / "nbrefactor" / "key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32


def test_cache_dir_from_the_configuration_and_from_the_environment(project, key_home, tmp_path):
    (project / "pyproject.toml").write_text('[tool.nbrefactor]\ncache-dir = "build/nbr"\n')  # build/ is made too
    run("check", ".", cwd=project, key_home=key_home)
    assert list((project / "build" / "nbr" / "v1").glob("*.json"))
    assert not (project / ".nbrefactor_cache").exists()
    elsewhere = tmp_path / "elsewhere"
    run("check", ".", cwd=project, key_home=key_home, env={"NBREFACTOR_CACHE_DIR": str(elsewhere)})
    assert list((elsewhere / "v1").glob("*.json"))


def test_a_cache_dir_outside_the_project_is_an_error(project, key_home):
    (project / "pyproject.toml").write_text('[tool.nbrefactor]\ncache-dir = "../outside"\n')
    r = run("check", ".", cwd=project, key_home=key_home)
    assert r.returncode == 2
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cache-dir" in lines[0], lines
    assert not (project.parent / "outside").exists()


def test_notebooks_outside_the_project_are_not_cached(project, key_home, tmp_path):
    outside = tmp_path / "outside.ipynb"
    shutil.copy(SEED, outside)
    run("check", str(outside), cwd=project, key_home=key_home)
    assert entries(project) == [] or all(b"outside.ipynb" not in e.read_bytes() for e in entries(project))
    expect_analysed(run("check", str(outside), cwd=project, key_home=key_home, debug=True), [str(outside)])


def test_editing_a_pair_partner_invalidates(tmp_path, key_home):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[tool.nbrefactor]\n")
    shutil.copy(SEED, root / "nb.ipynb")
    subprocess.run([sys.executable, "-m", "jupytext", "--set-formats", "ipynb,py:percent", "nb.ipynb"], cwd=root, check=True, capture_output=True)
    py = root / "nb.py"
    cold = run("check", "nb.ipynb", cwd=root, key_home=key_home, debug=True)
    expect_analysed(cold, ["nb.ipynb"])
    warm = run("check", "nb.ipynb", cwd=root, key_home=key_home, debug=True)
    expect_analysed(warm, [])
    assert warm.stdout == cold.stdout
    # The partner is the newer side and silences the first finding.
    assert 'dataset = MyDataset("data/")\n' in py.read_text()
    py.write_text(py.read_text().replace('dataset = MyDataset("data/")\n', 'dataset = MyDataset("data/")  # noqa: NBR201\n', 1))
    t = time.time() + 5
    os.utime(py, (t, t))
    after = run("check", "nb.ipynb", cwd=root, key_home=key_home, debug=True)
    expect_analysed(after, ["nb.ipynb"])
    truth = run("check", "--no-cache", "nb.ipynb", cwd=root, key_home=key_home)
    assert after.stdout == truth.stdout and after.stdout != cold.stdout
    # Touching the .ipynb makes it the side that is read (jupytext --sync): that invalidates too.
    t += 5
    os.utime(root / "nb.ipynb", (t, t))
    again = run("check", "nb.ipynb", cwd=root, key_home=key_home, debug=True)
    expect_analysed(again, ["nb.ipynb"])
    assert again.stdout == run("check", "--no-cache", "nb.ipynb", cwd=root, key_home=key_home).stdout


# --- untrusted caches -------------------------------------------------------------------------


def _rewrite(entry: Path, change, secret: bytes | None) -> None:
    """Edit an entry's outcome; re-MAC it with `secret` (None: keep the old MAC)."""
    raw = entry.read_bytes()
    magic, mac, body = raw.split(b"\n", 2)
    data = json.loads(body)
    change(data["outcome"])
    body = json.dumps(data).encode()
    if secret is not None:
        mac = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    entry.write_bytes(magic + b"\n" + mac + b"\n" + body)


def _silence(outcome: dict) -> None:
    outcome["diagnostics"] = []


def test_a_tampered_entry_is_ignored_and_a_correctly_signed_one_is_used(project, key_home):
    (project / "broken.ipynb").unlink()
    cold = run("check", "seed.ipynb", cwd=project, key_home=key_home)
    assert cold.returncode == 1 and b"NBR201" in cold.stdout
    [entry] = [e for e in entries(project) if b'"seed.ipynb' in e.read_bytes()]
    secret = (key_home / "nbrefactor" / "key").read_bytes()
    # The victim's key, a body changed without it: ignored, the true findings are printed.
    _rewrite(entry, _silence, None)
    r = run("check", "seed.ipynb", cwd=project, key_home=key_home, debug=True)
    same_out = (r.returncode, r.stdout) == (cold.returncode, cold.stdout)
    assert same_out
    expect_analysed(r, ["seed.ipynb"])
    # ... and overwritten by the true result.
    expect_analysed(run("check", "seed.ipynb", cwd=project, key_home=key_home, debug=True), [])
    # Only someone holding the key could make the cache lie: this is what the MAC stands between.
    _rewrite(entry, _silence, secret)
    lied = run("check", "seed.ipynb", cwd=project, key_home=key_home)
    assert lied.returncode == 0 and b"NBR201" not in lied.stdout


def test_a_cache_committed_from_another_machine_is_ignored(project, key_home, tmp_path):
    (project / "broken.ipynb").unlink()
    stranger = tmp_path / "stranger-home"
    run("check", ".", cwd=project, key_home=stranger)
    stranger_key = (stranger / "nbrefactor" / "key").read_bytes()
    for entry in entries(project):  # the stranger's cache says every notebook is clean
        _rewrite(entry, _silence, stranger_key)
    fooled = run("check", ".", cwd=project, key_home=stranger, debug=True)
    expect_analysed(fooled, [])  # it fools its own author...
    assert fooled.returncode == 0
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)
    truth = run("check", "--no-cache", ".", cwd=project, key_home=key_home)
    assert (r.returncode, r.stdout) == (truth.returncode, truth.stdout) == (1, truth.stdout)
    assert len(analysed(r)) == len(list(project.glob("*.ipynb")))


@pytest.mark.parametrize("damage", ["truncated", "empty", "not json", "huge"])
def test_a_corrupt_entry_is_ignored(project, key_home, damage):
    cold = run("check", ".", cwd=project, key_home=key_home)
    for entry in entries(project):
        raw = entry.read_bytes()
        entry.write_bytes({"truncated": raw[: len(raw) // 2], "empty": b"", "not json": raw.replace(b"{", b"(", 1),
                           "huge": raw + b" " * (17 * 1024 * 1024)}[damage])
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)
    assert (r.returncode, r.stdout) == (cold.returncode, cold.stdout)
    assert len(analysed(r)) == len(list(project.glob("*.ipynb")))
    expect_analysed(run("check", ".", cwd=project, key_home=key_home, debug=True), ["broken.ipynb"])


def test_a_symlinked_cache_folder_is_refused(project, key_home, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (project / ".nbrefactor_cache").symlink_to(target)
    cold = run("check", ".", cwd=project, key_home=key_home, debug=True)
    assert "symbolic link" in cold.stderr.decode()
    assert list(target.iterdir()) == []
    truth = run("check", "--no-cache", ".", cwd=project, key_home=key_home)
    assert (cold.returncode, cold.stdout) == (truth.returncode, truth.stdout)


def test_a_symlinked_entry_is_not_followed(project, key_home, tmp_path):
    run("check", ".", cwd=project, key_home=key_home)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for entry in entries(project):
        entry.unlink()
        entry.symlink_to(victim)
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)
    assert len(analysed(r)) == len(list(project.glob("*.ipynb")))
    assert victim.read_text() == "keep me"
    assert all(not e.is_symlink() for e in entries(project))  # replaced by real entries


def test_an_entry_that_is_a_fifo_does_not_block(project, key_home):
    run("check", ".", cwd=project, key_home=key_home)
    for entry in entries(project):
        entry.unlink()
        os.mkfifo(entry)
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)  # run() times out after 300 s
    assert len(analysed(r)) == len(list(project.glob("*.ipynb")))
    assert all(e.is_file() for e in entries(project))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to give the folder to another user")
def test_a_cache_folder_of_another_user_is_refused(project, key_home):
    folder = project / ".nbrefactor_cache"
    folder.mkdir()
    os.chown(folder, 54321, 54321)
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)
    assert "not owned by this user" in r.stderr.decode()
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_project_is_checked_uncached(project, key_home):
    truth = run("check", "--no-cache", ".", cwd=project, key_home=key_home)
    os.chmod(project, 0o555)
    try:
        r = run("check", ".", cwd=project, key_home=key_home)
    finally:
        os.chmod(project, 0o755)
    same(truth, r)
    assert not (project / ".nbrefactor_cache").exists()


def test_an_unwritable_cache_folder_is_silent(project, key_home):
    """A cache folder that cannot be made (here: its parent is a file) leaves the run uncached and
    prints exactly what an uncached run prints."""
    (project / "pyproject.toml").write_text('[tool.nbrefactor]\ncache-dir = "pyproject.toml/cache"\n')
    truth = run("check", "--no-cache", ".", cwd=project, key_home=key_home)
    r = run("check", ".", cwd=project, key_home=key_home)
    same(truth, r)
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)
    assert "cache: off: " in r.stderr.decode()


def test_an_unusable_key_turns_the_cache_off(project, key_home):
    (key_home / "nbrefactor").mkdir(parents=True)
    key = key_home / "nbrefactor" / "key"
    key.write_bytes(b"x" * 32)
    os.chmod(key, 0o644)  # readable by others: not a secret
    truth = run("check", "--no-cache", ".", cwd=project, key_home=key_home)
    r = run("check", ".", cwd=project, key_home=key_home, debug=True)
    assert (r.returncode, r.stdout) == (truth.returncode, truth.stdout)
    assert "not a private file" in r.stderr.decode()
    assert not (project / ".nbrefactor_cache").exists()


def test_concurrent_runs_do_not_corrupt_the_cache(project, key_home):
    truth = run("check", "--no-cache", ".", cwd=project, key_home=key_home)
    environ = {k: v for k, v in os.environ.items() if k not in ("NBREFACTOR_CACHE_DIR", "NBREFACTOR_CACHE_DEBUG")}
    environ.update({"PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(key_home)})
    procs = [subprocess.Popen([sys.executable, "-m", "nbrefactor", "check", "."], cwd=project, env=environ,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert (p.returncode, out, err) == (truth.returncode, truth.stdout, truth.stderr)
    expect_analysed(run("check", ".", cwd=project, key_home=key_home, debug=True), ["broken.ipynb"])
    assert not list((project / ".nbrefactor_cache" / "v1").glob("*.tmp"))


# --- clean and pruning --------------------------------------------------------------------------


def test_clean_removes_the_cache(project, key_home, tmp_path):
    run("check", ".", cwd=project, key_home=key_home)
    r = run("clean", cwd=project, key_home=key_home)
    assert r.returncode == 0 and not (project / ".nbrefactor_cache").exists()
    assert run("clean", cwd=project, key_home=key_home).returncode == 0
    (project / ".nbrefactor_cache").mkdir()
    (project / ".nbrefactor_cache" / "precious").write_text("not ours")
    r = run("clean", cwd=project, key_home=key_home)
    assert r.returncode == 2 and r.stderr.decode().startswith("error: ") and len(r.stderr.decode().splitlines()) == 1
    assert (project / ".nbrefactor_cache" / "precious").exists()


def test_entries_unused_for_a_month_are_pruned(tmp_path, monkeypatch):
    from nbrefactor import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NBREFACTOR_CACHE_DIR", raising=False)
    c = cache.Cache.open(tmp_path, tmp_path / ".nbrefactor_cache")
    c.settle({})
    nb = tmp_path / "a.ipynb"
    nb.write_text("{}")
    probe = c.probe(nb)
    c.store(probe, {"diagnostics": [], "notes": [], "checked": True, "script": False}, None)
    assert c.lookup(probe) is not None
    assert c.prune() == 0  # a fresh entry stays
    assert c.prune(now=time.time() + 31 * 24 * 3600) == 1  # a month later, unused: removed
    assert c.lookup(probe) is None
    c.store(probe, {"diagnostics": [], "notes": [], "checked": True, "script": False}, None)
    entry = next(c.entries.glob("*.json"))
    os.utime(entry, (time.time() - 40 * 24 * 3600,) * 2)
    assert c.prune() == 0  # pruning runs at most once a day...
    os.utime(c.entries / ".last-prune", (time.time() - 2 * 24 * 3600,) * 2)
    assert c.lookup(probe) is not None  # ...a hit marks the entry used...
    assert c.prune() == 0  # ...so it stays
    os.utime(entry, (time.time() - 40 * 24 * 3600,) * 2)
    os.utime(c.entries / ".last-prune", (time.time() - 2 * 24 * 3600,) * 2)
    assert c.prune() == 1
