"""Where a script will write, checked before it does any work: a bad ``--out`` / ``--json`` / ``--results-dir``
is bad input (one line, exit 2), not a traceback after minutes of checks or runs.

And whose folder it is: the report, the export and the leaderboard write into a folder that is new, empty, or
one they wrote before. Each leaves a marker file listing what it wrote, and replaces only those files; a folder
holding anything else (a user's file) is refused, and so is the run store, anything in it or above it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


class OutputFolderError(ValueError):
    """An output folder the program may not write into; the message is the one line to print."""


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


def run_store_error(out_dir: Path, results_dir: Path) -> str | None:
    """An output folder is replaced whole: never the run store, a folder in it, or one holding it."""
    runs, out_dir = (Path(results_dir) / "runs").resolve(), Path(out_dir).resolve()
    if out_dir == runs or runs in out_dir.parents or out_dir in runs.parents:
        return f"--out {out_dir} is the run store {runs}, inside it or above it; choose a folder of its own outside it"
    return None


def owned_files(out_dir: Path, marker: str, writer: str) -> list[Path]:
    """The files at ``out_dir`` that ``writer`` may replace: all of them, when its marker lists every one.

    Raises :class:`OutputFolderError` for a file, or a non-empty folder it did not write (or that holds more).
    """
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise OutputFolderError(f"--out {out_dir} is a file; choose a folder")
    present = sorted(out_dir.iterdir())
    if not present:
        return []
    try:
        written = set(json.loads((out_dir / marker).read_text(encoding="utf-8"))["files"]) | {marker}
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputFolderError(
            f"--out {out_dir} is not empty and no {writer} wrote it (no {marker}); "
            "choose a new or empty folder, or move its files out"
        ) from None
    foreign = [p.name for p in present if p.name not in written or p.is_symlink() or not p.is_file()]
    if foreign:
        raise OutputFolderError(
            f"--out {out_dir} holds {', '.join(foreign[:3])}, which no {writer} wrote; "
            "move it out of the folder or choose another --out"
        )
    return present


def write_owner_marker(out_dir: Path, marker: str, writer: str, files: Iterable[str]) -> None:
    """The marker that lets ``writer`` replace ``files`` next time (and nothing else in the folder)."""
    record = {"written_by": writer, "files": sorted(set(files))}
    (out_dir / marker).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
