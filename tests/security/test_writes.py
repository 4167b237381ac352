"""Write safety (issue 12, items 3-5): one test per attack, each with the refusal or the kept
property it expects.

3. lost update (an editor's save while the new file is synced, or right before the rename), a pair
   left half written, temporary files after SIGTERM/SIGINT and after SIGKILL;
4. `nbrefactor run -o/--report` over existing files, and onto the notebook through links;
5. symlinks, hard links, mode, owner, extended attributes, the umask of new files, CRLF.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "golden" / "fabric_seed_data" / "input.ipynb"  # `fix` changes it (NBR201)
CHANGED = "changed on disk while nbrefactor was working; nothing written, run it again"
EDITOR = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, "saved": "by the editor"}\n'


def fix(*args: str):
    from nbrefactor.cli import main

    return CliRunner().invoke(main, ["fix", *args])


def errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".nbrefactor" in p.name)


@pytest.fixture
def nb(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "nb.ipynb"
    shutil.copy(SEED, p)
    return p


@pytest.fixture
def pair(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """nb.ipynb + nb.py (percent), paired, as `jupytext --set-formats` leaves them."""
    monkeypatch.chdir(tmp_path)
    nb = tmp_path / "nb.ipynb"
    shutil.copy(SEED, nb)
    r = subprocess.run([sys.executable, "-m", "jupytext", "--set-formats", "ipynb,py:percent", "nb.ipynb"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return nb, tmp_path / "nb.py"


# -- 3. lost update -------------------------------------------------------------------------------


def test_an_editor_save_while_the_new_file_is_synced_survives(nb, monkeypatch):
    """The save lands while nbrefactor syncs its temporary file (the ~0.1 s window of a 20 MB
    notebook): the check after the sync sees it; the save survives; exit 2, nothing written."""
    import nbrefactor.writer as writer

    real_fsync = os.fsync
    saves = []

    def fsync_while_an_editor_saves(fd):
        real_fsync(fd)
        if not saves:  # the first sync is the temporary file's
            nb.write_bytes(EDITOR)
            saves.append(fd)

    monkeypatch.setattr(writer.os, "fsync", fsync_while_an_editor_saves)
    r = fix("nb.ipynb")
    assert saves, "the write never synced a temporary file"
    assert r.exit_code == 2, r.output
    assert errors(r) == [f"error: nb.ipynb: {CHANGED}"]
    assert nb.read_bytes() == EDITOR
    assert "fixed" not in r.output
    assert temporaries(nb.parent) == []


@pytest.mark.parametrize("stage", ["synced", "replace"])
def test_an_editor_save_right_before_the_rename_survives(nb, monkeypatch, stage):
    """The same save at the last moment before the rename (and, for `synced`, between the sync and
    the metadata copy): the compare-and-swap right before os.replace refuses."""
    import nbrefactor.writer as writer

    def editor_saves(at, path):
        if at == stage:
            nb.write_bytes(EDITOR)

    monkeypatch.setattr(writer, "_window", editor_saves)
    r = fix("nb.ipynb")
    assert r.exit_code == 2 and errors(r) == [f"error: nb.ipynb: {CHANGED}"], r.output
    assert nb.read_bytes() == EDITOR and temporaries(nb.parent) == []


def test_a_same_size_save_within_the_same_mtime_tick_is_still_seen(nb, monkeypatch):
    """An edit that keeps size and modification time (coarse mtime, or restored by a tool) differs
    in content: the content comparison catches it."""
    import nbrefactor.writer as writer

    st = nb.stat()
    edited = nb.read_bytes().replace(b"import", b"IMPORT", 1)

    def sneaky_save(at, path):
        if at == "replace":
            with open(nb, "r+b") as f:  # same inode, same size
                f.write(edited)
            os.utime(nb, ns=(st.st_atime_ns, st.st_mtime_ns))

    monkeypatch.setattr(writer, "_window", sneaky_save)
    r = fix("nb.ipynb")
    assert r.exit_code == 2 and errors(r) == [f"error: nb.ipynb: {CHANGED}"], r.output
    assert nb.read_bytes() == edited


def test_a_pair_whose_second_side_fails_is_rolled_back_byte_for_byte(pair, monkeypatch):
    """The .ipynb is written first; the .py fails (disk full): the .ipynb is put back as it was
    and the message says exactly that."""
    import nbrefactor.writer as writer

    nb, py = pair
    before = {nb: nb.read_bytes(), py: py.read_bytes()}
    mode_before = nb.stat().st_mode
    real_replace = os.replace

    def disk_full_for_the_py(src, dst, *a, **k):
        if str(dst).endswith("nb.py"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(writer.os, "replace", disk_full_for_the_py)
    r = fix("nb.ipynb")
    assert r.exit_code == 2, r.output
    assert errors(r) == ["error: nb.py: could not write: No space left on device; nb.ipynb had been written first and was restored byte for byte: nothing changed"]
    assert {p: p.read_bytes() for p in before} == before
    assert nb.stat().st_mode == mode_before
    assert "fixed" not in r.output and temporaries(nb.parent) == []


def test_a_pair_side_saved_before_its_rollback_is_not_clobbered_and_the_message_says_so(pair, monkeypatch):
    import nbrefactor.writer as writer

    nb, py = pair
    py_before = py.read_bytes()
    real_replace = os.replace

    def editor_saves_the_ipynb_then_the_py_fails(src, dst, *a, **k):
        if str(dst).endswith("nb.py"):
            nb.write_bytes(EDITOR)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(writer.os, "replace", editor_saves_the_ipynb_then_the_py_fails)
    r = fix("nb.ipynb")
    assert r.exit_code == 2
    (line,) = errors(r)
    assert line.startswith("error: nb.py: could not write: No space left on device; nb.ipynb (changed on disk")
    assert "WAS fixed and could not be restored" in line and "out of sync" in line and "nothing written" not in line
    assert nb.read_bytes() == EDITOR and py.read_bytes() == py_before


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import nbrefactor.writer as writer
    # Python's own Ctrl-C handler, as in a terminal: a job started in the background by a shell
    # without job control inherits SIGINT ignored, and then the held SIGINT rightly ends nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    path, how = sys.argv[1], sys.argv[2]
    real_fsync, real_replace = os.fsync, os.replace
    def fsync(fd):
        real_fsync(fd)
        if how in ("TERM", "INT", "KILL"):
            os.kill(os.getpid(), getattr(signal, "SIG" + how))  # arrives while the temporary file exists
    def replace(src, dst):
        real_replace(src, dst)
        if how == "TERM-between-sides":
            os.kill(os.getpid(), signal.SIGTERM)  # the first side is written, the second is not
    writer.os.fsync, writer.os.replace = fsync, replace
    if how == "TERM-between-sides":
        a, b = path + ".ipynb", path + ".py"
        writer.write_together([(a, "new a", open(a, "rb").read()), (b, "new b", open(b, "rb").read())])
    else:
        old = open(path, "rb").read()
        writer.write_atomically(path, "new text", writer.fingerprint(old))
    print("wrote")
    """
)


