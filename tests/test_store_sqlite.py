"""The SQLite history (server/store/sqlite.py) and the data folder's lock
(server/store/lock.py), on real files in temporary folders.

Every page and search test runs over both search indexes: FTS5 (skipped
only where this SQLite lacks it) and the word table, which always runs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import ChatMessage
from server.store import lock as lock_module
from server.store import sqlite as sqlite_module
from server.store.lock import FolderInUse, StoreError, lock_data_folder
from server.store.memory import MemoryHistory
from server.store.sqlite import SqliteHistory, fts5_available
from server.store.words import MAX_QUERY_WORDS

ROOT = Path(__file__).resolve().parent.parent
PROPERTY = settings(
    database=None,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

search_index = pytest.mark.parametrize(
    "fts",
    [
        pytest.param(
            True,
            id="fts5",
            marks=pytest.mark.skipif(not fts5_available(), reason="this SQLite has no FTS5"),
        ),
        pytest.param(False, id="word-table"),
    ],
)


def wait_for(condition: Callable[[], object], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Callable[..., SqliteHistory]]:
    """Open SqliteHistory stores (on tmp_path/history.sqlite3 unless told); all closed after."""
    opened: list[SqliteHistory] = []

    def open_(path: Path | None = None, **options: object) -> SqliteHistory:
        store = SqliteHistory(path or tmp_path / "history.sqlite3", **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def say(store: SqliteHistory, text: str, ts: float = 1_000.0, sender: str = "alice") -> ChatMessage:
    message = ChatMessage(store.next_id(), sender, text, ts)
    store.append(message)
    return message


def files_open(path: Path) -> list[str]:
    """This process's open files that are ``path`` or its -wal / -shm (Linux)."""
    found: list[str] = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


