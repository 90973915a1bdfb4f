"""Tokenizers for the LM corpora: T5 (the SOAP paper's) and GPT-2, from local files or the hub.

A data config's ``tokenizer`` mapping picks one loader (first match wins):

``path: tokenizers/t5``      a local directory or file (relative to the data root). A ``tokenizer.json``
                             is loaded with the ``tokenizers`` library (the OLMo code path); a directory
                             without one (e.g. only ``spiece.model``) goes through ``transformers.AutoTokenizer``.
``tiktoken: gpt2``           a tiktoken encoding; ``tiktoken_cache: tokenizers/tiktoken_cache`` makes it
                             work offline (sets ``TIKTOKEN_CACHE_DIR``).
``hub: t5-base``             ``AutoTokenizer.from_pretrained`` from the hub, after a reachability check.

``path`` and ``hub`` may both be given: the local copy is used when it exists, else the hub.
Documents are encoded *without* special tokens; the writer appends ``eos_id`` after each document
(OLMo/T5: ``</s>`` = 1; GPT-2: ``<|endoftext|>`` = 50256).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soapbench.data.cache import file_sha256
from soapbench.data.errors import DataError
from soapbench.data.hub import require_hub

EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.json", "merges.txt")


@dataclass
class TextTokenizer:
    """``encode_batch(texts) -> list of id lists``; ``identity`` pins it for cache keys and manifests."""

    encode_fn: Callable[[list[str]], list[list[int]]]
    vocab_size: int
    eos_id: int
    identity: dict[str, Any]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encode_fn(list(texts))


def _resolve(path_spec: str, data_root: Path) -> Path:
    path = Path(path_spec).expanduser()
    return path if path.is_absolute() else data_root / path


def _eos_from_vocab(token_to_id: Callable[[str], int | None], explicit: str | None, where: str) -> int:
    names = [explicit] if explicit else list(EOS_CANDIDATES)
    for name in names:
        token_id = token_to_id(name)
        if token_id is not None:
            return token_id
    raise DataError(f"data.tokenizer: {where} has no end-of-text token among {names}; set data.tokenizer.eos_token")


def _from_tokenizer_json(path: Path, eos_token: str | None) -> TextTokenizer:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:
        raise DataError(
            f"data.tokenizer.path: cannot load {path} ({error}); point it at a valid tokenizer.json"
        ) from error

    def encode(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]

    return TextTokenizer(
        encode_fn=encode,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        eos_id=_eos_from_vocab(tokenizer.token_to_id, eos_token, str(path)),
        identity={"loader": "tokenizers", "file": str(path.resolve()), "sha256": file_sha256(path)},
    )


def _from_transformers(name_or_dir: str, eos_token: str | None, identity: dict[str, Any]) -> TextTokenizer:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    except Exception as error:
        raise DataError(
            f"data.tokenizer: cannot load {name_or_dir} with transformers ({type(error).__name__}: {error})"
        ) from error
    eos_id = tokenizer.convert_tokens_to_ids(eos_token) if eos_token else tokenizer.eos_token_id
    if eos_id is None:
        raise DataError(f"data.tokenizer: {name_or_dir} defines no eos token; set data.tokenizer.eos_token")

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    return TextTokenizer(encode_fn=encode, vocab_size=len(tokenizer), eos_id=int(eos_id), identity=identity)


def _from_tiktoken(name: str, cache: str | None, data_root: Path) -> TextTokenizer:
    import tiktoken

    if cache and _resolve(cache, data_root).is_dir():
        # A missing cache is not an error: tiktoken then downloads the files itself when online.
        os.environ["TIKTOKEN_CACHE_DIR"] = str(_resolve(cache, data_root))
    try:
        encoding = tiktoken.get_encoding(name)
    except Exception as error:
        raise DataError(
            f"data.tokenizer.tiktoken: cannot load encoding {name!r} ({type(error).__name__}: {error}); "
            "offline, set data.tokenizer.tiktoken_cache to a directory holding its files"
        ) from error

    def encode(texts: list[str]) -> list[list[int]]:
        return encoding.encode_ordinary_batch(texts)

    return TextTokenizer(
        encode_fn=encode,
        vocab_size=encoding.n_vocab,
        eos_id=encoding.eot_token,
        identity={"loader": "tiktoken", "encoding": name, "n_vocab": encoding.n_vocab},
    )


def _from_local(path: Path, eos_token: str | None) -> TextTokenizer:
    if path.is_file():
        if path.name.endswith(".json"):
            return _from_tokenizer_json(path, eos_token)
        raise DataError(
            f"data.tokenizer.path: {path} is a file but not a tokenizer.json; point it at the tokenizer's directory"
        )
    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(path / "tokenizer.json", eos_token)
    present = [name for name in _TOKENIZER_FILES if (path / name).is_file()]
    if not present:
        raise DataError(
            f"data.tokenizer.path: {path} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}); point it at a tokenizer directory"
        )
    identity = {
        "loader": "transformers",
        "dir": str(path.resolve()),
        "sha256": {n: file_sha256(path / n) for n in present},
    }
    return _from_transformers(str(path), eos_token, identity)


def load_tokenizer(spec: Mapping[str, Any], data_root: Path) -> TextTokenizer:
    """Build the tokenizer a data config's ``tokenizer`` mapping names (see the module docstring)."""
    if not isinstance(spec, Mapping) or not ({"path", "hub", "tiktoken"} & set(spec)):
        raise DataError("data.tokenizer: give one of path (local dir), tiktoken (encoding name) or hub (model id)")
    eos_token = spec.get("eos_token")
    if spec.get("path"):
        path = _resolve(str(spec["path"]), data_root)
        if path.exists():
            return _from_local(path, eos_token)
        if not spec.get("hub"):
            raise DataError(
                f"data.tokenizer.path: {path} does not exist; point it at a tokenizer directory "
                f"(relative paths are under data_root={data_root}, e.g. tokenizers/t5)"
            )
    if spec.get("tiktoken"):
        return _from_tiktoken(str(spec["tiktoken"]), spec.get("tiktoken_cache"), data_root)
    name = str(spec["hub"])
    require_hub(
        f"data.tokenizer.hub: {name}", "set data.tokenizer.path to a local tokenizer directory (e.g. tokenizers/t5)"
    )
    return _from_transformers(
        name, eos_token, {"loader": "transformers", "hub": name, "revision": spec.get("revision")}
    )