def child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("how, returncode", [("TERM", -signal.SIGTERM), ("INT", -signal.SIGINT)])
def test_a_signal_during_a_write_leaves_no_temporary_file_and_nothing_written(tmp_path, how, returncode):
    p = tmp_path / "nb.ipynb"
    p.write_bytes(b"old")
    r = child(str(p), how)
    assert r.returncode == returncode, r.stdout + r.stderr  # the signal still ends the process
    if how == "INT":
        assert "KeyboardInterrupt" in r.stderr
    assert "wrote" not in r.stdout
    assert p.read_bytes() == b"old"
    assert temporaries(tmp_path) == []


def test_a_sigterm_between_the_sides_of_a_pair_rolls_the_first_back(tmp_path):
    (tmp_path / "nb.ipynb").write_bytes(b"old a")
    (tmp_path / "nb.py").write_bytes(b"old b")
    r = child(str(tmp_path / "nb"), "TERM-between-sides")
    assert r.returncode == -signal.SIGTERM, r.stdout + r.stderr
    assert (tmp_path / "nb.ipynb").read_bytes() == b"old a" and (tmp_path / "nb.py").read_bytes() == b"old b"
    assert temporaries(tmp_path) == []


def test_what_a_sigkill_leaves_is_cleaned_up_by_the_next_write_in_that_folder(nb):
    r = child(str(nb), "KILL")
    assert r.returncode == -signal.SIGKILL
    (left,) = temporaries(nb.parent)  # nothing can run on SIGKILL: the temporary file stays
    assert left.startswith(".nb.ipynb.") and left.endswith(".nbrefactor")
    hour_ago = time.time() - 3600
    os.utime(nb.parent / left, (hour_ago, hour_ago))
    young = nb.parent / ".other.ipynb.abcd1234.nbrefactor"  # maybe another run's, still writing
    young.write_text("x")
    lookalikes = [nb.parent / ".nb.ipynb.not-ours", nb.parent / "notes.nbrefactor", nb.parent / ".nb.ipynb.abcd1234.nbrefactor-backup"]
    for p in lookalikes:
        p.write_text("keep")
        os.utime(p, (hour_ago, hour_ago))
    r = fix("nb.ipynb")
    assert r.exit_code == 0, r.output
    assert not (nb.parent / left).exists()
    assert young.exists() and all(p.exists() for p in lookalikes)


