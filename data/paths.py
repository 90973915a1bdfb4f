"""Where data lives: a data root laid out like ``shared/data`` (``tinyshakespeare/input.txt``, …).

Resolution order: the config key ``paths.data_root``, the environment variable
``SOAPBENCH_DATA``, then a per-user cache directory. Files missing there may be
downloaded from their canonical public URL (with a progress bar and a checksum).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from platformdirs import user_cache_dir
from tqdm import tqdm

from soapbench.data.errors import DataError

DATA_ENV = "SOAPBENCH_DATA"


def resolve_data_root(configured: str | os.PathLike | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path(user_cache_dir("soapbench")) / "data"


def default_cache_dir(configured: str | os.PathLike | None = None) -> Path:
    """Derived artefacts (token shards, decoded images): never inside a read-only data root."""
    if configured:
        return Path(configured).expanduser()
    return Path(user_cache_dir("soapbench")) / "cache"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, destination: Path, sha256: str, timeout_seconds: float = 15.0) -> Path:
    """Fetch ``url`` to ``destination`` atomically, verifying its checksum; raise DataError on any failure."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {destination.name}") as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({error})") from error
    actual = sha256_of(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise DataError(f"download of {url} has sha256 {actual}, expected {sha256}; the file was discarded")
    os.replace(partial, destination)
    return destination
