"""Write a fixed notebook: all or nothing, and never over a file that changed since it was read."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from nbrefactor.errors import NotebookError


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: str | os.PathLike, text: str, expected: str | None = None) -> None:
    """Replace `path` with `text` in one step (temporary file + rename, mode kept).

    `expected` is the fingerprint of the bytes that were read; if the file on disk no longer has
    it (an editor saved meanwhile), nothing is written.
    """
    target = Path(path)
    data = text.encode("utf-8")
    try:
        if expected is not None and target.exists() and fingerprint(target.read_bytes()) != expected:
            raise NotebookError(path, "changed on disk while nbrefactor was working; nothing written, run it again")
        mode = target.stat().st_mode & 0o7777 if target.exists() else None
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".nbrefactor", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            if mode is not None and not (mode & 0o222 and os.access(target, os.W_OK)):
                raise NotebookError(path, "read-only file; nothing written")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except PermissionError:
        raise NotebookError(path, "permission denied; nothing written") from None
    except OSError as err:
        raise NotebookError(path, f"could not write: {err.strerror or err}; nothing written") from None


def write_together(files: list[tuple[str | os.PathLike, str, bytes]], *, touch_unchanged_after_write: bool = True) -> list[str]:
    """Write several files that belong together (the sides of a jupytext pair), in the order given.

    Each entry is (path, new text, the bytes that were read). Every file is checked before any is
    written: if one changed on disk since it was read, or cannot be written, nothing is written.
    A file whose text is unchanged is not rewritten, but when an earlier file was written its
    modification time is updated, so that it stays the newer side (as `jupytext --sync` does).
    Returns the paths written.
    """
    for path, _text, original in files:
        target = Path(path)
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            raise NotebookError(path, "was removed while nbrefactor was working; nothing written, run it again") from None
        except OSError as err:
            raise NotebookError(path, f"could not read it back: {err.strerror or err}; nothing written") from None
        if current != original:
            others = ", ".join(str(p) for p, _, _ in files if p != path)
            paired = f" (paired with {others})" if others else ""
            raise NotebookError(path, f"changed on disk while nbrefactor was working{paired}; nothing written, run it again")
        if _text.encode("utf-8") != original:
            mode = target.stat().st_mode
            if not (mode & 0o222 and os.access(target, os.W_OK)) or not os.access(target.parent or ".", os.W_OK):
                raise NotebookError(path, "read-only file; nothing written")
    written: list[str] = []
    for path, text, original in files:
        if text.encode("utf-8") == original:
            if written and touch_unchanged_after_write:
                os.utime(path, None)
            continue
        write_atomically(path, text, fingerprint(original))
        written.append(str(path))
    return written