# -- 4. nbrefactor run -o / --report --------------------------------------------------------------


@pytest.fixture
def fake_run(monkeypatch):
    """`run` without a kernel: every run passes and executes nothing (the writes are what is tested)."""
    import nbformat

    import nbrefactor.launcher.command as command

    calls = []

    def run_one(path, notebook, node, cwd, settings, label_prefix):
        calls.append(path)
        return {"verdict": "pass", "fake": True}, nbformat.v4.new_notebook()

    monkeypatch.setattr(command, "_run_one", run_one)
    monkeypatch.setattr(command, "_render", lambda report: "")
    return calls


def run_cmd(*args: str):
    from nbrefactor.launcher.command import run

    return CliRunner().invoke(run, list(args))


@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_run_refuses_to_replace_an_existing_file_without_force(nb, fake_run, flag):
    existing = nb.parent / ("out.ipynb" if flag == "-o" else "report.json")
    existing.write_bytes(b"someone's work")
    r = run_cmd("nb.ipynb", flag, existing.name)
    assert r.exit_code == 2, r.output
    assert f"error: nb.ipynb: {existing.name} exists; pass --force to replace it" in r.output
    assert existing.read_bytes() == b"someone's work" and fake_run == []  # refused before running


def test_run_with_force_replaces_atomically_with_the_umask_mode(nb, fake_run):
    out, report = nb.parent / "out.ipynb", nb.parent / "report.json"
    out.write_bytes(b"old")
    report.write_bytes(b"old")
    os.chmod(report, 0o600)
    old_inode = out.stat().st_ino
    mask = os.umask(0o027)
    try:
        r = run_cmd("nb.ipynb", "-o", "out.ipynb", "--report", "report.json", "--force")
    finally:
        os.umask(mask)
    assert r.exit_code == 0, r.output
    assert json.loads(report.read_text())["fake"] is True and json.loads(out.read_text())["nbformat"] == 4
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(report.stat().st_mode) == 0o640
    assert out.stat().st_ino != old_inode  # a new file renamed into place, not a write into the old
    assert temporaries(nb.parent) == []


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_run_never_writes_onto_the_notebook_through_a_link_even_with_force(nb, fake_run, link, flag):
    alias = nb.parent / ("alias.ipynb" if flag == "-o" else "alias.json")
    (os.symlink if link == "symlink" else os.link)(nb.name if link == "symlink" else nb, alias)
    before = nb.read_bytes()
    r = run_cmd("nb.ipynb", flag, alias.name, "--force")
    assert r.exit_code == 2, r.output
    assert f"error: nb.ipynb: {alias.name} is the notebook itself (a link to it); nbrefactor run never writes the notebook" in r.output
    assert nb.read_bytes() == before and fake_run == []


def test_a_link_to_the_notebook_created_during_the_run_is_refused_at_write_time(nb, monkeypatch):
    """The check is made again when writing: the notebook's own code may create the file."""
    import nbrefactor.launcher.command as command

    before = nb.read_bytes()
    os.link(nb, nb.parent / "report.json")
    with pytest.raises(command._Failed, match="report.json is the notebook itself"):
        command._write("report.json", "{}", "nb.ipynb", force=True)
    nb.parent.joinpath("report.json").unlink()
    os.symlink("nb.ipynb", nb.parent / "report.json")
    with pytest.raises(command._Failed, match="report.json is the notebook itself"):
        command._write("report.json", "{}", "nb.ipynb", force=False)
    assert nb.read_bytes() == before
    nb.parent.joinpath("report.json").unlink()
    nb.parent.joinpath("report.json").write_text("made by the notebook")
    with pytest.raises(command._Failed, match="report.json exists; pass --force"):
        command._write("report.json", "{}", "nb.ipynb", force=False)
    assert nb.parent.joinpath("report.json").read_text() == "made by the notebook"
    assert temporaries(nb.parent) == []


# -- 5. links and metadata of fixed files ---------------------------------------------------------


def test_fix_writes_through_a_symlink_and_keeps_the_link(nb):
    link = nb.parent / "link.ipynb"
    link.symlink_to(nb.name)
    before = nb.read_bytes()
    r = fix("link.ipynb")
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == "nb.ipynb"
    assert nb.read_bytes() != before and "NBR201" not in fix("--check", "nb.ipynb").output


