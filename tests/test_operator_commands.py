"""The operator commands typed in the input box (app/commands.py), without a
display: each line's typed command, and the frame of PROTOCOL.md's
"Operators and moderation" table it sends, byte for byte as JSON; and the
words the client shows for the operators' frames (app/text.py)."""

from __future__ import annotations

import json

import pytest

from app import commands
from app import text as fmt
from app.commands import (
    AskWhois,
    BanUser,
    BecomeOperator,
    Hint,
    KickUser,
    LiftBan,
    ListBans,
    SendNotice,
    kept_in_history,
    operator_frame,
    parse_input,
)
from server.protocol import (
    HEADER,
    BanEntry,
    Error,
    ErrorCode,
    RuleViolation,
    WhoisResult,
    encode,
)


@pytest.mark.parametrize(
    ("line", "command", "wire"),
    [
        ("/op hunter2", BecomeOperator("hunter2"), {"type": "op", "password": "hunter2"}),
        ("/OP two words", BecomeOperator("two words"), {"type": "op", "password": "two words"}),
        ("/kick bob", KickUser("bob"), {"type": "kick", "name": "bob"}),
        (
            "/kick bob  spamming the room ",
            KickUser("bob", "spamming the room"),
            {"type": "kick", "name": "bob", "reason": "spamming the room"},
        ),
        ("/ban bob", BanUser(name="bob"), {"type": "ban", "name": "bob"}),
        (
            "/ban bob 2h spam",
            BanUser(name="bob", duration=7200, reason="spam"),
            {"type": "ban", "name": "bob", "duration": 7200, "reason": "spam"},
        ),
        (
            "/ban bob being rude",  # no TIME: for ever, and all of it is the reason
            BanUser(name="bob", reason="being rude"),
            {"type": "ban", "name": "bob", "reason": "being rude"},
        ),
        (
            "/ban 192.168.1.7 30m",
            BanUser(address="192.168.1.7", duration=1800),
            {"type": "ban", "address": "192.168.1.7", "duration": 1800},
        ),
        (
            "/ban 192.168.1.0/24 7d flood",
            BanUser(address="192.168.1.0/24", duration=7 * 86400, reason="flood"),
            {"type": "ban", "address": "192.168.1.0/24", "duration": 604800, "reason": "flood"},
        ),
        ("/ban fe80::1 90", BanUser(address="fe80::1", duration=90), None),
        ("/unban 3", LiftBan(3), {"type": "unban", "id": 3}),
        ("/bans", ListBans(), {"type": "bans"}),
        ("/whois bob", AskWhois("bob"), {"type": "whois", "name": "bob"}),
        (
            "/notice Back at 5, save your work",
            SendNotice("Back at 5, save your work"),
            {"type": "notice", "text": "Back at 5, save your work"},
        ),
    ],
)
def test_each_operator_command_becomes_its_frame(
    line: str, command: commands.Command, wire: dict[str, object] | None
) -> None:
    assert parse_input(line) == command
    frame = operator_frame(command)
    assert frame is not None
    if wire is not None:
        assert json.loads(encode(frame)[HEADER.size :]) == wire


@pytest.mark.parametrize(
    "line",
    ["/op", "/kick", "/ban", "/unban", "/unban x", "/unban -1", "/unban ³", "/whois", "/notice"],
)
def test_an_operator_command_without_what_it_needs_is_a_hint(line: str) -> None:
    command = parse_input(line)
    assert isinstance(command, Hint), command
    assert "Usage" in command.message


def test_a_ban_for_no_time_is_refused_rather_than_sent_for_ever() -> None:
    command = parse_input("/ban bob 0m spam")
    assert isinstance(command, Hint) and "more than 0" in command.message


def test_there_is_no_deop_in_the_protocol_so_no_command() -> None:
    command = parse_input("/deop")
    assert isinstance(command, Hint) and "no command /deop" in command.message


def test_an_empty_notice_is_refused_before_it_is_sent() -> None:
    with pytest.raises(RuleViolation):
        operator_frame(SendNotice("\x01\x02"))


def test_the_password_is_never_in_a_repr_nor_kept_for_up() -> None:
    command = parse_input("/op hunter2")
    assert "hunter2" not in repr(command)
    frame = operator_frame(command)  # type: ignore[arg-type]
    assert "hunter2" not in repr(frame)
    assert not kept_in_history("/op hunter2")
    assert not kept_in_history("/Op hunter2")
    assert kept_in_history("/kick bob") and kept_in_history("hello") and kept_in_history("/")


def test_help_lists_every_operator_command() -> None:
    for command in ("/op", "/kick", "/ban", "/unban", "/bans", "/whois", "/notice"):
        assert f"\n  {command} " in commands.HELP or f"\n  {command}\t" in commands.HELP


def test_other_commands_send_no_operator_frame() -> None:
    assert operator_frame(commands.ListUsers()) is None


# -- how the operators' frames read ------------------------------------------------


def test_a_kick_says_who_and_why() -> None:
    assert fmt.left_words("bob", "kicked", "dave") == "bob was removed by dave"
    assert fmt.left_words("bob", "kicked") == "bob was removed by the server"
    assert fmt.left_words("bob", "kicked", "dave", "dave removed bob: spam") == (
        "dave removed bob: spam"
    )
    assert fmt.left_words("bob", "kicked", "dave", "spam") == "bob was removed: spam"


def test_what_the_server_says_is_made_safe_to_show() -> None:
    """The new frames reach the view as sent: no control or override may show."""
    said = fmt.left_words("bob", "kicked", "dave", "bob\u202e\x1b[2Jevil\nline")
    assert "\u202e" not in said and "\x1b" not in said and "\n" not in said
    assert len(fmt.shown("x" * 10_000, 300)) == 300


def test_a_ban_list_reads_and_is_bounded() -> None:
    now = 1.7e9
    bans = (
        BanEntry(3, now, name="bob", reason="spam", by="dave", expires=now + 3600),
        BanEntry(4, now, address="192.168.1.0/24"),
    )
    lines = fmt.ban_list_lines(bans)
    assert lines[0].startswith("Bans (2)")
    assert lines[1].startswith("#3  bob, until ") and lines[1].endswith("by dave: spam")
    assert lines[2] == "#4  192.168.1.0/24, for ever by the server"
    many = tuple(BanEntry(n, now, name=f"u{n}") for n in range(500))
    shown = fmt.ban_list_lines(many)
    assert len(shown) == 1 + fmt.BANS_SHOWN + 1 and "450 more" in shown[-1]
    assert fmt.ban_list_lines(()) == ["No bans."]


def test_a_whois_reads() -> None:
    result = WhoisResult("bob", "192.168.1.7", False, 1.7e9, True)
    words = fmt.whois_words(result)
    assert words.startswith("bob, an operator: connected from 192.168.1.7 since ")
    assert words.endswith("(not encrypted)")


def test_being_kicked_or_banned_is_said_clearly() -> None:
    kicked = Error(ErrorCode.KICKED, "dave removed you: spam")
    assert fmt.removed_words(kicked) == "You were removed from the room: dave removed you: spam"
    banned = Error(ErrorCode.BANNED, "You are banned.", reason="spam", until=1.7e9)
    words = fmt.removed_words(banned)
    assert words.startswith("You are banned from this server until ")
    assert "(reason: spam)" in words
    forever = Error(ErrorCode.BANNED, "Banned: spam", reason="spam")
    assert fmt.removed_words(forever) == "You are banned from this server: Banned: spam"
