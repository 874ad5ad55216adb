"""Small helpers shared across mmbert (no dependencies on the rest of the package).

Crash safety lives here, so every writer does it the same way:
  atomic_write(path, data)   one file: temp file beside it, fsync, rename over, fsync the directory
  publish_dir(path)          one directory: built in a sibling temp dir, fsynced, then swapped into
                             place in one rename (an existing one stays whole until the new is complete)
  RunLock(path)              one writer per run/output directory: an advisory lock file beside it
                             that names its holder (pid, host, command)
  sweep_stale(dir)           temp files/dirs of dead processes on this host are removed, a live
                             writer's never
  storage_problem(exc)       disk full / quota / permission / read-only → the CLI's one
                             `error:` line naming the path and the fix
  crash_point(name)          fault injection for the crash tests: $MMBERT_TEST_KILL_AT=name[#k]
                             SIGKILLs the process at the k-th time it reaches `name` (placed right
                             before every publishing rename and every pruning rename)

Temp names are `.<name>.<kind>-<pid>@<host>` (kind: tmp, old, del), so whoever finds one later can
tell whether its writer is still alive.

Conventions every layer shares, each written once here:
  SPECIAL_TOKENS, PAD_ID … MASK_ID   mmBERT's special tokens and their ids 0..4
  IGNORE_INDEX                       the label of a position that is not a target (-100)
  unwrap(model)                      the plain module under DDP / torch.compile wrappers
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

# ------------------------------------------------------------------ conventions

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # mmBERT's (Gemma 2's), in id order
# Their ids: the defaults of a model config, the first ids of a tokenizer we train, and the loader's
# fallback for shards without tokenizer info. A foreign model's ids come from its files
# (mmbert.tokenizer.resolve_special_ids), never from these.
PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))
IGNORE_INDEX = -100  # label of a position that is not a target: torch.nn.functional.cross_entropy's default


def unwrap(model):
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers, in any
    nesting: what checkpoints save and what the loop sets RoPE θ and dropout on."""
    from torch import nn  # here, not at the top: utils is imported by torch-free tools (corpus, tokenizer)

    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile(model)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)  # DistributedDataParallel(model)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?:[A-Za-z0-9_]+-)?(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)$")


def temp_name(name: str, kind: str = "tmp") -> str:
    """`.<name>.<kind>-<pid>@<host>`: a hidden sibling that sweep_stale can attribute to its writer."""
    return f".{name}.{kind}-{os.getpid()}@{HOST}"


def published_name(path: str | os.PathLike) -> str:
    """The name a directory will have once published: `.<name>.tmp-<pid>@<host>` → `<name>` (what a
    file written inside `publish_dir`'s temp dir should call its directory)."""
    m = re.fullmatch(r"\.(.+)\.tmp-\d+@.*", Path(path).name)
    return m.group(1) if m else Path(path).name


# ------------------------------------------------------------------ fault injection (crash tests)

_CRASH_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process here when $MMBERT_TEST_KILL_AT is `name` or `name#k` (the k-th time, from
    1), or `kind#k` for names `kind:detail`, or `*#k` (the k-th crash point of any name).
    $MMBERT_TEST_CRASH_TRACE=file appends every name reached. Costs two environment lookups."""
    trace = os.environ.get("MMBERT_TEST_CRASH_TRACE")
    if trace:  # list every point reached (the crash tests enumerate them)
        with open(trace, "a") as f:
            f.write(f"{name}\n")
    spec = os.environ.get("MMBERT_TEST_KILL_AT")
    if not spec:
        return
    want, _, k = spec.partition("#")
    if want not in ("*", name, name.partition(":")[0]):
        return
    _CRASH_COUNTS[want] = _CRASH_COUNTS.get(want, 0) + 1
    if _CRASH_COUNTS[want] == int(k or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------ fsync

def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's data and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; the data is as safe as they allow
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root` (deepest first), then `root` itself."""
    for d, dirs, files in os.walk(root, topdown=False):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                fsync_path(p)
        fsync_path(d)


