"""Stale-export cleanup: what an `export_model` killed mid-way left beside its export directory."""

from __future__ import annotations

import os
import re
import shutil


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _stale_siblings(target, kind):
    """`.<name>.<kind>-<pid>-*` siblings of `target` whose writing process is gone (killed during an
    export). Folders without a pid (older releases) count as stale."""
    parent, base = os.path.split(target)
    pattern = re.compile(re.escape(f".{base}.{kind}-") + r"(?:(\d+)-)?")
    stale = []
    for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        match = pattern.match(entry)
        if match and os.path.isdir(os.path.join(parent, entry)):
            pid = match.group(1)
            if pid is None or (int(pid) != os.getpid() and not _pid_alive(int(pid))):
                stale.append(os.path.join(parent, entry))
    return stale


def recover_export(export_dir: str | os.PathLike) -> list[str]:
    """Repair what a killed `export_model` left beside `export_dir`: put back the previous export
    if the kill fell between moving it aside and renaming the new one into place, and delete
    half-written `.<name>.tmp-*` folders and leftover `.<name>.old-*` copies. Only folders of
    processes that are no longer running are touched. Returns the paths removed or restored."""
    target = os.path.abspath(os.fspath(export_dir))
    touched = []
    olds = _stale_siblings(target, "old")
    if olds and not os.path.exists(target):
        newest = max(olds, key=os.path.getmtime)
        os.rename(newest, target)
        touched.append(newest)
        olds.remove(newest)
    for path in olds + _stale_siblings(target, "tmp"):
        shutil.rmtree(path, ignore_errors=True)
        touched.append(path)
    return touched
