"""Where a script will write, checked before it does any work: a bad ``--out`` / ``--json`` / ``--results-dir``
is bad input (one line, exit 2), not a traceback after minutes of checks or runs."""

from __future__ import annotations

import os
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable_ancestor(path: Path, flag: str, folder: Path) -> str | None:
    """Why ``folder`` (which will hold ``path``) cannot be made and written, or None."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return f"{flag} {path}: {existing} is a file, not a folder; choose a path under a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {path}: {existing} is not writable; choose a writable folder"
    return None


def output_dir_error(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be (made and) written as an output folder, or None if it can."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return f"{flag} {path}: exists and is not a folder; choose a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{flag} {path}: not writable; choose a writable folder"
        return None
    return _unwritable_ancestor(path, flag, path)


def output_file_error(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be written as an output file, or None if it can."""
    path = Path(path)
    if path.is_dir():
        return f"{flag} {path}: is a folder; name a file"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{flag} {path}: not writable; choose another file"
    return _unwritable_ancestor(path, flag, path.parent)
