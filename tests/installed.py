"""Where the programs that ``pip install`` put in place are, in any environment.

A virtual environment's scripts (``chat-server``, ``ruff``, ``actionlint``)
land in its own bin/ (Scripts\\ on Windows), which is on PATH only once the
environment is activated: the README's commands run its python by path
instead, so the tests look where this interpreter's scripts go first.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path


def script(name: str) -> str | None:
    """The installed program ``name``: this environment's, the user scheme's, or on PATH."""
    if os.name == "nt":
        name += ".exe"
    folders = [sysconfig.get_path("scripts")]
    try:
        folders.append(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user")))
    except KeyError:
        pass
    for folder in folders:
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate)
    return shutil.which(name)
