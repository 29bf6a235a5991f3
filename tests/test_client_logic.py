"""Tests for the client's pure logic: no window, no display, no network.

Sections: commands.parse_input and HELP, settings (load, save, config_path),
text (left_words, clock, links, displayable characters, mentions,
tk_shows_astral) and connect_dialog.check_fields.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import time
import tkinter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import platformdirs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import settings as app_settings
from app import text
from app.commands import (
    HELP,
    ChangeName,
    Hint,
    ListUsers,
    Quit,
    SendText,
    ShowHelp,
    parse_input,
)
from app.connect_dialog import check_fields
from app.settings import MAX_FONT_SIZE, MIN_FONT_SIZE, Settings
from server.protocol import DEFAULT_PORT, LeaveReason, ProtocolError, normalize_name

# -- commands.parse_input -------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["hello", "hello world", "  padded  ", "two\nlines", "quit now", "please quit", "Ünïcödé 😀"],
)
def test_plain_text_is_sent_exactly_as_typed(line: str) -> None:
    assert parse_input(line) == SendText(line)


@pytest.mark.parametrize("line", ["", " ", "   ", "\n", "\t \n ", "\r\n"])
def test_blank_input_is_nothing(line: str) -> None:
    assert parse_input(line) is None


@pytest.mark.parametrize("line", ["quit", "  quit", "quit  ", "  quit  ", "quit\n", "\tquit"])
def test_bare_quit_quits(line: str) -> None:
    assert parse_input(line) == Quit()


@pytest.mark.parametrize("line", ["Quit", "QUIT", "quit now", "quit.", "quitting", "q uit"])
def test_only_lowercase_bare_quit_quits_anything_else_is_a_message(line: str) -> None:
    # The bare word is case-sensitive (unlike /quit): "Quit" is sent as a message.
    assert parse_input(line) == SendText(line)


@pytest.mark.parametrize("line", ["/quit", "/QUIT", "/Quit", "/quit now", "/quit  "])
def test_slash_quit_quits(line: str) -> None:
    assert parse_input(line) == Quit()


@pytest.mark.parametrize(
    ("line", "action"),
    [
        ("/me waves", "waves"),
        ("/me waves at everyone", "waves at everyone"),
        ("/me    waves  ", "waves"),
        ("/ME waves", "waves"),
        ("/Me waves", "waves"),
        ("/me waves\nand smiles", "waves\nand smiles"),
    ],
)
def test_me_sends_an_action(line: str, action: str) -> None:
    assert parse_input(line) == SendText(action, action=True)


@pytest.mark.parametrize("line", ["/me", "/me ", "/me     ", "/ME"])
def test_bare_me_is_a_hint(line: str) -> None:
    result = parse_input(line)
    assert isinstance(result, Hint)
    assert "/me" in result.message


@pytest.mark.parametrize(
    ("line", "to", "message"),
    [
        ("/msg bob hi", "bob", "hi"),
        ("/msg bob hello there", "bob", "hello there"),
        ("/msg   bob    hello   there  ", "bob", "hello   there"),
        ("/MSG Bob hi", "Bob", "hi"),
        ("/msg José ¿qué tal?", "José", "¿qué tal?"),
        ("/msg bob /me is not an action here", "bob", "/me is not an action here"),
    ],
)
def test_msg_sends_a_private_message(line: str, to: str, message: str) -> None:
    assert parse_input(line) == SendText(message, to=to)


@pytest.mark.parametrize("line", ["/msg", "/msg ", "/msg bob", "/msg bob   ", "/msg    bob"])
def test_msg_without_text_is_a_hint(line: str) -> None:
    result = parse_input(line)
    assert result == Hint("Usage: /msg NAME TEXT")


@pytest.mark.parametrize(
    ("line", "name"),
    [("/nick robert", "robert"), ("/nick   robert  ", "robert"), ("/NICK Robert", "Robert")],
)
def test_nick_changes_name(line: str, name: str) -> None:
    assert parse_input(line) == ChangeName(name)


@pytest.mark.parametrize("line", ["/nick", "/nick ", "/nick    "])
def test_bare_nick_is_a_hint(line: str) -> None:
    result = parse_input(line)
    assert isinstance(result, Hint)
    assert "/nick" in result.message


@pytest.mark.parametrize("line", ["/who", "/WHO", "/Who", "/who is here"])
def test_who_lists_users(line: str) -> None:
    assert parse_input(line) == ListUsers()


@pytest.mark.parametrize("line", ["/help", "/HELP", "/Help", "/help me"])
def test_help_shows_help(line: str) -> None:
    assert parse_input(line) == ShowHelp()


@pytest.mark.parametrize(
    ("line", "shown"),
    [("/foo", "/foo"), ("/foo bar baz", "/foo"), ("/Foo", "/Foo"), ("/mee waves", "/mee")],
)
def test_unknown_command_is_a_hint_naming_it(line: str, shown: str) -> None:
    result = parse_input(line)
    assert isinstance(result, Hint)
    assert re.search(rf"{re.escape(shown)}\b", result.message)
    assert "/help" in result.message
    # Only the command word is named, not the rest of the line.
    assert "bar" not in result.message


@pytest.mark.parametrize(
    ("line", "sent"),
    [
        ("//text", "/text"),
        ("//me waves", "/me waves"),
        ("//quit", "/quit"),
        ("// spaced", "/ spaced"),
        ("//", "/"),
        ("///", "//"),
    ],
)
def test_double_slash_sends_a_line_beginning_with_slash(line: str, sent: str) -> None:
    assert parse_input(line) == SendText(sent)


def test_a_slash_not_at_the_start_is_plain_text() -> None:
    assert parse_input(" /me waves") == SendText(" /me waves")
    assert parse_input("and/or") == SendText("and/or")


@given(st.text())
def test_text_not_starting_with_slash_is_sent_unchanged(line: str) -> None:
    result = parse_input(line)
    if not line.strip():
        assert result is None
    elif line.strip() == "quit":
        assert result == Quit()
    elif not line.startswith("/"):
        assert result == SendText(line)
    else:
        assert result is not None


@given(st.text())
def test_double_slash_escape_round_trips(line: str) -> None:
    result = parse_input("//" + line)
    if ("//" + line).strip() == "":
        assert result is None
    else:
        assert result == SendText("/" + line)


@pytest.mark.parametrize("command", ["/me", "/msg", "/nick", "/who", "/help", "/quit", "//"])
def test_help_mentions_every_command(command: str) -> None:
    assert re.search(rf"(?<!\S){re.escape(command)}(?!\w)", HELP)


def test_help_mentions_bare_quit() -> None:
    assert re.search(r"(?<![/\w])quit\b", HELP)


@pytest.mark.parametrize("command", ["/me", "/msg", "/nick", "/who", "/help", "/quit"])
def test_every_command_in_help_is_understood(command: str) -> None:
    assert not isinstance(parse_input(f"{command} x y"), Hint)


# -- settings ---------------------------------------------------------------------


def test_defaults() -> None:
    defaults = Settings()
    assert defaults.port == DEFAULT_PORT
    assert MIN_FONT_SIZE <= defaults.font_size <= MAX_FONT_SIZE
    assert defaults.name == ""
    assert defaults.dark is False


def test_load_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert app_settings.load(tmp_path / "nope" / "settings.json") == Settings()


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    saved = Settings(host="192.168.1.20", port=6001, name="José 张伟", dark=True, font_size=14)
    app_settings.save(saved, path)
    assert app_settings.load(path) == saved
    assert json.loads(path.read_text(encoding="utf-8")) == asdict(saved)


def test_save_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    app_settings.save(Settings(name="first"), path)
    app_settings.save(Settings(name="second"), path)
    assert app_settings.load(path).name == "second"


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"not json", b"{'host': 'x'}", b"\xff\xfe\x00garbage", b"[1, 2]", b"null", b"42"],
)
def test_load_unusable_file_gives_defaults(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    assert app_settings.load(path) == Settings()


def test_load_a_json_list_of_settings_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps([asdict(Settings(host="10.0.0.1", dark=True))]), encoding="utf-8")
    assert app_settings.load(path) == Settings()


def test_load_a_directory_gives_defaults(tmp_path: Path) -> None:
    assert app_settings.load(tmp_path) == Settings()


GOOD = {"host": "10.1.2.3", "port": 6000, "name": "alice", "dark": True, "font_size": 15}


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("host", 5),
        ("host", None),
        ("host", ["10.0.0.1"]),
        ("port", "6000"),
        ("port", 6000.0),
        ("port", True),
        ("port", None),
        ("name", 3),
        ("name", {"n": "alice"}),
        ("dark", 1),
        ("dark", "true"),
        ("dark", None),
        ("font_size", 12.0),
        ("font_size", "12"),
        ("font_size", False),
    ],
)
def test_wrong_type_falls_back_for_that_field_only(tmp_path: Path, field: str, bad: object) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**GOOD, field: bad}), encoding="utf-8")
    expected = Settings(**{**GOOD, field: getattr(Settings(), field)})
    assert app_settings.load(path) == expected


def test_missing_and_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"name": "bob", "colour": "red"}), encoding="utf-8")
    assert app_settings.load(path) == Settings(name="bob")


@pytest.mark.parametrize(
    ("saved", "loaded"),
    [
        (-3, MIN_FONT_SIZE),
        (0, MIN_FONT_SIZE),
        (MIN_FONT_SIZE - 1, MIN_FONT_SIZE),
        (MIN_FONT_SIZE, MIN_FONT_SIZE),
        (12, 12),
        (MAX_FONT_SIZE, MAX_FONT_SIZE),
        (MAX_FONT_SIZE + 1, MAX_FONT_SIZE),
        (10**30, MAX_FONT_SIZE),
    ],
)
def test_font_size_is_clamped_on_load(tmp_path: Path, saved: int, loaded: int) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"font_size": saved}), encoding="utf-8")
    assert app_settings.load(path).font_size == loaded
    assert Settings().with_font_size(saved).font_size == loaded


def test_with_font_size_keeps_the_rest() -> None:
    before = Settings(host="h", port=1234, name="n", dark=True, font_size=10)
    after = before.with_font_size(20)
    assert after == Settings(host="h", port=1234, name="n", dark=True, font_size=20)
    assert before.font_size == 10  # frozen: a new object


def test_save_creates_parent_folders_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "settings.json"
    app_settings.save(Settings(name="bob"), path)
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["settings.json"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_save_under_a_regular_file_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("I am a file", encoding="utf-8")
    path = blocker / "sub" / "settings.json"
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        app_settings.save(Settings(name="bob"), path)
    assert blocker.read_text(encoding="utf-8") == "I am a file"
    assert any("Cannot save settings" in record.getMessage() for record in caplog.records)


def test_save_onto_a_directory_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.mkdir()
    app_settings.save(Settings(name="bob"), path)
    assert path.is_dir()


def test_config_path_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", str(tmp_path / "conf"))
    assert app_settings.config_path() == tmp_path / "conf" / "settings.json"
    # load() and save() without a path use it.
    assert app_settings.load() == Settings()
    app_settings.save(Settings(name="carol", font_size=9))
    assert (tmp_path / "conf" / "settings.json").is_file()
    assert app_settings.load() == Settings(name="carol", font_size=9)


def test_config_path_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAN_CHAT_CONFIG_DIR", raising=False)
    expected = Path(platformdirs.user_config_dir(app_settings.APP_NAME)) / "settings.json"
    assert app_settings.config_path() == expected
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", "")  # empty counts as unset
    assert app_settings.config_path() == expected


# -- text: leave reasons and clock -----------------------------------------------


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (LeaveReason.QUIT, "bob left"),
        (LeaveReason.DISCONNECTED, "bob lost their connection"),
        (LeaveReason.TIMEOUT, "bob timed out"),
        (LeaveReason.TOO_SLOW, "bob was disconnected (not keeping up)"),
        (LeaveReason.ERROR, "bob was disconnected (a client error)"),
        (LeaveReason.KICKED, "bob was removed by the server"),
    ],
)
def test_left_words(reason: LeaveReason, words: str) -> None:
    assert text.left_words("bob", reason) == words
    # The frame carries a plain string, not the enum.
    assert text.left_words("bob", str(reason.value)) == words


def test_every_leave_reason_has_words() -> None:
    assert set(text.LEAVE_REASONS) == set(LeaveReason)


@pytest.mark.parametrize("reason", ["banned", "", "QUIT", "too_slow"])
def test_left_words_unknown_reason(reason: str) -> None:
    assert text.left_words("bob", reason) == f"bob left ({reason})"


@pytest.fixture
def set_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def set_tz(spec: str) -> None:
        monkeypatch.setenv("TZ", spec)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


@pytest.mark.skipif(sys.platform == "win32", reason="time.tzset is POSIX only")
@pytest.mark.parametrize(
    ("spec", "offset"),
    [
        ("UTC0", timedelta(0)),
        ("IST-5:30", timedelta(hours=5, minutes=30)),
        ("EST5", timedelta(hours=-5)),
        ("NPT-5:45", timedelta(hours=5, minutes=45)),
    ],
)
@pytest.mark.parametrize("ts", [0, 0.999, 1763900000.123, 1763942399.9, 1700000000])
def test_clock_is_local_hh_mm(
    set_timezone: Callable[[str], None], spec: str, offset: timedelta, ts: float
) -> None:
    set_timezone(spec)
    expected = datetime.fromtimestamp(ts, timezone(offset)).strftime("%H:%M")
    assert text.clock(ts) == expected
    assert re.fullmatch(r"\d\d:\d\d", text.clock(ts))


@pytest.mark.skipif(sys.platform == "win32", reason="time.tzset is POSIX only")
def test_clock_known_values(set_timezone: Callable[[str], None]) -> None:
    set_timezone("UTC0")
    assert text.clock(0) == "00:00"
    noon = datetime(2025, 1, 2, 12, 34, 56, tzinfo=UTC).timestamp()
    assert text.clock(noon) == "12:34"
    set_timezone("IST-5:30")
    assert text.clock(noon) == "18:04"
    set_timezone("EST5")
    assert text.clock(noon) == "07:34"
    assert text.clock(int(noon)) == "07:34"  # integers are timestamps too


# -- text: links ------------------------------------------------------------------


def test_split_links_no_links() -> None:
    assert text.split_links("no links here, example.com") == [("no links here, example.com", False)]
    assert text.split_links("") == []


@pytest.mark.parametrize(
    "link",
    [
        "http://example.com",
        "https://example.com/path?q=1&r=2#frag",
        "www.example.com",
        "HTTPS://EXAMPLE.COM/X",
        "WWW.Example.org",
        "http://127.0.0.1:5000/a_b-c~d",
        "https://example.com/a.b,c;d:e!f?g(h)i",
    ],
)
def test_split_links_whole_link(link: str) -> None:
    assert text.split_links(link) == [(link, True)]


def test_split_links_start_middle_end() -> None:
    assert text.split_links("www.a.com is good") == [("www.a.com", True), (" is good", False)]
    assert text.split_links("see https://a.com/x now") == [
        ("see ", False),
        ("https://a.com/x", True),
        (" now", False),
    ]
    assert text.split_links("go to http://a.com") == [("go to ", False), ("http://a.com", True)]


def test_split_links_several() -> None:
    assert text.split_links("a http://x.org b www.y.com c https://z.net/q") == [
        ("a ", False),
        ("http://x.org", True),
        (" b ", False),
        ("www.y.com", True),
        (" c ", False),
        ("https://z.net/q", True),
    ]
    assert text.split_links("http://x.org\nwww.y.com") == [
        ("http://x.org", True),
        ("\n", False),
        ("www.y.com", True),
    ]


@pytest.mark.parametrize(
    "tail", [".", ",", ";", ":", "!", "?", ")", "]", "}", "...", "!?", ").", "'"]
)
def test_split_links_strips_trailing_punctuation(tail: str) -> None:
    assert text.split_links(f"see http://example.com/page{tail}") == [
        ("see ", False),
        ("http://example.com/page", True),
        (tail, False),
    ]


@pytest.mark.parametrize(("left", "right"), [("(", ")"), ("[", "]"), ('"', '"'), ("<", ">")])
def test_split_links_in_brackets_and_quotes(left: str, right: str) -> None:
    assert text.split_links(f"{left}www.example.com{right}") == [
        (left, False),
        ("www.example.com", True),
        (right, False),
    ]


@pytest.mark.parametrize("line", ["ftp://example.com", "mailto:bob@example.com", "wwwexample.com"])
def test_split_links_not_links(line: str) -> None:
    assert text.split_links(line) == [(line, False)]


_LINKY = st.lists(
    st.sampled_from(
        [
            *("http://", "https://", "www.", "HTTP://", "a", "b.c", "/", " ", "\n", ".", ","),
            *(")", "(", "]", "!", "?", '"', "'", "<", ">", "é", "😀", "x_y", ":", "-"),
        ]
    )
    | st.text(max_size=4),
    max_size=30,
).map("".join)

_LINK_START = re.compile(r"(?:https?://|www\.)", re.IGNORECASE)


@given(st.one_of(st.text(), _LINKY))
def test_split_links_pieces_rebuild_the_text(line: str) -> None:
    pieces = text.split_links(line)
    assert "".join(piece for piece, _ in pieces) == line
    assert all(piece for piece, _ in pieces)
    # Links and non-links alternate: two plain pieces are never left side by side.
    kinds = [is_link for _, is_link in pieces]
    assert all(a != b for a, b in itertools.pairwise(kinds))
    for piece, is_link in pieces:
        if is_link:
            assert _LINK_START.match(piece)
            assert not any(char.isspace() for char in piece)
            assert piece[-1] not in ".,;:!?)]}\"'<>"


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("www.example.com", "http://www.example.com"),
        ("WWW.Example.com/x", "http://WWW.Example.com/x"),
        ("http://example.com", "http://example.com"),
        ("https://example.com/a?b=c", "https://example.com/a?b=c"),
        ("HTTPS://EXAMPLE.COM", "HTTPS://EXAMPLE.COM"),
    ],
)
def test_link_target(link: str, target: str) -> None:
    assert text.link_target(link) == target


@pytest.mark.parametrize(
    "link",
    [
        "www.example.com/redirect?to=https://x.org",
        "www.example.com/?u=http://a.b",
        "www.http://",
    ],
)
def test_link_target_of_a_www_link_holding_a_url(link: str) -> None:
    # A www. link gets http:// in front even when "://" appears later in it;
    # otherwise the browser is handed a URL with no scheme.
    assert text.split_links(link) == [(link, True)]
    assert text.link_target(link) == f"http://{link}"


@given(_LINKY)
def test_every_found_link_has_a_web_target(line: str) -> None:
    for piece, is_link in text.split_links(line):
        if is_link:
            assert re.match(r"https?://", text.link_target(piece), re.IGNORECASE)


# -- text: characters Tk can show -------------------------------------------------


REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


@pytest.mark.parametrize(
    ("line", "old_tk"),
    [
        ("hi 😀 there", f"hi {REPLACEMENT} there"),
        ("😀😀", REPLACEMENT * 2),
        ("👍🏽", REPLACEMENT * 2),
        ("\U00010000 \U0010ffff", f"{REPLACEMENT} {REPLACEMENT}"),
        ("é € 中 \uffff \ufffd ☺", "é € 中 \uffff \ufffd ☺"),
        ("", ""),
    ],
)
def test_displayable(line: str, old_tk: str) -> None:
    assert text.displayable(line, astral_ok=True) == line
    assert text.displayable(line, astral_ok=False) == old_tk


@given(st.text())
def test_displayable_property(line: str) -> None:
    assert text.displayable(line, astral_ok=True) == line
    shown = text.displayable(line, astral_ok=False)
    assert len(shown) == len(line)
    assert all(ord(char) <= 0xFFFF for char in shown)
    for before, after in zip(line, shown, strict=True):
        assert after == (before if ord(before) <= 0xFFFF else REPLACEMENT)


class _FakeInterp:
    def __init__(self, level: object) -> None:
        self.level = level
        self.calls: list[tuple[object, ...]] = []

    def call(self, *args: object) -> object:
        self.calls.append(args)
        return self.level


class _FakeWidget:
    def __init__(self, level: object) -> None:
        self.tk = _FakeInterp(level)


@pytest.mark.parametrize(
    ("level", "shows"),
    [
        ("8.5.19", False),
        ("8.6.0", False),
        ("8.6.9", False),
        ("8.6.10", True),
        ("8.6.13", True),
        ("8.6.16", True),
        ("8.7a5", True),
        ("9.0.1", True),
        ("10.0.0", True),
    ],
)
def test_tk_shows_astral(level: str, shows: bool) -> None:
    widget = _FakeWidget(level)
    assert text.tk_shows_astral(widget) is shows  # type: ignore[arg-type]
    assert widget.tk.calls == [("info", "patchlevel")]


def test_tk_shows_astral_with_a_real_interpreter() -> None:
    interpreter = tkinter.Tcl()  # Tcl only: no Tk, no window
    level = str(interpreter.tk.call("info", "patchlevel"))
    major, minor, patch = (int(part) for part in re.findall(r"\d+", level)[:3])
    assert text.tk_shows_astral(interpreter) is ((major, minor, patch) >= (8, 6, 10))


# -- text: mentions ---------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "bob",
        "hi bob",
        "bob: hi",
        "hi BOB!",
        "Hey Bob, look",
        "@bob",
        "(bob)",
        "thanks bob.",
        "bob?",
        "line one\nbob",
        "«bob»",
    ],
)
def test_mentions_the_name_as_a_word(line: str) -> None:
    assert text.mentions(line, "bob")


@pytest.mark.parametrize(
    "line", ["bobby", "kabob", "bob_2 says hi", "hi bob2", "b o b", "", "hi alice", "bo b"]
)
def test_does_not_mention_inside_another_word(line: str) -> None:
    assert not text.mentions(line, "bob")


@pytest.mark.parametrize("name", [None, ""])
def test_no_name_no_mention(name: str | None) -> None:
    assert not text.mentions("hi bob", name)
    assert not text.mentions("", name)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ping a.b", True),
        ("ping A.B.", True),
        ("ping axb", False),
        ("ping a-b", False),
        ("ping a.bc", False),
        ("ping aa.b", False),
    ],
)
def test_mentions_name_with_regex_metacharacters(line: str, expected: bool) -> None:
    assert text.mentions(line, "a.b") is expected


@pytest.mark.parametrize("name", ["a+b", "a*", "(x)", "[y]", "a|b", "^z$", "back\\slash"])
def test_mentions_never_treats_the_name_as_a_pattern(name: str) -> None:
    assert text.mentions(f"hi {name} there", name)
    assert not text.mentions("hi there", name)


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("hola josé", "José"),
        ("HOLA JOSÉ", "José"),
        ("张伟 你好", "张伟"),
        ("hi bob_2", "bob_2"),
        ("hi BOB_2!", "bob_2"),
        ("ask a-b now", "a-b"),
    ],
)
def test_mentions_unicode_and_punctuated_names(line: str, name: str) -> None:
    assert text.mentions(line, name)


@pytest.mark.parametrize("line", ["ask bob-2", "ask bob.smith", "ask alice-bob"])
def test_mentions_respects_the_name_characters_dash_and_dot(line: str) -> None:
    # Names may hold "-" and "." (PROTOCOL.md), so "bob-2", "bob.smith" and
    # "alice-bob" are other people's names and must not highlight bob.
    assert not text.mentions(line, "bob")


# -- connect_dialog.check_fields ------------------------------------------------

HOST_EMPTY = "Enter the server's address, such as 192.168.1.20."
HOST_SPACES = "An address has no spaces."
PORT_BAD = "The port is a number from 1 to 65535."
NAME_EMPTY = "Choose a name to be known by."


def _name_reason(name: str) -> str:
    with pytest.raises(ProtocolError) as caught:
        normalize_name(name)
    return caught.value.message


@pytest.mark.parametrize(
    ("host", "port", "name"),
    [
        ("192.168.1.20", "5000", "bob"),
        ("localhost", "1", "José"),
        ("chat.example.org", "65535", "张伟"),
        ("  padded.host  ", " 80 ", "नमस्ते"),
        ("::1", "8080", "bob_2"),
        ("h", "080", "a.b-c"),
    ],
)
def test_check_fields_valid(host: str, port: str, name: str) -> None:
    assert check_fields(host, port, name) == {}


@pytest.mark.parametrize(("host", "message"), [("", HOST_EMPTY), ("   ", HOST_EMPTY)])
def test_check_fields_host_empty(host: str, message: str) -> None:
    assert check_fields(host, "5000", "bob") == {"host": message}


@pytest.mark.parametrize("host", ["my host", "a\tb", " 10.0.0.1 x", "a\nb"])
def test_check_fields_host_with_spaces(host: str) -> None:
    assert check_fields(host, "5000", "bob") == {"host": HOST_SPACES}


@pytest.mark.parametrize(
    "port",
    [
        *("", " ", "0", "00", "65536", "99999", "-1", "abc", "8o", "+80", "80.0", "1e3"),
        *("0x50", "8 0", "\u0668\u0660", "\uff18\uff10"),  # other scripts' digits: ASCII only
    ],
)
def test_check_fields_port_problems(port: str) -> None:
    assert check_fields("host", port, "bob") == {"port": PORT_BAD}


@pytest.mark.parametrize("port", ["1", "80", " 80 ", "080", "65535", "\t443\n"])
def test_check_fields_port_accepted(port: str) -> None:
    # Surrounding white space and leading zeros are accepted, as int() reads them.
    assert check_fields("host", port, "bob") == {}
    assert 1 <= int(port) <= 65535


@pytest.mark.parametrize("port", ["²", "①", "8²", pytest.param("9" * 5000, id="5000-digits")])
def test_check_fields_odd_digits_are_a_problem_not_a_crash(port: str) -> None:
    # str.isdigit() is True for these but int() cannot read them: the check
    # must report the port, not raise (it runs on every keystroke).
    assert check_fields("host", port, "bob") == {"port": PORT_BAD}


def test_check_fields_empty_name() -> None:
    assert check_fields("host", "5000", "") == {"name": NAME_EMPTY}


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("a b", "a space"),
        (" bob", "a space"),
        ("   ", "a space"),
        ("x!", "'!'"),
        ("bob😀", "😀"),
        ("bob\x00", "\\x00"),
        ("a" * 33, "32"),
        ("\u0301a", "combining mark"),
        ("_-.", "letter or digit"),
        ("bob\ufe0f", "U+FE0F"),
        ("\u3164", "U+3164"),
    ],
)
def test_check_fields_name_reason_is_the_protocols(name: str, says: str) -> None:
    problems = check_fields("host", "5000", name)
    assert problems == {"name": _name_reason(name)}
    assert says in problems["name"]


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "a" * 32,
        "José",
        "Jose\u0301",
        "e\u0301" * 32,
        "\uff41\uff4c\uff49\uff43\uff45",
        "x\u0301",
        "٣",
        "_-.1",
    ],
)
def test_check_fields_names_the_protocol_allows(name: str) -> None:
    assert check_fields("host", "5000", name) == {}


def test_check_fields_reports_every_field_at_once() -> None:
    assert check_fields("", "0", "") == {"host": HOST_EMPTY, "port": PORT_BAD, "name": NAME_EMPTY}
    assert check_fields("a b", "x", "x!") == {
        "host": HOST_SPACES,
        "port": PORT_BAD,
        "name": _name_reason("x!"),
    }


@given(st.text(max_size=40))
def test_check_fields_name_agrees_with_the_protocol(name: str) -> None:
    problems = check_fields("host", "5000", name)
    try:
        normalize_name(name)
    except ProtocolError as exc:
        assert problems == {"name": NAME_EMPTY if not name else exc.message}
    else:
        assert problems == {}


@given(st.text(max_size=8))
def test_check_fields_port_never_raises(port: str) -> None:
    problems = check_fields("host", port, "bob")
    assert set(problems) <= {"port"}
    if not problems:  # what the dialog then connects to (it strips, as check_fields does)
        assert 1 <= int(port.strip()) <= 65535


@pytest.mark.parametrize("line", ["/", "/   ", "/\n"])
def test_a_slash_alone_is_a_hint_not_a_crash(line: str) -> None:
    assert isinstance(parse_input(line), Hint)


def test_a_private_draft_names_who_files_go_to() -> None:
    from app.commands import private_recipient  # noqa: PLC0415

    assert private_recipient("/msg bob ") == "bob"
    assert private_recipient("/MSG bob see this") == "bob"
    assert private_recipient("/msg") is None
    assert private_recipient("hello /msg bob") is None
    assert private_recipient("//msg bob") is None
    assert private_recipient("") is None
