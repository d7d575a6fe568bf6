"""Atomic writes: the one way this project puts a file or a folder on disk.

A write goes to a dot-prefixed temporary sibling (readers, pandas included, skip dot files),
is fsynced, then renamed over the target, and the folder is fsynced so the rename itself
survives a power cut. A crash leaves the old file or the new one, never half of one.

A temporary's name carries its writer, `.<name>.tmp-<host>~<pid>~<start>~<random>`: the host
(its hostname, plus its pid namespace, since two containers may share a hostname), the writing
process's pid and its start time in whole seconds (so a reused pid is another writer). A
killed writer leaves its temporary behind, and `sweep_stale` removes it once it is stale:
its writer is on this host and gone, or it is older than a bound (RLAIF_STALE_TEMP_HOURS,
default 24), the only rule for writers on other hosts of a shared data root. A temporary
whose writer is alive and that is younger than the bound is never removed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

import psutil

STALE_AFTER_ENV = "RLAIF_STALE_TEMP_HOURS"
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>[^~/]+)~(?P<pid>\d+)~(?P<start>\d+)~\w+$")
# Temporaries written before names carried their writer: only their age tells.
_UNNAMED = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$|^\.write-probe-[0-9a-f]{32}$")


@functools.cache
def _host() -> str:
    """This machine as far as pids go: its hostname, and its pid namespace where /proc shows
    one (pods on one node may share the hostname, never a pid namespace)."""
    try:
        ns = f"+{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        ns = ""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) + ns


def temp_path(target: str | Path) -> Path:
    """A temporary sibling of `target`, named after this process (the module's doc)."""
    target = Path(target)
    return target.with_name(f"{_temp_prefix(target)}{uuid.uuid4().hex[:8]}")


def _temp_prefix(target: Path) -> str:
    # the start time is read each time: a forked child is another writer
    return f".{target.name}.tmp-{_host()}~{os.getpid()}~{int(psutil.Process().create_time())}~"


def _alive(pid: int, start: int) -> bool:
    """Whether process `pid` of this host runs, and is the one that started at `start`."""
    try:
        p = psutil.Process(pid)
        # create_time is boot time + ticks; boot time read from /proc can move by a second
        return abs(p.create_time() - start) < 2 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # a zombie too: killed, not yet reaped
        return False
    except psutil.AccessDenied:  # cannot tell: leave it to the age bound
        return True


def stale_after_s() -> float:
    """How old a temporary may grow before it is swept whoever wrote it (a write on another
    host of a shared data root cannot be asked whether it is still going)."""
    return float(os.environ.get(STALE_AFTER_ENV) or 24) * 3600


def is_stale(path: str | Path) -> bool:
    """Whether `path` is a temporary whose write will never finish: its writer is on this host
    and gone, or it is older than RLAIF_STALE_TEMP_HOURS (24)."""
    path = Path(path)
    named = _TEMP.match(path.name)
    if not named and not _UNNAMED.match(path.name):
        return False
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:  # renamed into place, or swept, meanwhile
        return False
    if age > stale_after_s():
        return True
    return bool(named) and named["host"] == _host() and not _alive(int(named["pid"]), int(named["start"]))


def sweep_stale(root: str | Path) -> list[Path]:
    """Remove the stale temporaries anywhere under `root` and return them. Safe beside live
    writers (their temporaries are not stale) and other sweepers (a file already gone is
    skipped); a temporary folder is removed whole or left whole, never entered."""
    swept = []
    for dirpath, dirnames, filenames in os.walk(root):
        temps = [n for n in (*dirnames, *filenames) if _TEMP.match(n) or _UNNAMED.match(n)]
        dirnames[:] = [n for n in dirnames if n not in temps]
        for path in (Path(dirpath) / n for n in temps):
            if not is_stale(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            swept.append(path)
    return swept


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the content to a temporary path; it is fsynced and renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_dir_atomic(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary sibling folder; its files are fsynced, then it replaces
    `out_dir` whole. Between the old folder's removal and the rename a crash leaves neither,
    never a half-written one under the final name."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out_dir), dir=out_dir.parent))
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
