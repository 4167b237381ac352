"""The results cache of `nbrefactor check` (ruff's `.ruff_cache`, made safe for untrusted trees).

Where: `.nbrefactor_cache/` in the project root (the folder of the pyproject.toml that
`nbrefactor.config` finds, else the current folder), or `cache-dir` in `[tool.nbrefactor]` (relative
to the project root, and inside it), or `$NBREFACTOR_CACHE_DIR` (anywhere: the environment is the
user's own). The folder holds a `.gitignore` (`*`) and a `CACHEDIR.TAG`; entries live in `v1/`.
Only notebooks inside the project root are cached; stdin never is.

One entry per checked file, named by its key: sha256 over the run's salt (nbrefactor's version, a
fingerprint of nbrefactor's own code and of the libraries that read notebooks, the Python version,
the effective settings: selection, limits, include-scripts), the file's name as given and its
absolute path, and the sha256 of its bytes. The entry holds what checking the file produced
(diagnostics with their fix labels, notes) so that a warm run prints exactly what a cold run prints.
A jupytext pair's entry also names every side with its sha256 and modification time (which side is
newer decides what is read) and the jupytext configuration file with its sha256; the lookup checks
them all. A file that could be paired but was read alone (a missing partner, a refused pairing) and
a check that ended in an error are not cached: they are rare or cheap, and their result depends on
more than the bytes (time budget, files that may appear).

Untrusted input: a pull request can commit a `.nbrefactor_cache` folder. Every entry is
authenticated with HMAC-SHA256 under a per-user secret key kept outside the checked tree
(`$XDG_CACHE_HOME/nbrefactor/key`, else `~/.cache/nbrefactor/key`, created 0600); an entry whose
MAC does not verify, that does not parse, that is larger than `MAX_ENTRY_BYTES` or that is not for
this key is ignored (and overwritten by the fresh result). Entries are JSON, never pickle, written
atomically (a temporary file, then `os.replace`), opened with O_NOFOLLOW; a cache folder that is a
symbolic link or not owned by the user is refused (the run is uncached). Any OS error (a read-only
folder, permissions) turns the cache off for the run, silently (`NBREFACTOR_CACHE_DEBUG=1` says why).

Pruning: entries not used for `MAX_AGE_DAYS` days are deleted, at most once a day (a hit refreshes
an entry's modification time when it is older than a day, so warm runs rarely write). `nbrefactor
clean` removes the folder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import sys
import time
from pathlib import Path

FORMAT = 1
SUBDIR = f"v{FORMAT}"
DEFAULT_DIR = ".nbrefactor_cache"
MAGIC = b"nbrefactor-cache-1\n"
MAX_ENTRY_BYTES = 16 * 1024 * 1024
MAX_AGE_DAYS = 30
_DAY = 24 * 3600
_KEY_BYTES = 32
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by nbrefactor.\n"
    "# For information about cache directory tags, see:\n"
    "#\thttps://bford.info/cachedir/\n"
)


class CacheUnavailable(Exception):
    """The cache cannot be used for this run (the run goes on uncached)."""


def debug(message: str) -> None:
    if os.environ.get("NBREFACTOR_CACHE_DEBUG"):
        print(f"cache: {message}", file=sys.stderr, flush=True)


# --- the secret key, outside the checked tree ------------------------------------------------


def key_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbrefactor" / "key"


def _read_key(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CacheUnavailable(f"cannot read the key {path}: {err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise CacheUnavailable(f"the key {path} is not a private file of this user")
        data = os.read(fd, _KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != _KEY_BYTES:
        raise CacheUnavailable(f"the key {path} is not {_KEY_BYTES} bytes")
    return data


def secret_key() -> bytes:
    """The per-user key, created (0600, atomically: a whole key or none) on first use."""
    path = key_path()
    found = _read_key(path)
    if found is not None:
        return found
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.parent / f".key.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, os.urandom(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another run made one first: theirs is used
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError as err:
        raise CacheUnavailable(f"cannot create the key {path}: {err}") from None
    found = _read_key(path)
    if found is None:
        raise CacheUnavailable(f"cannot create the key {path}")
    return found


# --- what a result depends on besides the file's bytes ---------------------------------------


def _tree_fingerprint(folder: str, h) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                h.update(f"{os.path.relpath(p, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def code_fingerprint() -> str:
    """nbrefactor's own code (sizes and modification times of its .py files, so that a development
    checkout invalidates on any edit) and the libraries that read notebooks, without importing them."""
    import importlib.util

    from nbrefactor import __version__

    h = hashlib.sha256(f"{__version__}\0{sys.version}\0{sys.implementation.cache_tag}\n".encode())
    here = os.path.dirname(os.path.abspath(__file__))
    _tree_fingerprint(here, h)
    for name in ("codemods", "libcst", "jupytext", "nbformat"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        h.update(f"{name}\0{origin}\n".encode())
        if origin and name == "codemods":
            _tree_fingerprint(os.path.dirname(origin), h)
        elif origin:
            folder = os.path.dirname(origin)
            for marker in (origin, os.path.join(folder, "version.py"), os.path.join(folder, "_version.py")):
                try:
                    st = os.stat(marker)
                    h.update(f"{marker}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    pass
    return h.hexdigest()


def file_sha256(path) -> str | None:
    """The sha256 of a file read as the check reads it (`read_file`: a FIFO or a device is refused
    unopened, a file past the size limit unread); None when it cannot be read so."""
    from nbrefactor.errors import NotebookError
    from nbrefactor.notebook.model import read_file

    try:
        return hashlib.sha256(read_file(path)).hexdigest()
    except (OSError, NotebookError):
        return None


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# --- the cache folder ---------------------------------------------------------------------------


def _private_folder(path: Path, create: bool) -> None:
    """`path` is a real folder of this user (created if asked); a symbolic link or someone else's is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise CacheUnavailable(f"{path} does not exist") from None
        try:
            os.makedirs(path.parent, exist_ok=True)  # `cache-dir = "build/nbr"`: build/ too, as ruff does
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as err:
            raise CacheUnavailable(f"cannot create {path}: {err}") from None
        try:
            st = os.lstat(path)
        except OSError as err:
            raise CacheUnavailable(f"cannot create {path}: {err}") from None
    except OSError as err:
        raise CacheUnavailable(f"cannot use {path}: {err}") from None
    if stat.S_ISLNK(st.st_mode):
        raise CacheUnavailable(f"{path} is a symbolic link; refused")
    if not stat.S_ISDIR(st.st_mode):
        raise CacheUnavailable(f"{path} is not a folder")
    if st.st_uid != os.getuid():
        raise CacheUnavailable(f"{path} is not owned by this user; refused")