def _file_mode() -> int:
    """0666 minus the umask: what open() would have given (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# ------------------------------------------------------------------ one file

def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[str], None]) -> Path:
    """Write `path` so that readers see the old file or the complete new one, never a partial one:
    write a temp file in the same directory, fsync it, os.replace it into place, fsync the directory
    (a crash leaves at most a hidden temp file, which is removed on error or by sweep_stale). The
    file gets the usual mode (0666 minus the umask). `data` is text (UTF-8), bytes, or a function
    that writes the file at the temp path it is given (e.g. safetensors' save_file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=f"-{os.getpid()}@{HOST}")
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, _file_mode())
        fsync_path(tmp)
        crash_point(f"atomic_write:{path.name}")
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------ stale temps

def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def sweep_stale(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temp files/directories in `directory` (of `name` only, if given) whose writer — a
    process on this host — is dead. An `.old-` directory whose target is missing (a crash between
    the two renames of a replace) is put back instead: it is the last complete version. Temps of
    live processes and of other hosts are left alone. Returns what was removed or restored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = []
    for p in sorted(directory.iterdir()):
        m = _TEMP.match(p.name)
        if not m or (name is not None and m["name"] != name) or m["host"] != HOST or _alive(int(m["pid"])):
            continue
        target = directory / m["name"]
        if m["kind"] == "old" and not target.exists():
            os.rename(p, target)
        else:
            _remove(p)
        done.append(p)
    if done:
        fsync_path(directory)
    return done


# ------------------------------------------------------------------ one directory

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _carry_over(old: Path, new: Path, carry: Callable[[str], bool]) -> None:
    """Hard-link (copy where links fail) entries of `old` that `new` lacks and `carry` accepts."""
    for p in old.iterdir():
        dst = new / p.name
        if dst.exists() or not carry(p.name):
            continue
        if p.is_dir():
            shutil.copytree(p, dst, copy_function=_link_or_copy)
        else:
            _link_or_copy(p, dst)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def publish_dir(path: str | os.PathLike, carry: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Write a whole directory atomically:

        with publish_dir("out/export/mid") as tmp:   # a sibling temp dir: .mid.tmp-<pid>@<host>
            write files into tmp
        # here out/export/mid is the complete new directory; readers never saw a mix

    On success the temp dir is fsynced and renamed into place; an existing directory is swapped
    out in one atomic rename (renameat2 RENAME_EXCHANGE; elsewhere two renames, and a crash between
    them leaves the old one beside, put back by the next sweep_stale) and only then deleted.
    `carry(name)` → True keeps that entry of the old directory when the new one does not write it
    (hard links). On error the temp dir is removed, and so are parent directories this call created."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a directory; choose another output path")
    cwd = Path(os.path.realpath(os.getcwd()))
    if path.exists() and Path(os.path.realpath(path)) in (cwd, *cwd.parents):
        raise ValueError(f"{path} is the current directory (or holds it) and cannot be replaced whole; "
                         f"write to a new subdirectory instead")
    parent = path.parent
    created = [a for a in [parent, *parent.parents] if not a.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent, path.name)
    tmp = parent / temp_name(path.name)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if carry is not None and path.is_dir():
            _carry_over(path, tmp, carry)
        fsync_tree(tmp)
        crash_point(f"publish_dir:{path.name}")
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            pass  # tmp now holds the old version
        else:
            old = parent / temp_name(path.name, "old")
            os.rename(path, old)
            crash_point(f"publish_dir.second_rename:{path.name}")
            os.rename(tmp, path)
            os.rename(old, tmp)
        fsync_path(parent)
        crash_point(f"publish_dir.cleanup:{path.name}")
        _remove(tmp)
    except BaseException:
        _remove(tmp)
        for a in created:  # innermost first: only the empty ones this call made
            with contextlib.suppress(OSError):
                a.rmdir()
        raise


# ------------------------------------------------------------------ one writer

class RunLocked(FileExistsError):
    """Another process is writing this run or output directory."""


_HELD: dict[str, list] = {}  # lock path → [fd, depth, parents it created]: re-entrant within one process


class RunLock:
    """Advisory lock for writing `target` (a run or output directory), held from enter to exit.

        with RunLock(out):            # .<name>.lock beside `out`; names its holder; removed on exit
            ...write out...

    A second writer gets RunLocked naming the holder (pid, host, since, command). The kernel drops
    the lock when the holder dies, so a killed run never wedges the directory. Re-entrant within a
    process (a command that takes the lock may call library writers that take it again)."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        t = self.target.absolute()
        self.path = t.parent / f".{t.name}.lock"

    def __enter__(self) -> "RunLock":
        key = str(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        self.created = [a for a in [self.path.parent, *self.path.parent.parents] if not a.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                os.close(fd)
                raise RunLocked(f"{self.target} is being written by another mmbert process "
                                f"({_describe_holder(holder)}); wait for it to finish, or stop it — two "
                                f"writers would corrupt it (lock: {self.path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous holder unlinked while we opened it
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": HOST, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = [fd, 1, self.created]
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.path)
        entry = _HELD[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still locked: a waiter re-checks the inode
            os.close(entry[0])
            for a in entry[2]:  # parents made for the lock file that nothing else filled
                with contextlib.suppress(OSError):
                    a.rmdir()


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}: {h.get('command') or '?'}"
    except (ValueError, KeyError, TypeError):
        return "holder not recorded yet"


# ------------------------------------------------------------------ storage errors

STORAGE_PROBLEMS = {  # errno → (verb, problem, fix)
    errno.ENOSPC: ("write", "no space left on the device", "free some space (or write to a larger disk) and run it again"),
    errno.EDQUOT: ("write", "the disk quota is exceeded", "free some space within the quota and run it again"),
    errno.EACCES: ("access", "permission denied", "choose a path you can read/write, or fix its permissions"),
    errno.EPERM: ("access", "operation not permitted", "choose a path you can read/write, or fix its permissions"),
    errno.EROFS: ("write", "the file system is read-only", "choose a directory on a writable file system"),
}
# the same failures as seen through libraries that flatten them into strings
_MESSAGES = [
    (re.compile(r"os error 28\b|No space left on device"), errno.ENOSPC),
    (re.compile(r"os error 122\b|Disk quota exceeded"), errno.EDQUOT),
    (re.compile(r"os error 13\b|Permission denied"), errno.EACCES),
    (re.compile(r"os error 30\b|Read-only file system"), errno.EROFS),
]
_TRUNCATED_WRITE = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing|file write failed")


def storage_problem(exc: BaseException, default_path: str | os.PathLike | None = None) -> str | None:
    """One line — "cannot write <path>: no space left on the device; free some space …" — when `exc`
    (or what caused it) is a disk-full, quota, permission or read-only failure; None otherwise.
    Libraries that flatten the OSError into text (safetensors: "os error 28", torch: "unexpected
    pos …") are recognised too; `default_path` names the output when the error does not."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code, note, path = None, "", None
        if isinstance(e, OSError) and e.errno in STORAGE_PROBLEMS:
            code, path = e.errno, e.filename
        else:
            text = str(e)
            code = next((c for pat, c in _MESSAGES if pat.search(text)), None)
            m = _TRUNCATED_WRITE.search(text)
            if code is None and m:
                code, note = errno.ENOSPC, f"a write stopped part-way ({m[0]}): most likely "
        if code is not None:
            verb, what, fix = STORAGE_PROBLEMS[code]
            return f"cannot {verb} {path or default_path or 'the output'}: {note}{what}; {fix}"
        e = e.__cause__ or e.__context__
    return None


# ----------------------------------------------------------------------------- dtype names
# One dtype vocabulary for the CLI and the library: the short name is canonical (and the one help
# texts show); the torch name is accepted too, in any case.
DTYPE_NAMES = {"auto": "auto", "fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
               "fp16": "fp16", "float16": "fp16", "int8": "int8"}


def canonical_dtype(name: str, allowed: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")) -> str:
    """`name` in any spelling of DTYPE_NAMES → its canonical name, if among `allowed`; else ValueError
    naming the choices and their spellings."""
    canon = DTYPE_NAMES.get(str(name).lower())
    if canon not in allowed:
        names = ", ".join(f"{a} ({'/'.join(k for k, v in DTYPE_NAMES.items() if v == a)})" for a in allowed)
        raise ValueError(f"unknown dtype {name!r}; choose one of: {names}")
    return canon
