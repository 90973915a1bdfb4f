"""Tokenized corpora: offline Gutenberg slices with the local T5 and GPT-2 tokenizers, caching,
determinism, resuming an interrupted tokenization, held-out validation, and bad input."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from soapbench.data import hub
from soapbench.data.errors import DataError
from soapbench.data.text_tokenizers import TextTokenizer
from soapbench.data.tokenized import load_token_splits

DATA_ROOT = Path(os.environ.get("SOAPBENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SLICE_CHARS = 60_000


@pytest.fixture(scope="module")
def gutenberg_slices(tmp_path_factory) -> tuple[Path, Path]:
    """Small train/val slices of the shared Gutenberg books (read in place, written to a temp dir)."""
    folder = tmp_path_factory.mktemp("gutenberg")
    paths = []
    for split in ("train", "val"):
        with gzip.open(
            DATA_ROOT / "text" / "gutenberg_en" / f"{split}.txt.gz", "rt", encoding="utf-8", newline=""
        ) as f:
            text = f.read(SLICE_CHARS)
        path = folder / f"{split}.txt.gz"
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
        paths.append(path)
    return paths[0], paths[1]


def config(train, val=None, tokenizer=None, **extra) -> dict:
    source = {"train": str(train)}
    if val is not None:
        source["val"] = str(val)
    cfg = {"name": "test", "kind": "tokenized", "source": source, "tokenizer": tokenizer or {"path": "tokenizers/t5"}}
    cfg.update(extra)
    return cfg


def read_text(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def test_t5_tokenization_equals_whole_file_encoding_plus_eos(gutenberg_slices, tmp_path) -> None:
    from tokenizers import Tokenizer

    train, val = gutenberg_slices
    # Small pieces: the cut points must not change a single id.
    splits = load_token_splits(config(train, val, chunk_chars=4096), DATA_ROOT, tmp_path)
    t5 = Tokenizer.from_file(str(DATA_ROOT / "tokenizers" / "t5" / "tokenizer.json"))
    for array, path in ((splits.train, train), (splits.val, val)):
        expected = t5.encode(read_text(path), add_special_tokens=False).ids + [1]  # </s> closes the document
        assert array.dtype == np.uint16
        assert array.tolist() == expected
    assert splits.vocab_size == 32100
    manifest = json.loads((Path(splits.meta["cache_dir"]) / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] == len(splits.train)
    assert manifest["tokenizer"]["sha256"] and manifest["splits"]["val"]["sha256"] == splits.meta["val_sha256"]


def test_gpt2_via_tokenizers_and_tiktoken_agree(gutenberg_slices, tmp_path) -> None:
    train, val = gutenberg_slices
    hf = load_token_splits(config(train, val, {"path": "tokenizers/gpt2"}), DATA_ROOT, tmp_path)
    tik = load_token_splits(
        config(train, val, {"tiktoken": "gpt2", "tiktoken_cache": "tokenizers/tiktoken_cache"}), DATA_ROOT, tmp_path
    )
    assert hf.vocab_size == tik.vocab_size == 50257
    assert np.array_equal(hf.train, tik.train) and np.array_equal(hf.val, tik.val)
    assert hf.train[-1] == 50256  # <|endoftext|>
    assert hf.meta["cache_dir"] != tik.meta["cache_dir"]  # the tokenizer is part of the cache key


def test_deterministic_and_cached(gutenberg_slices, tmp_path, monkeypatch) -> None:
    train, val = gutenberg_slices
    cfg = config(train, val)
    first = load_token_splits(cfg, DATA_ROOT, tmp_path / "a")
    second = load_token_splits(cfg, DATA_ROOT, tmp_path / "b")
    assert first.meta["train_sha256"] == second.meta["train_sha256"]
    assert first.meta["val_sha256"] == second.meta["val_sha256"]

    def no_tokenizing(self, texts):
        raise AssertionError("a cached corpus must not be tokenized again")

    monkeypatch.setattr(TextTokenizer, "encode_batch", no_tokenizing)
    again = load_token_splits(cfg, DATA_ROOT, tmp_path / "a")
    assert isinstance(again.train, np.memmap) and np.array_equal(again.train, first.train)


def test_interrupted_tokenization_resumes(gutenberg_slices, tmp_path, monkeypatch) -> None:
    train, val = gutenberg_slices
    # Several batches per split and progress saves in between, so the interruption lands mid-split.
    cfg = config(train, val, chunk_chars=2048, tokenize_batch_chars=8192, flush_tokens=3000)
    reference = load_token_splits(cfg, DATA_ROOT, tmp_path / "reference")

    original = TextTokenizer.encode_batch
    calls = {"n": 0}

    def counting(self, texts):
        calls["n"] += 1
        if calls["limit"] is not None and calls["n"] > calls["limit"]:
            raise KeyboardInterrupt  # what Ctrl-C or a pre-emption looks like mid-run
        return original(self, texts)

    monkeypatch.setattr(TextTokenizer, "encode_batch", counting)
    calls.update(n=0, limit=None)
    load_token_splits(cfg, DATA_ROOT, tmp_path / "full")
    full_calls = calls["n"]

    calls.update(n=0, limit=full_calls - 3)
    with pytest.raises(KeyboardInterrupt):
        load_token_splits(cfg, DATA_ROOT, tmp_path / "resumed")
    cache = next((tmp_path / "resumed" / "tokenized").iterdir())
    assert not (cache / "manifest.json").exists() and (cache / "train.bin.partial").exists()
    saved = json.loads((cache / "train.progress.json").read_text())
    assert 0 < saved["tokens"] <= (cache / "train.bin.partial").stat().st_size // 2
    with open(cache / "train.bin.partial", "ab") as torn:
        torn.write(b"\xff" * 1001)  # a write cut short after the last saved progress

    calls.update(n=0, limit=None)
    resumed = load_token_splits(cfg, DATA_ROOT, tmp_path / "resumed")
    assert calls["n"] < full_calls - 1  # it did not start over (val was already done, train continued)
    assert resumed.meta["train_sha256"] == reference.meta["train_sha256"]
    assert np.array_equal(resumed.train, reference.train) and np.array_equal(resumed.val, reference.val)


def test_validation_held_out_of_the_train_stream(gutenberg_slices, tmp_path) -> None:
    train, _ = gutenberg_slices
    whole = load_token_splits(config(train, train), DATA_ROOT, tmp_path).train
    splits = load_token_splits(config(train, None, chunk_chars=2048, max_val_tokens=1000), DATA_ROOT, tmp_path)
    assert splits.meta["val_held_out"]
    assert np.array_equal(splits.val, whole[:1000])
    # Train continues right after the held-out pieces: a suffix of the whole stream, disjoint from val.
    assert len(splits.train) + 1000 < len(whole)
    assert np.array_equal(splits.train, whole[len(whole) - len(splits.train) :])


def test_jsonl_and_parquet_records_are_documents(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = ["First document.", "Second one, a bit longer.", "Third."]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": docs}), parquet)
    a = load_token_splits(config(jsonl, parquet, {"path": "tokenizers/gpt2"}), DATA_ROOT, tmp_path / "cache")
    assert int((a.train == 50256).sum()) == len(docs)
    assert np.array_equal(a.train, a.val)


def test_missing_path_names_the_file(tmp_path) -> None:
    with pytest.raises(DataError, match="text/nope.txt.gz does not exist"):
        load_token_splits(config("text/nope.txt.gz"), DATA_ROOT, tmp_path)


def test_empty_file_names_the_file(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=f"{empty}.*empty"):
        load_token_splits(config(empty, empty), DATA_ROOT, tmp_path / "cache")
    blank = tmp_path / "blank.txt.gz"
    with gzip.open(blank, "wt") as f:
        f.write("\n\n")
    with pytest.raises(DataError, match=f"{blank}.*no text"):
        load_token_splits(config(blank, blank), DATA_ROOT, tmp_path / "cache")


def test_wrong_tokenizer_path_names_it(gutenberg_slices, tmp_path) -> None:
    train, val = gutenberg_slices
    with pytest.raises(DataError, match="data.tokenizer.path: .*tokenizers/t6 does not exist"):
        load_token_splits(config(train, val, {"path": "tokenizers/t6"}), DATA_ROOT, tmp_path)
    with pytest.raises(DataError, match=f"{tmp_path} holds no tokenizer files"):
        load_token_splits(config(train, val, {"path": str(tmp_path)}), DATA_ROOT, tmp_path)


def test_hub_source_fails_fast_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_reachable", None)
    cfg = {
        "name": "c4",
        "source": {"hub": "allenai/c4", "hub_config": "en", "val_split": "validation"},
        "tokenizer": {"path": "tokenizers/t5"},
    }
    started = time.perf_counter()
    with pytest.raises(DataError, match="allenai/c4.*not reachable.*data.source.train"):
        load_token_splits(cfg, DATA_ROOT, tmp_path)
    assert time.perf_counter() - started < 10


def test_declared_vocab_size_must_match_the_tokenizer(gutenberg_slices, tmp_path) -> None:
    train, val = gutenberg_slices
    with pytest.raises(DataError, match="data.vocab_size: 50257 does not match the tokenizer's 32100"):
        load_token_splits(config(train, val, vocab_size=50257), DATA_ROOT, tmp_path)
