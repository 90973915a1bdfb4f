"""Where raw text comes from: local files or a Hugging Face dataset, as a stream of pieces.

A source yields ``(text, ends_document)`` pieces in a fixed order, so "skip the first n pieces"
is how an interrupted tokenization resumes and how a held-out validation split is cut off the
front of a train stream. Records of ``.jsonl``/``.parquet`` files and hub rows are whole
documents. Plain ``.txt``/``.txt.gz`` files are one document each (a book, a corpus dump) and are
cut into ~``chunk_chars`` pieces at line ends, so progress and resume work inside a long file;
the cut points are a pure function of the file, so the pieces are the same on every run.

Local paths may be globs; relative paths are resolved against the data root. Hub datasets are
streamed (``datasets.load_dataset(..., streaming=True)``) after a fast reachability check.
"""

from __future__ import annotations

import glob
import gzip
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soapbench.data.errors import DataError
from soapbench.data.hub import require_hub

Piece = tuple[str, bool]
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(SUPPORTED, key=len, reverse=True) if name.endswith(s)), "")


def resolve_paths(spec: str | list[str], data_root: Path, key: str) -> list[Path]:
    """Expand a path, a glob or a list of them (relative to ``data_root``) into existing files, sorted per pattern."""
    patterns = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not patterns:
        raise DataError(f"{key}: empty list of paths; give at least one {'/'.join(SUPPORTED)} file")
    files: list[Path] = []
    for pattern in patterns:
        path = Path(str(pattern)).expanduser()
        if not path.is_absolute():
            path = data_root / path
        if any(ch in str(path) for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path)))
            if not matches:
                raise DataError(
                    f"{key}: no file matches {path}; check the pattern (relative paths are under data_root={data_root})"
                )
        elif not path.exists():
            raise DataError(
                f"{key}: {path} does not exist; point it at an existing file "
                f"(relative paths are under data_root={data_root}, set by SOAPBENCH_DATA)"
            )
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p))
            if not matches:
                raise DataError(f"{key}: directory {path} holds no {'/'.join(SUPPORTED)} files")
        else:
            matches = [path]
        for match in matches:
            if not _suffix(match):
                raise DataError(f"{key}: {match} is not a supported text file; use one of {', '.join(SUPPORTED)}")
        files.extend(matches)
    return files


@dataclass
class LocalTextSource:
    """Local ``.txt``/``.txt.gz``/``.jsonl(.gz)``/``.parquet`` files, read in the given order."""

    files: list[Path]
    key: str
    text_field: str = "text"
    chunk_chars: int = 1 << 16
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.description = ", ".join(str(f) for f in self.files[:3]) + (" ..." if len(self.files) > 3 else "")

    def identity(self) -> dict[str, Any]:
        files = [
            {"path": str(f.resolve()), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in self.files
        ]
        return {"type": "local", "files": files, "text_field": self.text_field, "chunk_chars": self.chunk_chars}

    def ensure_available(self) -> None:
        """Local files were checked when the paths were resolved."""

    def pieces(self, skip: int = 0) -> Iterator[Piece]:
        return itertools.islice(self._all_pieces(), skip, None)

    def _all_pieces(self) -> Iterator[Piece]:
        for path in self.files:
            if path.stat().st_size == 0:
                raise DataError(f"{self.key}: {path} is empty; remove it from the list or point at a file with text")
            produced = False
            try:
                for piece in self._file_pieces(path):
                    produced = produced or bool(piece[0].strip())
                    yield piece
            except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
                raise DataError(
                    f"{self.key}: cannot read {path} ({type(error).__name__}: {error}); check the file is intact"
                ) from error
            if not produced:
                raise DataError(f"{self.key}: {path} contains no text; point at a file with text")

    def _file_pieces(self, path: Path) -> Iterator[Piece]:
        suffix = _suffix(path)
        if suffix in TEXT_SUFFIXES:
            yield from self._text_pieces(path)
        elif suffix in JSON_SUFFIXES:
            yield from self._json_pieces(path)
        else:
            yield from self._parquet_pieces(path)

    def _open_text(self, path: Path) -> io.TextIOBase:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")

    def _text_pieces(self, path: Path) -> Iterator[Piece]:
        buffer = ""
        with self._open_text(path) as handle:
            while True:
                block = handle.read(self.chunk_chars)
                if not block:
                    break
                buffer += block
                # Cut just before the last run of whitespace that holds a newline: pre-tokenizers
                # (GPT-2's regex, SentencePiece's whitespace split) always break there, so the ids
                # equal those of the whole file in one piece.
                cut = buffer.rfind("\n")
                while cut > 0 and buffer[cut - 1].isspace():
                    cut -= 1
                if cut <= 0:
                    if len(buffer) < 4 * self.chunk_chars:
                        continue
                    cut = len(buffer)  # a huge line without a usable break: accept one odd boundary
                piece, buffer = buffer[:cut], buffer[cut:]
                yield piece, False
        # The last piece (possibly empty) closes the file's document, so the writer appends EOS.
        yield buffer, True

    def _json_pieces(self, path: Path) -> Iterator[Piece]:
        with self._open_text(path) as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if self.text_field not in record:
                    raise DataError(
                        f"{self.key}: {path} line {line_number} has no field {self.text_field!r} "
                        f"(fields: {', '.join(sorted(record))}); set data.source.text_field"
                    )
                yield record[self.text_field], True

    def _parquet_pieces(self, path: Path) -> Iterator[Piece]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if self.text_field not in parquet.schema_arrow.names:
            raise DataError(
                f"{self.key}: {path} has no column {self.text_field!r} "
                f"(columns: {', '.join(parquet.schema_arrow.names)}); set data.source.text_field"
            )
        for batch in parquet.iter_batches(columns=[self.text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text:
                    yield text, True


@dataclass
class HubTextSource:
    """A Hugging Face dataset split, streamed; each row's ``text_field`` is one document."""

    name: str
    config: str | None
    split: str
    key: str
    text_field: str = "text"
    revision: str | None = None

    @property
    def description(self) -> str:
        return f"hf://{self.name}" + (f"/{self.config}" if self.config else "") + f" [{self.split}]"

    def identity(self) -> dict[str, Any]:
        return {
            "type": "hub",
            "name": self.name,
            "config": self.config,
            "split": self.split,
            "revision": self.revision,
            "text_field": self.text_field,
        }

    def ensure_available(self) -> None:
        """Fail fast (one line naming the dataset and the local-path fix) when the hub cannot be reached."""
        require_hub(
            f"{self.key}: dataset {self.name}",
            "set data.source.train (and data.source.val) to local .jsonl(.gz)/.parquet/.txt files instead",
        )

    def pieces(self, skip: int = 0) -> Iterator[Piece]:
        self.ensure_available()
        import datasets

        try:
            stream = datasets.load_dataset(
                self.name, self.config, split=self.split, streaming=True, revision=self.revision
            )
        except Exception as error:  # the hub answers, but the dataset, config or split is wrong
            raise DataError(
                f"{self.key}: cannot open hub dataset {self.description} ({error}); check name, config and split"
            ) from error
        if skip:
            stream = stream.skip(skip)
        for row in stream:
            if self.text_field not in row:
                raise DataError(
                    f"{self.key}: {self.description} rows have no field {self.text_field!r}; set data.source.text_field"
                )
            yield row[self.text_field], True


TextSource = LocalTextSource | HubTextSource
