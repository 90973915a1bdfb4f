"""Reproduce a paper comparison with one command (``python scripts/reproduce.py --help``): the entry point of
:mod:`soapbench.reproduction`, which holds the protocol's designs, the store lookup and the report call."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soapbench.reproduction import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
