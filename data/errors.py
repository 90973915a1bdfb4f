"""The one exception type for bad data input.

Raised for a missing path, an empty or unreadable file, a wrong tokenizer path, or an unreachable
hub source. The message is one line that names the file (or dataset) and says how to fix it; the
CLI prints it as is and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """Bad data input; ``str(error)`` names the offending file and the fix."""
