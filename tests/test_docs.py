"""docs/protocol.md keeps up with the protocol module: every frame, every error
code, every leave reason and feature, and the limits a client must know.

A new frame type or error code, or a changed limit, fails here until the
document says so; the error table's "closes" and "never reconnect" columns
are read against ``FATAL_ERRORS`` and ``NO_RECONNECT_ERRORS``.
"""

from __future__ import annotations

import re
from pathlib import Path

from server import config
from server.protocol import (
    CLIENT_MESSAGES,
    DEFAULT_PAGE,
    FATAL_ERRORS,
    MAX_CHUNK,
    MAX_CLIENT_FRAME,
    MAX_DOWNLOAD,
    MAX_NAME_INPUT,
    MAX_NAME_LENGTH,
    MAX_NESTING,
    MAX_PAGE,
    MAX_SERVER_FRAME,
    MAX_TEXT_LENGTH,
    MAX_UPLOADS,
    MIN_QUERY,
    NO_RECONNECT_ERRORS,
    QUERY_SIZE,
    SERVER_MESSAGES,
    ErrorCode,
    LeaveReason,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
FLAT = " ".join(DOC.split())  # phrases are looked for whatever the line breaks


def _table_rows(first_column: str) -> dict[str, list[str]]:
    """The rows of the table whose header starts with ``first_column``, by their
    first cell (backticks removed): the other cells."""
    rows: dict[str, list[str]] = {}
    inside = False
    for line in DOC.splitlines():
        if line.startswith(f"| {first_column} |"):
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        if inside and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    assert rows, f"no table headed {first_column!r}"
    return rows


def test_every_frame_type_has_an_example() -> None:
    types = set(CLIENT_MESSAGES) | set(SERVER_MESSAGES)
    shown = set(re.findall(r'\{"type": "([a-z-]+)"', DOC))
    assert not types - shown, f"docs/protocol.md shows no frame of {sorted(types - shown)}"


def test_the_error_table_lists_every_code_and_what_it_does() -> None:
    rows = _table_rows("code")
    assert set(rows) == {code.value for code in ErrorCode}
    for code, (_when, closes, reconnect) in rows.items():
        assert closes.startswith("yes") == (code in FATAL_ERRORS), (code, closes)
        assert reconnect.startswith("never") == (code in NO_RECONNECT_ERRORS), (code, reconnect)
        if code not in FATAL_ERRORS:
            assert reconnect == "—", (code, "the connection stays: nothing to reconnect")


def test_the_leave_table_lists_every_reason() -> None:
    assert set(_table_rows("reason")) == {reason.value for reason in LeaveReason}


def test_welcome_features_are_the_servers() -> None:
    everything = config.ServerConfig(
        room_password="x", tls=config.TlsMode.AUTO, files=True, discovery=True
    )
    offered = set(config.features(everything))
    (what,) = _table_rows("field")["features"]
    assert set(re.findall(r"`([a-z-]+)`", what)) == offered, what


def test_the_limits_are_the_protocol_modules() -> None:
    phrases = [
        f"A client's frames may be 1 to {MAX_CLIENT_FRAME:,} bytes",
        f"the server's, 1 to {MAX_SERVER_FRAME:,}",
        f"nested at most {MAX_NESTING} deep",
        f"1 to {MAX_NAME_LENGTH} code points",
        f"longer than {MAX_NAME_INPUT} code points",
        f"1 to {MAX_TEXT_LENGTH:,} code points",
        f"a bucket of {config.RATE_BURST} that refills at {config.RATE_PER_SECOND:g} a second",
        f"silent for {config.IDLE_PING_AFTER:g} seconds and drops one it has heard nothing "
        f"from for {config.IDLE_TIMEOUT:g}",
        f"not welcomed within {config.HANDSHAKE_TIMEOUT:g} seconds",
        f"`limit` is 1 to {MAX_PAGE} (default {DEFAULT_PAGE})",
        f"at most `chunk` bytes ({MAX_CHUNK:,})",
        f"At most {MAX_UPLOADS} uploads",
        f"may be at most, {MAX_DOWNLOAD:,}",
        f"to at least {MIN_QUERY} bytes",
        f"pads to {QUERY_SIZE:,}",
    ]
    missing = [phrase for phrase in phrases if phrase not in FLAT]
    assert not missing, f"docs/protocol.md does not say {missing}"