def _write_new(path: Path, data: bytes) -> None:
    """Write `path` atomically (temp + os.replace); never through a symbolic link."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # replaces a link itself, never its target
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cache_folder(root: Path, configured: str | None, source: Path | None) -> Path:
    """Where the cache lives: $NBREFACTOR_CACHE_DIR, else `cache-dir` from pyproject.toml (relative
    to the project root and, since the tree may be a stranger's, inside it), else `.nbrefactor_cache`."""
    from nbrefactor.errors import NotebookError

    env = os.environ.get("NBREFACTOR_CACHE_DIR")
    if env:
        return Path(env).absolute()
    if configured:
        folder = Path(os.path.normpath(root / configured))
        if not _is_under(os.path.realpath(folder), os.path.realpath(root)):
            raise NotebookError(source or root, f"[tool.nbrefactor] cache-dir `{configured}` is outside the project folder {root} (set NBREFACTOR_CACHE_DIR for a cache elsewhere)")
        return folder
    return root / DEFAULT_DIR


class Cache:
    """Lookups and stores for one run; every failure turns it off for the rest of the run."""

    def __init__(self, folder: Path, root: Path, secret: bytes, code: str):
        self.folder = folder
        self.entries = folder / SUBDIR
        self.root = os.path.realpath(root)
        self.secret = secret
        self.code = code  # code_fingerprint()
        self.salt = ""  # set by `settle` once the run's settings are known
        self.enabled = True
        self.ready = False  # the folders exist and are checked (done once, on the first store)
        self.hits = self.misses = 0

    # -- setup --

    @classmethod
    def open(cls, root: Path, folder: Path) -> Cache | None:
        """The cache for this run, or None (and why, with NBREFACTOR_CACHE_DEBUG=1) when it cannot be used."""
        try:
            secret = secret_key()
            cache = cls(folder, root, secret, code_fingerprint())
            if os.path.lexists(folder):
                _private_folder(folder, create=False)
                if os.path.lexists(cache.entries):
                    _private_folder(cache.entries, create=False)
            return cache
        except CacheUnavailable as err:
            debug(f"off: {err}")
            return None

    def settle(self, settings: dict) -> None:
        """The run's effective settings (selection, limits, ...): part of every key."""
        self.salt = hashlib.sha256(json.dumps({**settings, "code": self.code, "format": FORMAT}, sort_keys=True).encode()).hexdigest()

    def remembered(self, name: str, compute):
        """A value that depends on nbrefactor's code alone (the rule codes), kept in the cache so
        that a warm run need not import the rules to know it; JSON-able."""
        probe = {"key": hashlib.sha256(f"{name}\0{self.code}\0{FORMAT}".encode()).hexdigest(), "paired": False}
        found = self.lookup(probe, count=False)
        if found is not None and "value" in found:
            return found["value"]
        value = compute()
        self.store(probe, {"value": value}, None)
        return value

    def _prepare(self) -> None:
        if self.ready:
            return
        _private_folder(self.folder, create=True)
        for name, text in ((".gitignore", "# Automatically created by nbrefactor.\n*\n"), ("CACHEDIR.TAG", CACHEDIR_TAG)):
            p = self.folder / name
            if not os.path.lexists(p):
                _write_new(p, text.encode())
        _private_folder(self.entries, create=True)
        self.ready = True

    def _off(self, why: str) -> None:
        if self.enabled:
            debug(f"off: {why}")
        self.enabled = False

    # -- entries --

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.secret, body, hashlib.sha256).hexdigest().encode()

    def _entry_path(self, key: str) -> Path:
        return self.entries / f"{key}.json"

    def probe(self, path) -> dict | None:
        """What identifies this file's result now (None: not cacheable). Reads the file once."""
        if not self.enabled or str(path) == "-":
            return None
        absolute = os.path.abspath(path)
        if not _is_under(os.path.realpath(absolute), self.root):
            return None
        from nbrefactor.errors import NotebookError
        from nbrefactor.notebook.model import read_file

        try:  # as the check reads it: a FIFO or a device is refused unopened, a file beyond the size limit unread
            data = read_file(absolute)
        except (OSError, NotebookError):
            return None  # the check reports it
        digest = hashlib.sha256(data).hexdigest()
        p = Path(path)
        extra = {}
        if p.suffix == ".py":  # a script or a text notebook: an .ipynb beside it decides (discover.is_plain_script)
            extra["ipynb_beside"] = p.with_suffix(".ipynb").exists()
        from nbrefactor.notebook.pairs import may_be_paired

        try:
            paired = may_be_paired(absolute, data)
        except Exception as err:  # noqa: BLE001 - an unreadable jupytext configuration: the check says so
            debug(f"{path}: not cached ({type(err).__name__})")
            return None
        material = json.dumps([self.salt, str(path), absolute, digest, paired, extra]).encode()
        return {"key": hashlib.sha256(material).hexdigest(), "sha256": digest, "paired": paired}

    def lookup(self, probe: dict | None, count: bool = True) -> dict | None:
        """The stored outcome for `probe`, or None; an entry that does not verify is ignored."""
        if probe is None or not self.enabled:
            return None
        path = self._entry_path(probe["key"])
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as err:
            debug(f"ignored entry {path.name}: {err}")
            self.misses += 1
            return None
        try:
            st = os.fstat(fd)
            raw = os.read(fd, MAX_ENTRY_BYTES + 1) if stat.S_ISREG(st.st_mode) else b""
            while stat.S_ISREG(st.st_mode) and len(raw) <= MAX_ENTRY_BYTES:
                more = os.read(fd, MAX_ENTRY_BYTES + 1 - len(raw))
                if not more:
                    break
                raw += more
        except OSError:
            raw = b""
        finally:
            os.close(fd)
        entry = self._verify(raw, probe)
        if entry is None:
            debug(f"ignored entry {path.name}: it does not verify")
            self.misses += 1
            return None
        if not self._deps_hold(entry.get("deps", [])):
            self.misses += 1
            return None
        self.hits += count
        if time.time() - st.st_mtime > _DAY:
            try:
                os.utime(path, follow_symlinks=False)  # used: kept by the pruning
            except OSError:
                pass
        return entry["outcome"]

    def _verify(self, raw: bytes, probe: dict) -> dict | None:
        if len(raw) > MAX_ENTRY_BYTES or not raw.startswith(MAGIC):
            return None
        mac, sep, body = raw[len(MAGIC):].partition(b"\n")
        if not sep or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            entry = json.loads(body)
        except ValueError:
            return None
        if not isinstance(entry, dict) or entry.get("key") != probe["key"] or not isinstance(entry.get("outcome"), dict):
            return None
        if probe["paired"] != bool(entry.get("deps")):
            return None
        return entry

    def _deps_hold(self, deps) -> bool:
        """Every other file the result came from is as it was (bytes, and for a pair's sides the
        modification time that decides which side is read)."""
        if not isinstance(deps, list):
            return False
        for dep in deps:
            try:
                p, digest, mtime = dep["path"], dep["sha256"], dep.get("mtime_ns")
                if mtime is not None and os.stat(p).st_mtime_ns != mtime:
                    return False
            except (OSError, KeyError, TypeError):
                return False
            if file_sha256(p) != digest:
                return False
        return True

    def store(self, probe: dict | None, outcome: dict, deps: list[dict] | None) -> None:
        if probe is None or not self.enabled:
            return
        if probe["paired"] != bool(deps):
            return  # could be paired, read alone: its result depends on files that may appear
        body = json.dumps({"key": probe["key"], "outcome": outcome, "deps": deps or []}, separators=(",", ":")).encode()  # key order kept: it is printed
        if len(body) > MAX_ENTRY_BYTES - 200:
            return
        try:
            self._prepare()
            _write_new(self._entry_path(probe["key"]), MAGIC + self._mac(body) + b"\n" + body)
        except CacheUnavailable as err:
            self._off(str(err))
        except OSError as err:
            self._off(f"cannot write in {self.folder}: {err}")

    # -- pruning --

    def prune(self, now: float | None = None) -> int:
        """Delete entries not used for MAX_AGE_DAYS days (at most once a day); the number deleted."""
        if not self.enabled or not self.ready:
            return 0
        now = time.time() if now is None else now
        marker = self.entries / ".last-prune"
        try:
            if now - os.lstat(marker).st_mtime < _DAY:
                return 0
        except FileNotFoundError:
            pass
        except OSError:
            return 0
        removed = 0
        try:
            _write_new(marker, b"")
            with os.scandir(self.entries) as it:
                for e in it:
                    if not e.name.endswith((".json", ".tmp")):
                        continue
                    try:
                        if now - e.stat(follow_symlinks=False).st_mtime > MAX_AGE_DAYS * _DAY:
                            os.unlink(e.path)
                            removed += 1
                    except OSError:
                        continue
        except OSError:
            pass
        return removed


def dep_of(path: str, data: bytes | None = None, with_mtime: bool = True) -> dict:
    """One file a result came from, as `Cache.store` records it."""
    entry = {"path": os.path.abspath(path), "sha256": hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)}
    if with_mtime:
        entry["mtime_ns"] = os.stat(path).st_mtime_ns
    return entry


def clean(root: Path, configured: str | None, source: Path | None) -> Path | None:
    """Remove the cache folder of this project (`nbrefactor clean`); the folder removed, or None."""
    import shutil

    folder = cache_folder(root, configured, source)
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        from nbrefactor.errors import NotebookError

        raise NotebookError(folder, "not a cache folder (a symbolic link or a file); not removed")
    if not (folder / "CACHEDIR.TAG").is_file():
        from nbrefactor.errors import NotebookError

        raise NotebookError(folder, "has no CACHEDIR.TAG, so nbrefactor did not make it; not removed")
    shutil.rmtree(folder)
    return folder
