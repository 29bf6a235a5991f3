"""The README's promises that can drift: its first commands and its option table."""

from __future__ import annotations

import re
from pathlib import Path

from server.__main__ import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _indented_commands() -> list[str]:
    return re.findall(r"^    (python3 .+)$", README, flags=re.MULTILINE)


def test_readme_starts_with_install_and_test_commands() -> None:
    # In a virtual environment: a Debian or Ubuntu Python refuses to install
    # anywhere else (PEP 668), and nothing needs activating.
    venv = "python3 -m venv .venv && .venv/bin/python -m pip install -e "
    commands = _indented_commands()
    assert commands[0] == venv + ". && .venv/bin/python -m server"
    assert commands[1] == venv + '".[test]" && .venv/bin/python -m pytest'


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^TEST_COMMAND='(.+)'$", ci, flags=re.MULTILINE)
    assert match, "no TEST_COMMAND in .ci/run"
    assert match.group(1) == _indented_commands()[1]


def test_option_table_lists_every_server_option() -> None:
    documented = set(re.findall(r"^\| `(--[a-z-]+)", README, flags=re.MULTILINE))
    options = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert documented == options
