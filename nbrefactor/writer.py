"""Write a fixed notebook: all or nothing, and never over a file that changed since it was read.

How a file is replaced (`write_atomically`):

- A symlink is written through to its real target (as editors do); the link itself stays.
- The new bytes go to a temporary file in the target's folder (`.<name>.XXXXXXXX.nbrefactor`),
  which is synced and given the file's mode, owner, group and extended attributes. The file on disk
  is then compared with what was read (inode, size, modification time and content), right before
  the rename: an editor's save at any point up to there is detected and nothing is written.
- A file with several hard links, or whose owner or extended attributes cannot be given to a new
  file, is written in place instead (the inode, and with it every link, owner and attribute, stays),
  after a backup copy that is read back and verified; a failed in-place write is undone from it.
- The file's line endings are kept: a CRLF file comes back all CRLF.
- SIGTERM, SIGINT and SIGHUP are held back during a write: one that arrives before the file is
  replaced stops the write (nothing written, temporary file removed), one that arrives after it lets
  the write finish; either way the signal is then delivered as usual. A temporary file that a
  SIGKILL left behind is removed by the next write in that folder once it is a minute old.

`write_together` writes the sides of a jupytext pair all or nothing: when a later side cannot be
written, the sides already written are put back byte for byte (with the same check that nobody
saved them meanwhile), and the message says exactly what was written and what was restored.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import signal
import stat
import tempfile
import threading
import time

from nbrefactor.errors import NotebookError

TEMP_SUFFIX = ".nbrefactor"
BACKUP_SUFFIX = ".nbrefactor-backup"
STALE_AFTER = 60.0  # seconds: a temporary file older than this belongs to no running write
# tempfile.mkstemp(prefix=".<name>.", suffix=".nbrefactor"): 8 characters from this alphabet
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.nbrefactor$", re.S)
_SIGNALS = tuple(getattr(signal, s) for s in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, s))
_CHANGED = "changed on disk while nbrefactor was working"
_REMOVED = "was removed while nbrefactor was working"


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _window(stage: str, path: str) -> None:
    """Called at each step of a write where another program could save the file (`synced`: the
    temporary file is written and synced; `replace`: right before the rename or in-place write).
    Does nothing; tests put an editor's save here."""


# --- small helpers ------------------------------------------------------------------------------


