"""Where the client's bundled files are, from a source tree or a frozen build."""

from __future__ import annotations

import sys
from pathlib import Path


def asset(name: str) -> Path:
    """The path of a file from ``assets/``.

    PyInstaller unpacks bundled data under ``sys._MEIPASS``; from a source
    checkout the folder sits beside the ``app`` package.
    """
    base = getattr(sys, "_MEIPASS", None)
    root = Path(base) if base else Path(__file__).resolve().parent.parent
    return root / "assets" / name