def test_fix_keeps_hard_links_same_inode(nb):
    other = nb.parent / "other.ipynb"
    os.link(nb, other)
    inode = nb.stat().st_ino
    before = nb.read_bytes()
    r = fix("nb.ipynb")
    assert r.exit_code == 0, r.output
    assert nb.stat().st_ino == other.stat().st_ino == inode and nb.stat().st_nlink == 2
    assert other.read_bytes() == nb.read_bytes() != before
    assert temporaries(nb.parent) == []  # the verified backup is removed once the write is verified


def test_a_failed_in_place_write_is_restored_from_the_backup(nb, monkeypatch):
    import nbrefactor.writer as writer

    os.link(nb, nb.parent / "other.ipynb")
    before = nb.read_bytes()
    real_ftruncate = os.ftruncate
    calls = []

    def ftruncate_fails_once(fd, length):
        calls.append(length)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_ftruncate(fd, length)

    monkeypatch.setattr(writer.os, "ftruncate", ftruncate_fails_once)
    r = fix("nb.ipynb")
    assert r.exit_code == 2 and errors(r) == ["error: nb.ipynb: could not write: Input/output error; restored from its backup, nothing written"]
    assert nb.read_bytes() == before and temporaries(nb.parent) == []


def test_fix_keeps_mode_owner_and_group(nb):
    nb.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(nb, 12345, 23456)
        want = (12345, 23456)
    else:
        want = (os.getuid(), nb.stat().st_gid)
    r = fix("nb.ipynb")
    assert r.exit_code == 0, r.output
    st = nb.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == want


def test_fix_keeps_extended_attributes(nb):
    if not hasattr(os, "setxattr"):
        pytest.skip("no extended attributes on this platform")
    try:
        os.setxattr(nb, "user.origin", b"course-42")
    except OSError as err:
        pytest.skip(f"this filesystem does not support user.* extended attributes ({err.strerror})")
    before = nb.read_bytes()
    r = fix("nb.ipynb")
    assert r.exit_code == 0, r.output
    assert nb.read_bytes() != before
    assert os.getxattr(nb, "user.origin") == b"course-42"


def test_fix_o_creates_the_file_with_the_umask_mode(nb):
    mask = os.umask(0o022)
    try:
        r = fix("nb.ipynb", "-o", "out.ipynb")
        os.umask(0o077)
        r2 = fix("nb.ipynb", "-o", "private.ipynb")
    finally:
        os.umask(mask)
    assert r.exit_code == r2.exit_code == 0, r.output + r2.output
    assert stat.S_IMODE((nb.parent / "out.ipynb").stat().st_mode) == 0o644
    assert stat.S_IMODE((nb.parent / "private.ipynb").stat().st_mode) == 0o600


def test_a_crlf_notebook_comes_back_all_crlf(nb):
    nb.write_bytes(SEED.read_bytes().replace(b"\n", b"\r\n"))
    r = fix("nb.ipynb")
    assert r.exit_code == 0, r.output
    data = nb.read_bytes()
    assert data != SEED.read_bytes().replace(b"\n", b"\r\n")  # fixed
    assert data.count(b"\n") == data.count(b"\r\n") > 10
    crlf = nb.parent / "crlf.ipynb"
    crlf.write_bytes(SEED.read_bytes().replace(b"\n", b"\r\n"))
    r = fix("crlf.ipynb", "-o", "out.ipynb")  # -o keeps the input's line endings too
    assert r.exit_code == 0, r.output
    out = (nb.parent / "out.ipynb").read_bytes()
    assert out.count(b"\n") == out.count(b"\r\n") > 10


def test_a_crlf_pair_comes_back_all_crlf_on_both_sides(pair):
    nb, py = pair
    for p in pair:
        p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    r = fix("nb.ipynb")
    assert r.exit_code == 0, r.output
    for p in pair:
        data = p.read_bytes()
        assert data.count(b"\n") == data.count(b"\r\n") > 10, p


def test_a_crlf_notebook_piped_through_fix_comes_back_all_crlf():
    import subprocess
    import sys

    from tests.conftest import ROOT

    data = (ROOT / "golden" / "fabric_seed_cuda" / "input.ipynb").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    r = subprocess.run([sys.executable, "-m", "nbrefactor", "fix", "-", "--stdin-filename", "nb.ipynb"],
                       input=data, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout != data and r.stdout.count(b"\n") == r.stdout.count(b"\r\n") > 0
