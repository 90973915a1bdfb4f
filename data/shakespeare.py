"""Character-level tiny Shakespeare, as nanoGPT's ``shakespeare_char``: vocab of the 65 characters,
first 90 % of the text for training, last 10 % for validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soapbench.data.errors import DataError
from soapbench.data.paths import DATA_ENV, download
from soapbench.data.tokens import TokenSplits

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
RELATIVE_PATH = Path("tinyshakespeare") / "input.txt"
TRAIN_FRACTION = 0.9


def load_shakespeare_char(data_root: Path, allow_download: bool = True, url: str = URL) -> TokenSplits:
    path = Path(data_root) / RELATIVE_PATH
    if not path.exists():
        hint = f"set {DATA_ENV} (or paths.data_root) to a folder holding {RELATIVE_PATH}"
        if not allow_download:
            raise DataError(f"tiny Shakespeare not found at {path}; {hint}")
        try:
            download(url, path, SHA256)
        except DataError as error:
            raise DataError(f"tiny Shakespeare not found at {path} and {error}; {hint}") from error
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} ({error}); it should be the UTF-8 tiny Shakespeare text") from error
    if len(text) < 1000:
        raise DataError(f"{path} holds {len(text)} characters; expected the ~1.1M-character tiny Shakespeare text")
    vocabulary = sorted(set(text))
    index = {char: i for i, char in enumerate(vocabulary)}
    ids = np.fromiter((index[c] for c in text), dtype=np.uint16, count=len(text))
    split = int(len(ids) * TRAIN_FRACTION)
    return TokenSplits(
        train=ids[:split],
        val=ids[split:],
        vocab_size=len(vocabulary),
        meta={"source": str(path), "tokenizer": "characters", "train_tokens": split, "val_tokens": len(ids) - split},
    )
