"""Fail fast when the Hugging Face hub cannot be reached.

``datasets`` and ``transformers`` retry and wait on network errors, which on an offline machine
looks like a hang. Before any hub download we make one short HTTPS request (bounded by a thread
join, so a stalled DNS lookup cannot block either) and, if it fails, raise a one-line
:class:`~soapbench.data.errors.DataError` telling the user which local-path key to set instead.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request

from soapbench.data.errors import DataError

HUB_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_reachable: bool | None = None


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """True when the hub answers an HTTPS request within ``timeout_s``; cached for the process."""
    global _reachable
    if any(os.environ.get(flag, "").lower() in ("1", "true", "yes") for flag in _OFFLINE_FLAGS):
        return False
    if _reachable is not None:
        return _reachable
    outcome: list[bool] = []

    def probe() -> None:
        try:
            # urllib honours HTTPS_PROXY/NO_PROXY like the hub clients do.
            with urllib.request.urlopen(f"{HUB_URL}/api/whoami-v2", timeout=timeout_s):
                outcome.append(True)
        except urllib.error.HTTPError:
            outcome.append(True)  # an HTTP answer (401 without a token) means the hub is there
        except Exception:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    _reachable = bool(outcome and outcome[0])
    return _reachable


def require_hub(what: str, fix: str) -> None:
    """Raise ``DataError`` naming ``what`` (e.g. 'dataset allenai/c4') and ``fix`` unless the hub is reachable."""
    if not hub_reachable():
        raise DataError(f"{what}: the Hugging Face hub ({HUB_URL}) is not reachable (offline?); {fix}")