def current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)  # no way to read it without setting it elsewhere
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode of a new file, as `open(path, "w")` would create it: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def keep_line_endings(text: str, like: bytes | None) -> str:
    """`text` with the line endings of `like` (the bytes it replaces): when every line break of
    `like` is CRLF, every line break of `text` becomes CRLF; otherwise `text` is returned as it is.
    (In a .ipynb, line breaks inside strings are escaped, so only the JSON layout changes.)"""
    if not like or b"\r\n" not in like:
        return text
    if like.count(b"\n") != like.count(b"\r\n"):
        return text  # mixed already: nothing to keep
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def clean_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove nbrefactor's own temporary files in `folder` (`.<name>.XXXXXXXX.nbrefactor`, regular,
    owned by this user, last modified over a minute ago): what a SIGKILL left behind. Backups
    (`*.nbrefactor-backup`) are never removed: after a SIGKILL they may hold the only good copy."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder or "."))
    except OSError:
        return removed
    for entry in entries:
        if not _TEMP_NAME.match(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_AFTER:
                continue
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
                continue
            os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            continue
    return removed


def _read_fd(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_fd(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        if offset is None:
            done += os.write(fd, view[done:])
        else:
            done += os.pwrite(fd, view[done:], offset + done)


def _observe(path: str) -> tuple[os.stat_result, bytes]:
    """(stat, content) of `path`, read through one descriptor; a file that changes while it is
    read is read again."""
    for _ in range(5):
        fd = os.open(path, os.O_RDONLY)
        try:
            before = os.fstat(fd)
            data = _read_fd(fd)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if _identity(before) == _identity(after) and after.st_size == len(data):
            return after, data
    raise _Refused(_CHANGED, again=True)


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _still(path: str, seen: tuple, digest: str) -> bool:
    """The file at `path` is still the one read: same inode, size, modification time and content."""
    try:
        if _identity(os.stat(path)) != seen:
            return False
        st, data = _observe(path)
    except (OSError, _Refused):
        return False
    return _identity(st) == seen and fingerprint(data) == digest


def _sync_folder(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- signals --------------------------------------------------------------------------------------


class _Interrupted(Exception):
    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)


class _Guard:
    """SIGTERM/SIGINT/SIGHUP held back while files are written (see the module's docstring)."""

    def __init__(self):
        self.pending: list[int] = []
        self.previous: dict[int, object] = {}

    def _hold(self, signum, _frame):
        self.pending.append(signum)

    def checkpoint(self) -> None:
        """Before a file is replaced: stop here if a signal came."""
        if self.pending:
            raise _Interrupted(self.pending[0])


_active: _Guard | None = None


@contextlib.contextmanager
def _signals_held():
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active or _Guard()  # nested (a pair's sides), or a thread that cannot hold signals
        return
    guard = _Guard()
    for sig in _SIGNALS:
        try:
            previous = signal.signal(sig, guard._hold)
        except (ValueError, OSError):
            continue
        guard.previous[sig] = previous
    _active = guard
    try:
        yield guard
    finally:
        _active = None
        for sig, previous in guard.previous.items():
            try:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass
        if guard.pending:
            signal.raise_signal(guard.pending[0])  # as if it came now: the usual handler runs


# --- one file -------------------------------------------------------------------------------------


class _Refused(Exception):
    """Why a file was not written; `outcome` says what state it was left in."""

    def __init__(self, reason: str, *, again: bool = False, outcome: str = "nothing written"):
        self.reason = reason
        self.again = again
        self.outcome = outcome
        super().__init__(reason)

    def message(self) -> str:
        return f"{self.reason}; {self.outcome}" + (", run it again" if self.again and self.outcome == "nothing written" else "")


class _KeepInPlace(Exception):
    """The file's owner or extended attributes cannot be given to a new file."""


def _os_reason(err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"could not write: {err.strerror or err}"


def _write_bytes(path: str, data: bytes, expected: str | None, guard: _Guard, *, interruptible: bool = True) -> None:
    """Replace the file at `path` (through symlinks) with `data`, if it still has the fingerprint
    `expected` (None: whatever it holds; a missing file is then created). Raises `_Refused`."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    clean_stale_temporaries(folder)
    try:
        st, current = _observe(real)
    except FileNotFoundError:
        if expected is not None:
            raise _Refused(_REMOVED, again=True) from None
        return _replace(real, data, None, None, None, guard, path, interruptible)
    except OSError as err:
        raise _Refused(_os_reason(err)) from None
    if not stat.S_ISREG(st.st_mode):
        raise _Refused("not a regular file")
    if expected is not None and fingerprint(current) != expected:
        raise _Refused(_CHANGED, again=True)
    if not (st.st_mode & 0o222 and os.access(real, os.W_OK)):
        raise _Refused("read-only file")
    if st.st_nlink > 1:
        return _in_place(real, data, st, current, guard, path, interruptible)
    try:
        return _replace(real, data, st, current, fingerprint(current), guard, path, interruptible)
    except _KeepInPlace:
        return _in_place(real, data, st, current, guard, path, interruptible)


def _copy_metadata(fd: int, real: str, st: os.stat_result) -> None:
    """Give the temporary file (open as `fd`) the owner, group, extended attributes and mode of
    `real`; `_KeepInPlace` when the owner or an attribute cannot be given."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:
            raise _KeepInPlace from None
    if hasattr(os, "listxattr"):
        try:
            names = os.listxattr(real)
        except OSError:
            names = []  # the filesystem has none
        for name in names:
            try:
                os.setxattr(fd, name, os.getxattr(real, name))
            except OSError as err:
                if err.errno == errno.ENODATA:
                    continue  # removed meanwhile
                raise _KeepInPlace from None
    os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits


def _replace(real, data, st, current, digest, guard, shown, interruptible) -> None:
    """Temporary file + rename; `st`/`current` None when the file does not exist yet."""
    folder = os.path.dirname(real)
    name = os.path.basename(real)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=folder or ".")
    except OSError as err:
        raise _Refused(_os_reason(err)) from None
    try:
        try:
            _write_fd(fd, data)
            os.fsync(fd)
            _window("synced", shown)
            if st is None:
                os.fchmod(fd, new_file_mode())
            else:
                seen = _identity(st)
                if not _still(real, seen, digest):  # an editor saved while the copy was written
                    raise _Refused(_CHANGED, again=True)
                _copy_metadata(fd, real, st)
                os.fsync(fd)
        finally:
            os.close(fd)
        if interruptible:
            guard.checkpoint()
        _window("replace", shown)
        if st is None:
            if os.path.lexists(real):
                raise _Refused("was created while nbrefactor was working", again=True)
        elif not _still(real, seen, digest):  # and once more, right before the rename
            raise _Refused(_CHANGED, again=True)
        os.replace(tmp, real)
        _sync_folder(folder)
    except OSError as err:
        raise _Refused(_os_reason(err)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _in_place(real, data, st, current, guard, shown, interruptible) -> None:
    """Write into the file itself (its inode, links, owner and attributes stay) after a backup
    that is read back and verified; a failed write is undone from the backup."""
    folder = os.path.dirname(real)
    name = os.path.basename(real)
    seen, digest = _identity(st), fingerprint(current)
    try:
        bfd, backup = tempfile.mkstemp(prefix=f".{name}.", suffix=BACKUP_SUFFIX, dir=folder or ".")
    except OSError as err:
        raise _Refused(f"could not make a backup before writing in place ({_os_reason(err)})") from None
    keep_backup = False
    try:
        try:
            _write_fd(bfd, current)
            os.fsync(bfd)
            os.lseek(bfd, 0, os.SEEK_SET)
            if fingerprint(_read_fd(bfd)) != digest:
                raise _Refused("could not verify the backup made before writing in place")
        except OSError as err:
            raise _Refused(f"could not make a backup before writing in place ({_os_reason(err)})") from None
        finally:
            os.close(bfd)
        _window("synced", shown)
        if interruptible:
            guard.checkpoint()
        _window("replace", shown)
        if not _still(real, seen, digest):
            raise _Refused(_CHANGED, again=True)
        try:
            fd = os.open(real, os.O_WRONLY)
        except OSError as err:
            raise _Refused(_os_reason(err)) from None
        try:
            try:
                _write_fd(fd, data, 0)
                os.ftruncate(fd, len(data))
                os.fsync(fd)
                if fingerprint(_read_path(real)) != fingerprint(data):
                    raise OSError(errno.EIO, "what was written does not read back")
            except OSError as err:
                try:
                    _write_fd(fd, current, 0)
                    os.ftruncate(fd, len(current))
                    os.fsync(fd)
                    restored = _read_path(real) == current
                except OSError:
                    restored = False
                if not restored:
                    keep_backup = True
                    raise _Refused(_os_reason(err), outcome=f"the file may be damaged; its original is kept in {backup}") from None
                raise _Refused(_os_reason(err), outcome="restored from its backup, nothing written") from None
        finally:
            os.close(fd)
    finally:
        if not keep_backup:
            with contextlib.suppress(OSError):
                os.unlink(backup)


def _read_path(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


# --- the public functions -------------------------------------------------------------------------


def _interrupted_message(err: _Interrupted) -> str:
    try:
        name = signal.Signals(err.signum).name
    except ValueError:
        name = f"signal {err.signum}"
    return f"interrupted by {name}"


def write_atomically(path: str | os.PathLike, text: str, expected: str | None = None, *, like: bytes | None = None) -> None:
    """Replace `path` with `text` in one step (see the module's docstring for what is kept).

    `expected` is the fingerprint of the bytes that were read; if the file on disk no longer has
    it (an editor saved meanwhile, even while the new file was being written), nothing is written.
    `like`: the bytes whose line endings to keep (default: those of the file being replaced). A new
    file gets the mode `open()` would give it (0o666 less the umask).
    """
    shown = str(path)
    if like is None:
        with contextlib.suppress(OSError):
            like = _read_path(os.path.realpath(shown))
    data = keep_line_endings(text, like).encode("utf-8")
    with _signals_held() as guard:
        try:
            _write_bytes(shown, data, expected, guard)
        except _Refused as err:
            raise NotebookError(path, err.message()) from None
        except _Interrupted as err:
            interrupted = err
        else:
            return
    # reached only when the held signal did not end the process (a handler that returns)
    raise NotebookError(path, f"{_interrupted_message(interrupted)}; nothing written")


def write_together(files: list[tuple[str | os.PathLike, str, bytes]], *, touch_unchanged_after_write: bool = True) -> list[str]:
    """Write several files that belong together (the sides of a jupytext pair), in the order given,
    all or nothing.

    Each entry is (path, new text, the bytes that were read). Every file is checked before any is
    written: if one changed on disk since it was read, or cannot be written, nothing is written.
    If a later file then fails (or a signal comes), the files already written are restored byte for
    byte, each only if nobody saved it meanwhile, and the error says so. A file whose text is
    unchanged is not rewritten, but when an earlier file was written its modification time is
    updated, so that it stays the newer side (as `jupytext --sync` does). Returns the paths written.
    """
    prepared = []
    for path, text, original in files:
        try:
            current = _read_path(os.path.realpath(path))
        except FileNotFoundError:
            raise NotebookError(path, f"{_REMOVED}; nothing written, run it again") from None
        except OSError as err:
            raise NotebookError(path, f"could not read it back: {err.strerror or err}; nothing written") from None
        if current != original:
            others = ", ".join(str(p) for p, _, _ in files if p != path)
            paired = f" (paired with {others})" if others else ""
            raise NotebookError(path, f"{_CHANGED}{paired}; nothing written, run it again")
        data = keep_line_endings(text, original).encode("utf-8")
        if data != original:
            real = os.path.realpath(path)
            mode = os.stat(real).st_mode
            if not (mode & 0o222 and os.access(real, os.W_OK)):
                raise NotebookError(path, "read-only file; nothing written")
        prepared.append((path, data, original))

    written: list[tuple[str | os.PathLike, bytes, bytes]] = []
    touched: list[tuple[str | os.PathLike, os.stat_result]] = []
    interrupted = None
    with _signals_held() as guard:
        for path, data, original in prepared:
            if data == original:
                if written and touch_unchanged_after_write:
                    with contextlib.suppress(OSError):
                        touched.append((path, os.stat(path)))
                        os.utime(path, None)
                continue
            try:
                _write_bytes(str(path), data, fingerprint(original), guard)
            except (_Refused, _Interrupted) as err:
                if isinstance(err, _Interrupted):
                    interrupted = err
                if not written:
                    if interrupted:
                        break
                    raise NotebookError(path, err.message()) from None
                failure = err.reason if isinstance(err, _Refused) else _interrupted_message(err)
                undone = _roll_back(written, touched, guard)
                if interrupted:
                    break
                raise NotebookError(path, f"{failure}; {undone}") from None
            written.append((path, data, original))
    if interrupted is not None:  # the held signal did not end the process
        raise NotebookError(prepared[0][0], f"{_interrupted_message(interrupted)}; nothing written") from None
    return [str(p) for p, _, _ in written]


def _roll_back(written, touched, guard) -> str:
    """Put back the files already written (last first); what happened, in words."""
    restored, kept = [], []
    for path, data, original in reversed(written):
        try:
            _write_bytes(str(path), original, fingerprint(data), guard, interruptible=False)
            restored.append(str(path))
        except _Refused as err:
            kept.append(f"{path} ({err.reason})")
    for path, st in touched:
        with contextlib.suppress(OSError):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    if not kept:
        names = ", ".join(reversed(restored))
        return f"{names} had been written first and {'was' if len(restored) == 1 else 'were'} restored byte for byte: nothing changed"
    done = ", ".join(reversed(kept))
    also = f" ({', '.join(reversed(restored))} restored)" if restored else ""
    return f"{done} WAS fixed and could not be restored{also}: the pair is out of sync, run `jupytext --sync`"


def write_output(path: str | os.PathLike, text: str, *, force: bool = False, protect: str | os.PathLike | None = None) -> None:
    """Write a new output file (a report, an executed notebook) atomically: temporary file + rename,
    mode 0o666 less the umask. Without `force` an existing file (or link) at `path` is never
    replaced; never, even with `force`, is `path` the file `protect` (compared by inode, so through
    symlinks and hard links too). A link at `path` is replaced, never written through.
    Raises `OSError`/`FileExistsError`/`ValueError` (for `protect`) with a message."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)

    def protected() -> bool:
        if protect is None:
            return False
        try:
            return os.path.samefile(target, protect)
        except OSError:
            return False

    if protected():
        raise ValueError(f"{path} is the notebook itself")
    if not force and os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, f"{path} exists; pass --force to replace it")
    clean_stale_temporaries(folder)
    data = text.encode("utf-8")
    with _signals_held() as guard:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=TEMP_SUFFIX, dir=folder)
        try:
            try:
                _write_fd(fd, data)
                os.fchmod(fd, new_file_mode())
                os.fsync(fd)
            finally:
                os.close(fd)
            guard.checkpoint()
            if protected():
                raise ValueError(f"{path} is the notebook itself")
            if force:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)  # fails if anything appeared at `target` meanwhile
                except FileExistsError:
                    raise FileExistsError(errno.EEXIST, f"{path} exists; pass --force to replace it") from None
                except OSError as err:
                    if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                        raise
                    if os.path.lexists(target):  # a filesystem without hard links
                        raise FileExistsError(errno.EEXIST, f"{path} exists; pass --force to replace it") from None
                    os.replace(tmp, target)
            _sync_folder(folder)
        except _Interrupted as err:
            raise OSError(errno.EINTR, f"{_interrupted_message(err)}; {path} not written") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