# -- the data folder's lock ---------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from server.store.lock import lock_data_folder
    held = lock_data_folder(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_second_process_is_refused_the_folder_with_a_sentence_naming_the_holder(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(FolderInUse) as refused:
            lock_data_folder(tmp_path)
        message = str(refused.value)
        assert f"Another server is already using the data folder {tmp_path}" in message
        assert f"(process {holder.pid})" in message
        assert "--data-dir" in message
        assert isinstance(refused.value, StoreError)
    finally:
        holder.kill()  # the OS frees a killed holder's lock
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    with lock_data_folder(tmp_path) as folder_lock:
        assert folder_lock.folder == tmp_path


def test_a_folder_is_locked_once_until_released_then_again(tmp_path: Path) -> None:
    first = lock_data_folder(tmp_path)
    with pytest.raises(FolderInUse, match=f"process {os.getpid()}"):
        lock_data_folder(tmp_path)
    first.release()
    first.release()  # twice does nothing
    second = lock_data_folder(tmp_path)
    second.release()
    assert (tmp_path / lock_module.LOCK_FILE).read_text().strip() == str(os.getpid())


def test_a_folder_that_is_missing_is_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Cannot lock the data folder"):
        lock_data_folder(tmp_path / "missing")


# -- ids ----------------------------------------------------------------------


def test_ids_go_on_across_a_close_and_a_reopen_private_ones_included(
    open_store: Callable[..., SqliteHistory], tmp_path: Path
) -> None:
    store = open_store()
    said = [say(store, f"hello {n}") for n in range(5)]
    private = [store.next_id() for _ in range(3)]  # taken, never appended
    assert [m.id for m in said] + private == list(range(1, 9))
    store.close()
    again = open_store()
    assert again.next_id() == private[-1] + 1  # a clean close reserves no more
    assert again.page(None, 50) == (said, False)


def test_a_room_that_says_only_private_messages_still_moves_its_reservation(
    open_store: Callable[..., SqliteHistory], tmp_path: Path
) -> None:
    store = open_store()
    last = 0
    for _ in range(sqlite_module.ID_BLOCK * 2):
        last = store.next_id()
    connection = sqlite3.connect(tmp_path / "history.sqlite3")
    try:

        def reserved() -> int:
            row = connection.execute("SELECT value FROM meta WHERE key = 'reserved'").fetchone()
            return int(row[0])

        wait_for(lambda: reserved() > last)
    finally:
        connection.close()


KILLED = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    from server.protocol import ChatMessage
    from server.store.sqlite import SqliteHistory

    store = SqliteHistory(Path(sys.argv[1]))
    durable = [0]
    def on_durable(last_id):
        durable.append(last_id)
        os.write(1, f"durable {last_id}\\n".encode())
    store.watch_durable(on_durable)
    handed = 0
    for round_ in range(6):
        for _ in range(7_000):  # private messages: ids taken, never stored
            handed = store.next_id()
        for n in range(200):
            handed = store.next_id()
            store.append(ChatMessage(handed, "alice", f"round {round_} message {n}", 1.0))
            os.write(1, f"said {handed}\\n".encode())
    deadline = time.monotonic() + 20
    while durable[-1] < handed and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(1, f"handed {handed}\\n".encode())
    for n in range(500):  # in flight when killed: kept or not, never half kept
        handed = store.next_id()
        store.append(ChatMessage(handed, "bob", f"late {n}", 2.0))
    os.write(1, f"handed {handed}\\n".encode())
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: terminated
    """
)


def run_until_killed(script: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` on the store at ``path`` in a child that kills itself."""
    child = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    killed = -signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM
    assert child.returncode == killed, child.stderr
    return child


@search_index
def test_what_was_durable_before_a_kill_is_found_after_it_and_ids_go_on(
    open_store: Callable[..., SqliteHistory], tmp_path: Path, fts: bool
) -> None:
    path = tmp_path / "history.sqlite3"
    open_store(path, fts=fts).close()  # made with this index
    child = run_until_killed(KILLED, path)
    durable, said, handed = 0, [], 0
    for line in child.stdout.splitlines():
        word, number = line.split()
        if word == "durable":
            durable = max(durable, int(number))
        elif word == "said":
            said.append(int(number))
        else:
            handed = max(handed, int(number))
    assert durable >= said[-1] > sqlite_module.ID_BLOCK  # the reservation moved
    store = open_store(path, fts=fts)
    found, _ = store.page(None, 200)
    kept = {m.id for m in found}
    older = found[0].id
    while older > 1:  # every page down to the first message
        page, _ = store.page(older, 200)
        if not page:
            break
        kept.update(m.id for m in page)
        older = page[0].id
    assert {i for i in said if i <= durable} <= kept
    assert store.next_id() > handed
    hits, _ = store.search("round 5 message 199", 5)
    assert [m.id for m in hits] == [said[-1]]


# -- pages and searches, against MemoryHistory ----------------------------------

# Spellings of a few words that search must take as one: case, accents,
# ligatures (U+FB01 fi), sharp s, fullwidth letters and digits (U+FF..).
SPELLINGS = [
    "cafe", "Café", "CAFÉ", "cafè",
    "creme", "Crème", "CRÈME",
    "fish", "\ufb01sh", "FISH",
    "strasse", "Straße", "STRA\u1e9eE",
    "full", "\uff46\uff55\uff4c\uff4c", "Full",
    "2", "\uff12", "42",
    "oeuvre", "œuvre",
]  # fmt: skip
JUNK = "aAeEéÉœﬁ ß 13 -_.!?"
texts = st.lists(st.sampled_from(SPELLINGS), max_size=6).flatmap(
    lambda tokens: st.lists(
        st.sampled_from([" ", "-", ", ", "!", "_", "'"]), min_size=len(tokens), max_size=len(tokens)
    ).map(lambda gaps: "".join(t + g for t, g in zip(tokens, gaps, strict=True)))
) | st.text(alphabet=st.sampled_from(JUNK), max_size=20)
queries = (
    st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=3).map(" ".join) | texts | st.just("")
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[ChatMessage], list[tuple[object, ...]]]:
    said = draw(st.lists(texts, max_size=40))
    messages, next_id = [], 1
    for n, text in enumerate(said):
        next_id += draw(st.integers(0, 2))  # ids private messages took
        messages.append(ChatMessage(next_id, "alice", text, 1_000.0 + n, n % 3 == 0))
        next_id += 1
    befores = st.none() | st.integers(-1, next_id + 1) | st.just(2**70)
    requests = st.lists(
        st.tuples(st.just("page"), befores, st.integers(1, 12))
        | st.tuples(
            st.just("search"),
            queries,
            st.integers(1, 12),
            befores,
        ),
        min_size=1,
        max_size=12,
    )
    return messages, draw(requests)


def answer(store: MemoryHistory | SqliteHistory, request: tuple[object, ...]) -> object:
    try:
        if request[0] == "page":
            return store.page(request[1], request[2])  # type: ignore[arg-type]
        return store.search(request[1], request[2], request[3])  # type: ignore[arg-type]
    except ValueError:
        return ValueError


@search_index
@PROPERTY
@given(histories())
def test_pages_and_searches_find_what_memory_finds(
    fts: bool, history: tuple[list[ChatMessage], list[tuple[object, ...]]]
) -> None:
    messages, requests = history
    memory = MemoryHistory(1_000)
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteHistory(Path(folder) / "history.sqlite3", fts=fts, recent=5)
        try:
            for message in messages:
                memory.append(message)
                assert store.append(message)
            assert store.flush(10.0)
            for request in requests:
                assert answer(store, request) == answer(memory, request), request
            assert [e.message for e in store.recent()] == [m for m in messages[-5:]]
        finally:
            store.close()


@search_index
def test_search_is_newest_first_over_every_word_without_case_or_accents(
    open_store: Callable[..., SqliteHistory], fts: bool
) -> None:
    store = open_store(fts=fts)
    first = say(store, "Crème brûlée on FRIDAY")
    say(store, "creme only")
    third = say(store, "friday: CREME BRULEE again")
    say(store, "brûlée, friday")
    assert store.flush(10.0)
    assert store.search("creme friday", 10) == ([third, first], False)
    assert store.search("CRÈME  friday", 1) == ([third], True)
    assert store.search("creme friday", 10, before=third.id) == ([first], False)
    assert store.search("pizza", 10) == ([], False)


@search_index
def test_bad_requests_are_value_errors(open_store: Callable[..., SqliteHistory], fts: bool) -> None:
    store = open_store(fts=fts)
    say(store, "hello")
    assert store.flush(10.0)
    for bad in (lambda: store.page(None, 0), lambda: store.search("hello", 0)):
        with pytest.raises(ValueError, match="at least 1"):
            bad()
    with pytest.raises(ValueError, match="no word"):
        store.search(" ?! ", 5)
    many = " ".join(f"w{n}" for n in range(MAX_QUERY_WORDS + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_QUERY_WORDS} different words"):
        store.search(many, 5)
    assert store.search(" ".join(f"w{n}" for n in range(MAX_QUERY_WORDS)), 5) == ([], False)


@search_index
def test_a_search_past_its_budget_returns_what_it_found_saying_more(
    open_store: Callable[..., SqliteHistory], fts: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(fts=fts)
    said = [say(store, f"common word {n}") for n in range(3_000)]
    assert store.flush(10.0)
    monkeypatch.setattr(sqlite_module, "QUERY_BUDGET_S", -1.0)  # spent before it starts
    found, more = store.search("common word", 200)
    assert more
    assert found == said[::-1][: len(found)]
    monkeypatch.setattr(sqlite_module, "QUERY_BUDGET_S", 30.0)
    assert store.search("common word", 200) == (said[::-1][:200], True)


@search_index
def test_the_index_is_rebuilt_when_the_other_kind_is_asked_for(
    open_store: Callable[..., SqliteHistory], fts: bool
) -> None:
    store = open_store(fts=fts)
    said = [say(store, text) for text in ("Éclair au café", "cafe noir", "thé")]
    store.close()
    other = open_store(fts=not fts) if fts5_available() else open_store(fts=False)
    assert other.search("CAFE", 5) == ([said[1], said[0]], False)
    other.close()
    kept = open_store()  # None: the index the database has
    assert kept.uses_fts == other.uses_fts
    assert kept.search("the", 5) == ([said[2]], False)


def test_the_recent_window_is_loaded_at_start(open_store: Callable[..., SqliteHistory]) -> None:
    store = open_store(recent=3)
    said = [say(store, f"m{n}") for n in range(10)]
    store.close()
    assert [e.message for e in open_store(recent=3).recent()] == said[-3:]
    assert list(open_store(recent=0).recent()) == []


# -- the writer thread ----------------------------------------------------------


def test_the_durable_callback_covers_every_id_in_order_outside_the_callers_lock(
    open_store: Callable[..., SqliteHistory],
) -> None:
    store = open_store()
    room_lock = threading.Lock()  # as Room holds its lock around append
    seen: list[int] = []
    problems: list[str] = []

    def durable(last_id: int) -> None:
        if not room_lock.acquire(timeout=5.0):  # Room._saved takes it
            problems.append("called while the room's lock was held")
            return
        try:
            seen.append(last_id)
        finally:
            room_lock.release()

    store.watch_durable(durable)
    appended: list[int] = []

    def speak(sender: str) -> None:
        for n in range(300):
            with room_lock:
                message = ChatMessage(store.next_id(), sender, f"{sender} {n}", 1.0)
                assert store.append(message)
                appended.append(message.id)

    speakers = [threading.Thread(target=speak, args=(f"s{n}",)) for n in range(4)]
    for thread in speakers:
        thread.start()
    for thread in speakers:
        thread.join(30.0)
    assert store.flush(10.0)
    assert not problems
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[-1] == max(appended)
    assert appended == sorted(appended)


def test_close_keeps_what_was_queued(
    open_store: Callable[..., SqliteHistory], tmp_path: Path
) -> None:
    store = open_store()
    said = [say(store, f"last words {n}") for n in range(2_000)]
    store.close()  # no flush first
    store.close()
    found, more = open_store().page(None, 200)
    assert found == said[-200:] and more
    assert open_store().search("words 0", 5) == ([said[0]], False)


def test_close_closes_every_threads_connection(
    open_store: Callable[..., SqliteHistory], tmp_path: Path
) -> None:
    path = tmp_path / "history.sqlite3"
    store = open_store(path)
    say(store, "hello")
    assert store.flush(10.0)
    readers = [threading.Thread(target=lambda: store.search("hello", 5)) for _ in range(3)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(10.0)
    linux = Path("/proc/self/fd").is_dir()  # elsewhere, only the closed store is checked
    if linux:
        assert len(files_open(path)) >= 4  # the writer's and each reader's
    store.close()
    if linux:
        assert files_open(path) == []
    with pytest.raises(StoreError, match="closed"):
        store.page(None, 5)


# -- retention ----------------------------------------------------------------


def index_rows(path: Path, fts: bool) -> int:
    connection = sqlite3.connect(path)
    try:
        table = "message_fts" if fts else "message_words"
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        connection.close()


@search_index
def test_retention_by_days_deletes_the_old_messages_and_their_index_rows(
    open_store: Callable[..., SqliteHistory], tmp_path: Path, fts: bool
) -> None:
    day = 86_400.0
    store = open_store(fts=fts)
    for n in range(5_000):  # more than a chunk
        say(store, f"old news {n}", ts=n)
    new = [say(store, f"fresh news {n}", ts=10 * day + n) for n in range(10)]
    store.close()
    store = open_store(fts=fts, keep_days=2, clock=lambda: 11 * day)
    wait_for(lambda: store.page(None, 200) == (new, False))
    assert store.search("news", 200) == (new[::-1], False)
    assert store.search("old", 5) == ([], False)
    assert index_rows(tmp_path / "history.sqlite3", fts) == (10 if fts else 30)


@search_index
def test_retention_by_count_keeps_the_newest_and_runs_again_later(
    open_store: Callable[..., SqliteHistory],
    tmp_path: Path,
    fts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_module, "RETENTION_EVERY_S", 0.05)
    store = open_store(fts=fts)
    said = [say(store, f"message {n}") for n in range(4_500)]
    store.close()
    store = open_store(fts=fts, keep_messages=10)
    wait_for(lambda: store.page(None, 200) == (said[-10:], False))
    later = [say(store, f"later {n}") for n in range(5)]
    wait_for(lambda: store.page(None, 200) == ([*said[-5:], *later], False))
    assert store.search("message", 50) == (said[-5:][::-1], False)
    assert index_rows(tmp_path / "history.sqlite3", fts) == (10 if fts else 20)


# -- what cannot be opened ------------------------------------------------------


def test_a_corrupt_file_is_a_sentence_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"this is no database, " * 500)
    with pytest.raises(StoreError, match=f"Cannot open the history database {path}"):
        SqliteHistory(path)


def test_a_newer_schema_is_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(StoreError, match="made by a newer version of the server"):
        SqliteHistory(path)


def _no_file_writes() -> None:
    import resource  # noqa: PLC0415 - POSIX only

    # Root may write in a read-only folder; nobody writes past this limit.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no read-only folders")
def test_a_folder_it_cannot_write_is_a_sentence_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    path = folder / "history.sqlite3"
    # In a child process, as the limit would stop this one's own output too.
    opener = (
        "import sys; from pathlib import Path\n"
        "from server.store.sqlite import SqliteHistory, StoreError\n"
        "try:\n    SqliteHistory(Path(sys.argv[1]))\n"
        "except StoreError as exc:\n    print(exc)\nelse:\n    print('opened')\n"
    )
    try:
        child = subprocess.run(
            [sys.executable, "-c", opener, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_no_file_writes,
        )
    finally:
        folder.chmod(0o755)
    assert child.stdout.startswith(f"Cannot open the history database {path}"), child
    assert "writable" in child.stdout
    assert "Traceback" not in child.stderr


# -- failover -------------------------------------------------------------------
#
# A full disk, for real: SQLite's own "database or disk is full" (SQLITE_FULL),
# by capping the writer connection's database at the pages it has
# (PRAGMA max_page_count), then lifting the cap.


def fill_disk(store: SqliteHistory, full: bool) -> None:
    connection = store._connection  # the writer's own
    if full:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")
    else:
        connection.execute("PRAGMA max_page_count = 1073741823")


@search_index
def test_a_full_disk_keeps_the_room_in_memory_then_saves_again(
    open_store: Callable[..., SqliteHistory],
    tmp_path: Path,
    fts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_module, "RETRY_EVERY_S", 0.1)
    statuses: list[tuple[str, bool]] = []
    store = open_store(
        fts=fts, on_status=lambda sentence, saving: statuses.append((sentence, saving))
    )
    durable: list[int] = []
    store.watch_durable(durable.append)
    before = [say(store, f"saved {n}") for n in range(3)]
    assert store.flush(10.0)
    fill_disk(store, True)
    big = "x" * 5_000
    first = ChatMessage(store.next_id(), "alice", f"lost {big}", 1.0)
    assert store.append(first)  # on its way: the writer has not failed yet
    wait_for(lambda: statuses and durable[-1] == first.id)  # the room does not wait
    sentence, saving = statuses[0]
    assert not saving
    assert f"Cannot save history to {tmp_path / 'history.sqlite3'}" in sentence
    assert "full" in sentence and "memory only" in sentence
    later = ChatMessage(store.next_id(), "bob", "later words", 2.0)
    assert not store.append(later)  # kept in memory, and said so
    assert not store.flush(1.0)
    assert store.page(None, 10) == ([*before, first, later], False)
    assert store.page(later.id, 2) == ([before[-1], first], True)
    assert store.search("later", 5) == ([later], False)
    assert store.search("saved", 5) == (before[::-1], False)
    assert len(statuses) == 1  # said once
    fill_disk(store, False)
    wait_for(lambda: len(statuses) == 2)
    assert statuses[1] == (f"History is being saved again to {tmp_path / 'history.sqlite3'}.", True)
    again = say(store, "saved again")
    assert store.flush(10.0)
    assert durable[-1] == again.id
    store.close()
    assert open_store(fts=fts).page(None, 10) == ([*before, first, later, again], False)


def test_memory_keeps_only_the_newest_while_the_disk_fails_and_says_how_many_went(
    open_store: Callable[..., SqliteHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "RETRY_EVERY_S", 0.1)
    monkeypatch.setattr(sqlite_module, "MAX_UNSAVED", 4)
    statuses: list[tuple[str, bool]] = []
    store = open_store(on_status=lambda sentence, saving: statuses.append((sentence, saving)))
    assert store.flush(10.0)
    fill_disk(store, True)
    say(store, "x" * 5_000)
    wait_for(lambda: statuses)
    said = [say(store, f"kept {n}") for n in range(6)]
    assert store.page(None, 10) == (said[-4:], False)
    fill_disk(store, False)
    wait_for(lambda: len(statuses) == 2)
    assert "3 older messages could not be kept" in statuses[1][0]
    assert store.page(None, 10) == (said[-4:], False)


def test_a_writer_that_fails_for_another_reason_fails_over_too(
    open_store: Callable[..., SqliteHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses: list[tuple[str, bool]] = []
    store = open_store(on_status=lambda sentence, ok: statuses.append((sentence, ok)))
    durable: list[int] = []
    store.watch_durable(durable.append)
    saved = say(store, "saved")
    assert store.flush(10.0)

    def broken(message: object) -> frozenset[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sqlite_module, "message_words", broken)
    doomed = say(store, "never written")
    wait_for(lambda: statuses and durable[-1] == doomed.id)  # the room does not wait
    assert statuses == [
        (
            f"History is no longer saved to {store._path} (a bug); new messages are kept "
            "in memory only until the server restarts.",
            False,
        )
    ]
    later = ChatMessage(store.next_id(), "bob", "later", 2.0)
    assert not store.append(later)
    assert not store.flush(1.0)
    assert store.page(None, 10) == ([saved, doomed, later], False)


def test_a_slow_commit_is_said_once_a_while_and_saving_goes_on(
    open_store: Callable[..., SqliteHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "SLOW_COMMIT_S", -1.0)  # every commit is slow
    statuses: list[tuple[str, bool]] = []
    store = open_store(on_status=lambda sentence, ok: statuses.append((sentence, ok)))
    for n in range(3):
        say(store, f"slow {n}")
        assert store.flush(10.0)
    assert len(statuses) == 1
    sentence, saving = statuses[0]
    assert saving and "the disk is slow" in sentence and str(store._path) in sentence


# -- with the room ----------------------------------------------------------------


def test_the_room_shows_a_message_once_the_store_has_kept_it_and_also_when_it_cannot(
    open_store: Callable[..., SqliteHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_room import Harness, chat, inbox  # noqa: PLC0415 - the room's own fakes

    store = open_store()
    harness = Harness(ids=store, history_store=store)
    alice, bob = harness.join("alice"), harness.join("bob")
    said_id = harness.room.say(alice, "kept before it is seen")
    heard: list[ChatMessage] = []

    def bob_heard() -> bool:
        heard.extend(chat(inbox(harness.room, bob)))
        return bool(heard)

    wait_for(bob_heard)  # held until the writer's commit, then shown
    assert [m.id for m in heard] == [said_id]
    assert store.page(None, 5)[0][-1].id == said_id  # committed before it was seen
    assert [m.id for m in chat(inbox(harness.room, alice))] == [said_id]  # her echo

    fill_disk(store, True)
    heard.clear()
    lost_id = harness.room.say(alice, "x" * 5_000)
    wait_for(bob_heard)  # the room is not kept waiting by a full disk
    assert [m.id for m in heard] == [lost_id]
    harness.room.say(alice, "said in memory")  # append says no: shown at once
    assert [m.text for m in chat(inbox(harness.room, bob))] == ["said in memory"]


def test_the_search_index_is_merged_while_every_message_is_its_own_commit(
    open_store: Callable[..., SqliteHistory], tmp_path: Path
) -> None:
    """At chat rates each message is a commit of its own; the index takes
    them in batches, each a new FTS5 segment, and the writer's merge steps
    keep the segments few, so that a search reads a few."""
    if not fts5_available():
        pytest.fail("this SQLite has no FTS5")
    store = open_store(fts=True)
    kept = threading.Event()
    store.watch_durable(lambda last_id: kept.set())
    for i in range(1, 301):
        kept.clear()
        store.append(ChatMessage(i, "alice", f"note {i} about lunch", float(i), False))
        assert kept.wait(5), "a message was not kept"
    reader = sqlite3.connect(tmp_path / "history.sqlite3")
    try:
        (segments,) = reader.execute("SELECT count(DISTINCT segid) FROM message_fts_idx").fetchone()
    finally:
        reader.close()
    # FTS5's own crisis merge alone leaves 15 here; the writer's steps, 5.
    assert segments <= 8, f"{segments} segments for 300 commits"
    found, _more = store.search("lunch", 500)
    assert len(found) == 300


# -- the search index, a little behind ------------------------------------------


def indexed_ids(path: Path, fts: bool) -> set[int]:
    connection = sqlite3.connect(path)
    try:
        sql = "SELECT rowid FROM message_fts" if fts else "SELECT DISTINCT id FROM message_words"
        return {int(row[0]) for row in connection.execute(sql)}
    finally:
        connection.close()


@search_index
def test_a_kept_message_is_found_before_it_is_indexed_and_once_after(
    open_store: Callable[..., SqliteHistory],
    tmp_path: Path,
    fts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_module, "INDEX_DELAY_S", 0.5)
    store = open_store(fts=fts)
    said = [say(store, f"lunch at {n}") for n in range(3)]
    assert store.flush(10.0)
    path = tmp_path / "history.sqlite3"
    assert indexed_ids(path, fts) == set()  # committed, not indexed yet
    assert store.search("lunch", 10) == (said[::-1], False)
    assert store.search("lunch", 10, before=said[2].id) == (said[1::-1], False)
    wait_for(lambda: indexed_ids(path, fts) == {m.id for m in said})  # on its own, soon
    assert store.search("lunch", 10) == (said[::-1], False)  # once each


@search_index
def test_a_batch_of_kept_messages_is_indexed_at_once(
    open_store: Callable[..., SqliteHistory],
    tmp_path: Path,
    fts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_module, "INDEX_DELAY_S", 3_600.0)
    monkeypatch.setattr(sqlite_module, "INDEX_BATCH", 5)
    store = open_store(fts=fts)
    path = tmp_path / "history.sqlite3"
    said = []
    for n in range(4):
        said.append(say(store, f"note {n}"))
        assert store.flush(10.0)
    assert indexed_ids(path, fts) == set()
    said.append(say(store, "note 4"))
    wait_for(lambda: indexed_ids(path, fts) == {m.id for m in said})
    assert store.search("note", 10) == (said[::-1], False)


UNINDEXED_KILL = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from server.protocol import ChatMessage
    from server.store import sqlite as sqlite_module
    sqlite_module.INDEX_DELAY_S = 3_600.0
    store = sqlite_module.SqliteHistory(Path(sys.argv[1]))
    for n in range(20):
        store.append(ChatMessage(store.next_id(), "alice", f"before the crash {n}", 1.0))
    assert store.flush(20.0)
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    """
)


@search_index
def test_messages_kept_but_not_indexed_before_a_kill_are_indexed_at_start(
    open_store: Callable[..., SqliteHistory], tmp_path: Path, fts: bool
) -> None:
    path = tmp_path / "history.sqlite3"
    store = open_store(path, fts=fts)
    first = say(store, "crash course")
    store.close()  # indexed at close
    assert indexed_ids(path, fts) == {first.id}
    run_until_killed(UNINDEXED_KILL, path)
    assert indexed_ids(path, fts) == {first.id}  # the twenty were never indexed
    store = open_store(path, fts=fts)
    found, more = store.search("crash", 50)
    assert [m.text for m in found] == [f"before the crash {n}" for n in range(19, -1, -1)] + [
        "crash course"
    ]
    assert not more
    assert indexed_ids(path, fts) == {m.id for m in found}


@search_index
def test_retention_indexes_before_it_deletes_so_that_no_index_row_outlives_its_message(
    open_store: Callable[..., SqliteHistory],
    tmp_path: Path,
    fts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_module, "RETENTION_EVERY_S", 0.05)
    monkeypatch.setattr(sqlite_module, "INDEX_DELAY_S", 3_600.0)
    monkeypatch.setattr(sqlite_module, "INDEX_CHUNK", 4)  # three steps before it deletes
    store = open_store(fts=fts, keep_messages=3)
    said = [say(store, f"memo {n}") for n in range(10)]
    wait_for(lambda: store.page(None, 50) == (said[-3:], False))
    store.close()  # indexes what is left
    assert indexed_ids(tmp_path / "history.sqlite3", fts) == {m.id for m in said[-3:]}


@search_index
def test_a_backlog_is_indexed_a_chunk_at_a_time_and_all_of_it_at_close(
    open_store: Callable[..., SqliteHistory],
    tmp_path: Path,
    fts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_module, "INDEX_CHUNK", 4)
    monkeypatch.setattr(sqlite_module, "INDEX_DELAY_S", 3_600.0)
    steps: list[int] = []
    index = SqliteHistory._index

    def counting(
        self: SqliteHistory,
        connection: sqlite3.Connection,
        batch: list[tuple[ChatMessage, frozenset[str]]],
    ) -> None:
        steps.append(len(batch))
        index(self, connection, batch)

    monkeypatch.setattr(SqliteHistory, "_index", counting)
    store = open_store(fts=fts)
    said = [say(store, f"backlog {n}") for n in range(10)]
    assert store.flush(10.0)
    assert steps == []  # not due yet
    store.close()
    assert steps == [4, 4, 2]
    assert indexed_ids(tmp_path / "history.sqlite3", fts) == {m.id for m in said}

    monkeypatch.setattr(sqlite_module, "INDEX_DELAY_S", 0.05)
    steps.clear()
    store = open_store(fts=fts)
    more = [say(store, f"backlog {n}") for n in range(10, 19)]
    wait_for(lambda: sum(steps) == 9)  # due, then the rest at once
    assert len(steps) >= 3 and max(steps) <= 4
    assert store.search("backlog", 50) == ((said + more)[::-1], False)


@search_index
def test_past_its_bound_the_backlog_is_indexed_in_the_next_commit(
    open_store: Callable[..., SqliteHistory],
    tmp_path: Path,
    fts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood: the index keeps up with the commits, inside them, so that a
    search never matches more than MAX_UNINDEXED messages in memory."""
    monkeypatch.setattr(sqlite_module, "MAX_UNINDEXED", 5)
    monkeypatch.setattr(sqlite_module, "INDEX_BATCH", 1_000)
    monkeypatch.setattr(sqlite_module, "INDEX_DELAY_S", 3_600.0)
    store = open_store(fts=fts)
    path = tmp_path / "history.sqlite3"
    said = [say(store, f"flood {n}") for n in range(3)]
    assert store.flush(10.0)
    assert indexed_ids(path, fts) == set()
    said += [say(store, f"flood {n}") for n in range(3, 7)]
    assert store.flush(10.0)
    assert indexed_ids(path, fts) >= {m.id for m in said[:3]}  # the backlog with the flood
    assert len(store._unindexed) <= 5
    assert store.search("flood", 10) == (said[::-1], False)
