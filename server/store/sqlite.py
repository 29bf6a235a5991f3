"""The room's history and message ids in a SQLite file, kept across restarts.

How this works. ``SqliteHistory`` is both the room's ``HistoryStore`` and
its ``IdSource``. What the room calls under its lock never touches the
disk: ``next_id`` counts in memory, ``append`` adds the message to the
recent window (the newest ``recent`` messages, loaded at start, which a
welcome replays) and to a queue, under a lock held for a few
instructions. One writer thread does all the writing, as a group commit:
it takes everything queued at once, inserts it in one transaction,
commits, and calls the room's ``watch_durable`` callback with the highest
id committed. Messages said while it commits form the next batch, so
batches grow with the load and an idle room waits for one commit only.

The search index follows a little behind, in transactions of its own: at
chat rates every message is its own commit, and indexing it there wrote
four more tables' pages (a new FTS5 segment each time) and took half the
writer's time. The writer indexes what was committed once ``INDEX_BATCH``
messages are waiting, or ``INDEX_DELAY_S`` after the first of them, and
before retention deletes or the store closes, ``INDEX_CHUNK`` at a time
while messages are queued (a message waits for one chunk at most). Until
then a search matches them in memory (their words were folded before
their commit), so it finds everything that has been shown. In a flood,
past ``MAX_UNINDEXED`` of them, a commit indexes its own messages and
those before them, as every commit once did, so that memory and a
search's work stay bounded. The ``meta`` table's ``indexed`` is the
highest id indexed, set in the index's own transaction; at start, messages
stored above it (the last moments before a kill) are indexed at once.

Durability: WAL with ``synchronous=NORMAL``, so a commit survives the
process being killed (``kill -9``), which is the promise made for a
message's echo; a power cut may lose the last commits before the next
checkpoint. Nothing slow runs inside a commit: a second thread
checkpoints the WAL (passively, on its own connection, every
``CHECKPOINT_EVERY_S``), and FTS5's segment merging, which it would
otherwise do inside whichever commit fills a level, is done by the writer
a few pages at a time after each index step (``_merge``).

Ids: private messages take ids too but are never stored, so the highest
id stored cannot say where to go on. The ``meta`` table keeps a
reservation instead: ids up to ``reserved`` may have been handed out. At
start the counter goes on from the reservation (or the last message, if
higher) and reserves ``ID_BLOCK`` more at once; the writer moves the
reservation another block ahead, in its next transaction, whenever the
counter passes half of it. Ids so stay strictly increasing across
restarts, ``kill -9`` included, skipping at most a block after a kill;
``close`` sets the reservation to the last id given, so that after a clean
stop they go on from the next one (the room hands out no id after it).

Schema (``PRAGMA user_version`` 1): ``messages(id, ts, sender, text,
action)``, the ``meta`` key-value table, and one search index over each
message's folded words (``server.store.words``, so this store finds what
``MemoryHistory`` finds): with FTS5, ``message_fts``, an FTS5 table of the
space-joined words by rowid (the ``ascii`` tokenizer keeps each folded word
whole; ``detail=none``, since only whole-word AND queries are asked);
without it, ``message_words(word, id)`` WITHOUT ROWID, searched from the
query's rarest word with ``EXISTS`` for the others. ``fts=None`` keeps the
database's index, or uses FTS5 for a new one if this SQLite has it; an
index of the other kind than asked for is rebuilt at open. A query's work
is capped (``QUERY_BUDGET_S``, by a progress handler): past it, search
returns what it found so far, saying more.

Reads (``page``, ``search``) run in the caller's thread, each thread with
a read connection of its own (WAL readers never wait for the writer).
They see what is committed, which is what the room has published.

Retention (``keep_days``, ``keep_messages``) runs on the writer thread at
start and then every ``RETENTION_EVERY_S``, deleting the oldest in chunks
of ``DELETE_CHUNK`` rows per transaction, between group commits.

Failover: if a write fails (a full disk, a read-only file, an I/O error)
the store says so once through ``on_status(sentence, False)``, releases
the room from waiting (the callback is called for everything queued),
keeps the unsaved messages in memory (the newest ``MAX_UNSAVED``), where
pages and searches still find them, and ``append`` returns ``False``.
Every ``RETRY_EVERY_S`` it tries to save them; once that works it says so
(``on_status(sentence, True)``) and ``append`` returns ``True`` again.
``on_status`` also warns (with ``True``: it is still saving) when a commit
takes more than ``SLOW_COMMIT_S``.

Public surface: the Protocols' methods, ``flush`` (wait until everything
queued is committed), ``close``, ``uses_fts``, and ``StoreError`` (from
``server.store.lock``) for a database that cannot be opened or read.
"""

from __future__ import annotations

import bisect
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path

from server.config import DEFAULT_HISTORY
from server.protocol import ChatMessage, FileInfo, ProtocolError
from server.store import MAX_ID, HistoryEntry, HistoryStore, IdSource
from server.store.lock import StoreError
from server.store.words import message_words, query_words

logger = logging.getLogger("server")

SCHEMA_VERSION = 1
ID_BLOCK = 10_000  # ids reserved ahead of use
QUERY_BUDGET_S = 0.5  # a search's work, at most
RETENTION_EVERY_S = 60.0
DELETE_CHUNK = 2_000  # rows deleted per transaction by retention
RETRY_EVERY_S = 30.0  # after a failed write
MAX_UNSAVED = 10_000  # messages kept in memory while the disk fails
SLOW_COMMIT_S = 1.0
MERGE_PAGES = 16  # FTS5 merge work per step, after an index step and then between commits
INDEX_BATCH = 64  # committed messages that make the writer index them
INDEX_DELAY_S = 1.0  # ... or how long the first of fewer waits to be indexed
# Messages indexed per step at most: about 1.3 ms of the writer's time,
# which is how long a message said meanwhile may wait behind it. A burst's
# whole backlog at once (10,000 messages, 0.1 s) held up those after it.
INDEX_CHUNK = 128
# Messages search matches in memory at most (about 1 ms of a search): past
# it, a flood, a commit indexes its own messages and those before them, as
# it did before the index followed behind.
MAX_UNINDEXED = 2_000
CHECKPOINT_EVERY_S = 1.0
SLOW_WARN_EVERY_S = 60.0
_FTS = "fts5"
_WORDS = "words"
_RARITY_CAP = 5_000  # index rows counted per word to find the rarest

_COLUMNS = "m.id, m.ts, m.sender, m.text, m.action, m.file"
_INSERT = "INSERT INTO messages (id, ts, sender, text, action, file) VALUES (?, ?, ?, ?, ?, ?)"
_Row = tuple[int, float, str, str, int, str | None]


def fts5_available() -> bool:
    """Whether this Python's SQLite has FTS5."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("CREATE VIRTUAL TABLE probe USING fts5(words)")
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()
    return True


def _ignore_status(sentence: str, saving: bool) -> None:
    """No one to tell."""


class SqliteHistory(HistoryStore, IdSource):
    """The room's history and ids in the SQLite database ``path``.

    ``recent``: the window a welcome replays (0: none). ``keep_days``,
    ``keep_messages``: retention (``None``: keep everything). ``fts``: use
    FTS5 (``None``: if this SQLite has it). ``clock``: the time retention
    counts days by. ``on_status(sentence, saving)``: called from the
    writer thread when saving fails, works again, or is slow.

    Raises ``StoreError`` if the database cannot be opened or made.
    """

    __slots__ = (
        "_bump_at",
        "_bump_wanted",
        "_checkpointer",
        "_clock",
        "_closed",
        "_closing",
        "_commits",
        "_connection",
        "_done",
        "_done_id",
        "_dropped",
        "_durable",
        "_entries",
        "_fts",
        "_idle",
        "_in_flight",
        "_index_due",
        "_keep_days",
        "_keep_messages",
        "_last",
        "_local",
        "_lock",
        "_on_status",
        "_path",
        "_queue",
        "_queued_id",
        "_readers",
        "_recent",
        "_reserved",
        "_saving",
        "_slack",
        "_slow_warned",
        "_stopping",
        "_unindexed",
        "_unsaved",
        "_work",
        "_writer",
    )

    def __init__(
        self,
        path: Path,
        *,
        recent: int = DEFAULT_HISTORY,
        keep_days: float | None = None,
        keep_messages: int | None = None,
        fts: bool | None = None,
        clock: Callable[[], float] = time.time,
        on_status: Callable[[str, bool], None] = _ignore_status,
    ) -> None:
        if recent < 0:
            raise ValueError(f"a history cannot hold fewer than 0 messages, not {recent}")
        if keep_days is not None and not keep_days > 0:
            raise ValueError(f"keep_days is more than 0, not {keep_days}")
        if keep_messages is not None and keep_messages < 1:
            raise ValueError(f"keep_messages is at least 1, not {keep_messages}")
        if fts and not fts5_available():
            raise StoreError("This Python's SQLite has no FTS5; search cannot use it.")
        self._path = path
        self._recent = recent
        self._slack = max(recent // 4, 64)
        self._keep_days = keep_days
        self._keep_messages = keep_messages
        self._clock = clock
        self._on_status = on_status
        self._durable: Callable[[int], None] = _ignore_id
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits on it
        # Whether the writer waits on _work: a busy one takes the queue when it
        # is done, and waking it for each message would cost a notify each.
        self._idle = False
        self._done = threading.Condition(self._lock)  # flush waits on it
        self._queue: list[ChatMessage] = []
        self._in_flight: list[ChatMessage] = []  # the writer's batch, until kept
        self._queued_id = 0  # the highest id queued
        self._done_id = 0  # the highest id committed, or given up on
        self._unsaved: deque[ChatMessage] = deque()  # while saving fails
        # Committed, not yet in the search index: each message with its words,
        # oldest first. Only the writer changes it (under the lock: searches
        # copy it); _index_due is when its first must be indexed.
        self._unindexed: list[tuple[ChatMessage, frozenset[str]]] = []
        self._index_due = float("inf")
        self._dropped = 0  # unsaved messages dropped for want of room
        self._saving = True
        self._bump_wanted = False
        self._stopping = False
        self._closed = False
        self._closing = threading.Event()  # the writer is done: the checkpointer's last round
        self._slow_warned = -SLOW_WARN_EVERY_S
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._connection = self._open(fts)
        self._commits = 0  # transactions the writer has committed
        self._writer = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._checkpointer = threading.Thread(
            target=self._checkpoint,
            args=(self._checkpoint_connection(),),
            name="history-checkpoint",
            daemon=True,
        )
        self._writer.start()
        self._checkpointer.start()

    # -- opening -----------------------------------------------------------

    def _open(self, fts: bool | None) -> sqlite3.Connection:
        path = self._path
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreError(_cannot_open(path, error)) from error
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The history database {path} was made by a newer version of the "
                    f"server (schema {version}; this one knows {SCHEMA_VERSION}); "
                    "run that version, or give this one another --data-dir."
                )
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(
                    f"The history database {path} cannot use a write-ahead log "
                    f"(journal mode {mode}); check that the file and its folder are "
                    "writable, on a local disk."
                )
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's work
            connection.execute("BEGIN IMMEDIATE")
            self._fts = self._make_schema(connection, fts)
            last = connection.execute("SELECT max(id) FROM messages").fetchone()[0] or 0
            indexed = _meta(connection, "indexed")
            # A database from before the index followed behind has all of it indexed.
            self._index_stored(connection, indexed if isinstance(indexed, int) else last)
            reserved = _meta(connection, "reserved")
            self._last = max(last, reserved if isinstance(reserved, int) else 0)
            self._reserve(connection)
            connection.execute("COMMIT")
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM messages m ORDER BY m.id DESC LIMIT ?", (self._recent,)
            ).fetchall()
        except sqlite3.Error as error:
            connection.close()
            raise StoreError(_cannot_open(path, error)) from error
        except BaseException:
            connection.close()
            raise
        self._entries = [HistoryEntry(_message(row)) for row in reversed(rows)]
        return connection

    def _make_schema(self, connection: sqlite3.Connection, fts: bool | None) -> bool:
        """Create what is missing; whether search uses FTS5 (after any rebuild)."""
        connection.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID"
        )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, ts REAL NOT NULL,"
            " sender TEXT NOT NULL, text TEXT NOT NULL, action INTEGER NOT NULL, file TEXT)"
        )
        columns = {row[1] for row in connection.execute("PRAGMA table_info(messages)")}
        if "file" not in columns:  # a database from before files: its messages have none
            connection.execute("ALTER TABLE messages ADD COLUMN file TEXT")
        stored = _meta(connection, "index")
        if fts is None:
            wanted = stored if stored in (_FTS, _WORDS) else (_FTS if fts5_available() else _WORDS)
            if wanted == _FTS and not fts5_available():
                wanted = _WORDS
        else:
            wanted = _FTS if fts else _WORDS
        if stored != wanted:
            connection.execute("DROP TABLE IF EXISTS message_words")
            if fts5_available():
                connection.execute("DROP TABLE IF EXISTS message_fts")
            # else an FTS5 table (from a SQLite with FTS5) cannot be dropped:
            # it is left, unused, and dropped if the database goes back.
            if wanted == _FTS:
                connection.execute(
                    "CREATE VIRTUAL TABLE message_fts USING fts5(words, tokenize='ascii',"
                    " detail='none')"
                )
            else:
                connection.execute(
                    "CREATE TABLE message_words (word TEXT NOT NULL, id INTEGER NOT NULL,"
                    " PRIMARY KEY (word, id)) WITHOUT ROWID"
                )
            self._fts = wanted == _FTS
            self._index_stored(connection, 0)
            _set_meta(connection, "index", wanted)
        if wanted == _FTS:  # merged by the writer between commits instead (_merge)
            connection.execute(
                "INSERT INTO message_fts (message_fts, rank) VALUES ('automerge', 0)"
            )
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return wanted == _FTS

    def _index_stored(self, connection: sqlite3.Connection, after: int) -> None:
        """Index every stored message with an id above ``after``, a chunk at a
        time, and say so in ``meta`` (in the open transaction; none of them is
        in the index yet)."""
        while rows := connection.execute(
            f"SELECT {_COLUMNS} FROM messages m WHERE m.id > ? ORDER BY m.id LIMIT 10000",
            (after,),
        ).fetchall():
            self._index(connection, [_with_words(_message(row)) for row in rows])
            after = rows[-1][0]
        _set_meta(connection, "indexed", after)

    def _reserve(self, connection: sqlite3.Connection) -> None:
        """Reserve ids a block ahead of the counter (in the open transaction)."""
        self._reserved = self._last + ID_BLOCK
        _set_meta(connection, "reserved", self._reserved)
        self._bump_at = self._reserved - ID_BLOCK // 2

    # -- under the room's lock ---------------------------------------------

    @property
    def uses_fts(self) -> bool:
        """Whether search uses FTS5 (else the word table)."""
        return self._fts

    def next_id(self) -> int:
        self._last += 1
        if self._last >= self._bump_at:
            self._bump_at = MAX_ID  # asked once; the writer sets the next mark
            with self._lock:
                self._bump_wanted = True
                if self._idle:
                    self._work.notify()
        return self._last

    def append(self, message: ChatMessage) -> bool:
        if self._recent:
            entries = self._entries
            entries.append(HistoryEntry(message))
            if len(entries) > self._recent + self._slack:
                self._entries = entries[-self._recent :]
        with self._lock:
            if self._saving:
                self._queue.append(message)
                self._queued_id = message.id
                if self._idle:
                    self._work.notify()
                return True
            self._keep_unsaved(message)
            return False

    def watch_durable(self, callback: Callable[[int], None]) -> None:
        self._durable = callback

    def recent(self) -> Sequence[HistoryEntry]:
        entries = self._entries
        return entries[max(0, len(entries) - self._recent) :]

    # -- from any thread -----------------------------------------------------

    def page(self, before: int | None, limit: int) -> tuple[list[ChatMessage], bool]:
        _check_limit(limit)
        below = MAX_ID if before is None else min(before, MAX_ID)
        newest = self._unsaved_below(below)[-(limit + 1) :][::-1]
        rows = self._read(
            f"SELECT {_COLUMNS} FROM messages m WHERE m.id < ? ORDER BY m.id DESC LIMIT ?",
            (below, limit + 1),
        )
        found, _ = _combine(newest, rows, limit + 1)
        return found[:limit][::-1], len(found) > limit

    def search(
        self, query: str, limit: int, before: int | None = None
    ) -> tuple[list[ChatMessage], bool]:
        _check_limit(limit)
        wanted = query_words(query)  # at most MAX_QUERY_WORDS of them
        below = MAX_ID if before is None else min(before, MAX_ID)
        with self._lock:  # before the database: one indexed meanwhile is in one or both
            unindexed = self._unindexed[:]
        newest = [m for m in self._unsaved_below(below) if wanted <= message_words(m)]
        newest += [m for m, words in unindexed if m.id < below and wanted <= words]
        newest.sort(key=_message_id, reverse=True)
        if self._fts:
            match = " ".join(f'"{word}"' for word in sorted(wanted))
            rows = self._read(
                f"SELECT {_COLUMNS} FROM message_fts f CROSS JOIN messages m ON m.id = f.rowid"
                " WHERE message_fts MATCH ? AND f.rowid < ? ORDER BY f.rowid DESC LIMIT ?",
                (match, below, limit + 1),
                budget=True,
            )
        else:
            rows = self._search_words(wanted, below, limit + 1)
        found, cut = _combine(newest, rows, limit + 1)
        return found[:limit], cut or len(found) > limit

    def _search_words(self, wanted: frozenset[str], below: int, limit: int) -> _Rows:
        """The word table's matches below ``below``, newest first, from the rarest word."""
        counts = self._read_all(
            " UNION ALL ".join(
                "SELECT ?, (SELECT count(*) FROM (SELECT 1 FROM message_words"
                " WHERE word = ? AND id < ? LIMIT ?))"
                for _ in wanted
            ),
            tuple(v for word in wanted for v in (word, word, below, _RARITY_CAP)),
        )
        rarity = {str(word): int(str(count)) for word, count in counts}
        order = sorted(wanted, key=lambda word: (rarity[word], word))
        exists = "".join(
            " AND EXISTS (SELECT 1 FROM message_words x WHERE x.word = ? AND x.id = w.id)"
            for _ in order[1:]
        )
        return self._read(
            f"SELECT {_COLUMNS} FROM message_words w CROSS JOIN messages m ON m.id = w.id"
            f" WHERE w.word = ? AND w.id < ?{exists} ORDER BY w.id DESC LIMIT ?",
            (order[0], below, *order[1:], limit),
            budget=True,
        )

    def _unsaved_below(self, below: int) -> list[ChatMessage]:
        """The messages kept only in memory with an id below ``below``, oldest first.

        Read before the database, so that one saved meanwhile is in one or both.
        """
        with self._lock:
            if not self._unsaved:
                return []
            unsaved = list(self._unsaved)
        return unsaved[: bisect.bisect_left(unsaved, below, key=_message_id)]

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if self._closed:
            raise StoreError(f"The history database {self._path} is closed.")
        if connection is None:
            try:
                connection = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False
                )
                connection.execute("PRAGMA query_only = 1")
            except sqlite3.Error as error:
                raise StoreError(_cannot_read(self._path, error)) from error
            with self._lock:
                if self._closed:
                    connection.close()
                    raise StoreError(f"The history database {self._path} is closed.")
                self._readers.append(connection)
            self._local.connection = connection
        return connection

    def _read_all(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            return self._reader().execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise StoreError(_cannot_read(self._path, error)) from error

    def _read(self, sql: str, parameters: tuple[object, ...], *, budget: bool = False) -> _Rows:
        """The rows of ``sql``; with ``budget``, those found within ``QUERY_BUDGET_S``."""
        connection = self._reader()
        rows = _Rows()
        deadline = time.monotonic() + QUERY_BUDGET_S
        if budget:
            connection.set_progress_handler(lambda: time.monotonic() > deadline, 1_000)
        try:
            cursor = connection.execute(sql, parameters)
            while batch := cursor.fetchmany(64):
                rows.extend(batch)
        except sqlite3.OperationalError as error:
            if not (budget and time.monotonic() > deadline):
                raise StoreError(_cannot_read(self._path, error)) from error
            rows.cut = True
        except sqlite3.Error as error:
            raise StoreError(_cannot_read(self._path, error)) from error
        finally:
            if budget:
                connection.set_progress_handler(None, 0)
        return rows

    # -- shutting down -------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every message queued so far is
        committed; whether it is (``False`` too while saving fails)."""
        with self._lock:
            target = self._queued_id
            self._done.wait_for(
                lambda: self._done_id >= target or not self._writer.is_alive(), timeout
            )
            return self._done_id >= target and self._saving

    def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._stopping = True
            self._work.notify()
        self._writer.join()
        self._closing.set()
        self._checkpointer.join()
        with self._lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for connection in (*readers, self._connection):
            connection.close()

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        """The writer thread; a failure that is no disk's fails over like one."""
        try:
            self._write()
        except Exception as error:
            logger.exception("the history's writer failed")
            with self._lock:
                self._saving = False
                pending = self._in_flight + self._queue
                self._in_flight = self._queue = []
                for message in pending:
                    self._keep_unsaved(message)
            if pending:
                self._release(pending[-1].id)  # the room first: it holds them back
            self._status(
                f"History is no longer saved to {self._path} ({error}); new messages "
                "are kept in memory only until the server restarts.",
                False,
            )

    def _write(self) -> None:
        retention = self._keep_days is not None or self._keep_messages is not None
        next_round = time.monotonic() if retention else float("inf")
        next_retry = float("inf")
        cutoff: tuple[int, float] | None = None  # this retention round's (id, ts)
        merging = False  # the search index has merge work to do
        while True:
            with self._lock:
                while not (self._stopping or self._queue or self._bump_wanted):
                    now = time.monotonic()
                    if self._saving:
                        wake = (
                            now
                            if cutoff is not None or merging
                            else min(next_round, self._index_due)
                        )
                    else:
                        wake = next_retry
                    if wake <= now:
                        break
                    self._idle = True
                    self._work.wait(min(wake - now, 3600.0))
                    self._idle = False
                batch = self._in_flight = self._queue
                self._queue = []
                bump, self._bump_wanted = self._bump_wanted, False
                saving = self._saving  # while it fails, append queues nothing
                stopping = self._stopping and not (batch or bump)
                if stopping:
                    self._saving = False  # closed: what comes later stays in memory
            now = time.monotonic()
            if stopping:
                self._finish(saving)
                return
            if not saving:
                if now >= next_retry:
                    self._retry(resume=True)
                    next_retry = now + RETRY_EVERY_S
                continue
            if batch or bump:
                if self._commit(batch) or (
                    len(self._unindexed) >= INDEX_BATCH and self._index_step()
                ):
                    merging = True  # a new segment: look for merge work
                if merging:
                    merging = self._merge()
            elif merging:
                merging = self._merge()
            elif self._unindexed and now >= self._index_due:
                merging = self._index_step()
            elif cutoff is None:
                cutoff = self._cutoff()
                next_round = now + RETENTION_EVERY_S
            elif not self._delete_chunk(cutoff):
                cutoff = None
            if not self._saving:
                next_retry = time.monotonic() + RETRY_EVERY_S

    def _commit(self, batch: list[ChatMessage]) -> bool:
        """Commit ``batch`` (and move the id reservation if due); whether that
        made a segment of the search index (past ``MAX_UNINDEXED``)."""
        connection = self._connection
        started = time.monotonic()
        reserve = self._last >= self._reserved - ID_BLOCK // 2
        flooded = bool(batch) and len(self._unindexed) + len(batch) > MAX_UNINDEXED
        # Words kept for search only while the index is behind: a flood's
        # batch is indexed as it goes (tens of thousands of word sets kept
        # through its commit, more for the garbage collector to walk, made
        # it a quarter slower: 18.8 against 14.6 us a message).
        indexing = [] if flooded else [_with_words(message) for message in batch]
        try:
            if len(batch) == 1 and not (reserve or flooded):
                # At chat rates every message is a batch of one: a statement
                # of its own (autocommitted, as durable) is one call into
                # SQLite instead of three.
                connection.execute(_INSERT, _row(batch[0]))
            else:
                connection.execute("BEGIN IMMEDIATE")
                self._insert(connection, batch)
                if reserve:
                    self._reserve(connection)
                if flooded:
                    self._index(connection, chain(self._unindexed, map(_with_words, batch)))
                    _set_meta(connection, "indexed", batch[-1].id)
                connection.execute("COMMIT")
        except sqlite3.Error as error:
            _rollback(connection)
            self._fail(batch, error)
            return False
        self._commits += 1
        if flooded:
            self._indexed(len(self._unindexed))
        else:
            self._add_unindexed(indexing)
        elapsed = time.monotonic() - started
        if elapsed > SLOW_COMMIT_S and started - self._slow_warned > SLOW_WARN_EVERY_S:
            self._slow_warned = started
            self._status(
                f"Saving history to {self._path} took {elapsed:.1f} s: the disk is slow, "
                "and new messages wait for it before they are shown.",
                True,
            )
        if batch:
            self._release(batch[-1].id)
        return flooded

    def _add_unindexed(self, indexing: list[tuple[ChatMessage, frozenset[str]]]) -> None:
        """``indexing`` was committed: search finds it in memory until it is indexed."""
        if not indexing:
            return
        if not self._unindexed:
            self._index_due = time.monotonic() + INDEX_DELAY_S
        with self._lock:
            self._unindexed += indexing

    def _index_step(self) -> bool:
        """Index the messages committed and not yet indexed, oldest first, in
        a transaction of its own (one FTS5 segment); whether it worked.

        ``INDEX_CHUNK`` of them, and the next chunk only while no message is
        queued: a message said meanwhile waits for one chunk at most, and an
        idle writer makes one segment of a backlog instead of many (each is
        read by every search until merged). What is left is due at once,
        after what is queued.
        """
        unindexed = self._unindexed
        pending = unindexed[:INDEX_CHUNK]
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            self._index(connection, pending)
            while not self._queue and len(pending) < len(unindexed):  # a glance: no lock
                chunk = unindexed[len(pending) : len(pending) + INDEX_CHUNK]
                self._index(connection, chunk)
                pending += chunk
            _set_meta(connection, "indexed", pending[-1][0].id)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            _rollback(connection)
            self._fail([], error)
            return False
        self._commits += 1
        self._indexed(len(pending))
        return True

    def _indexed(self, count: int) -> None:
        """The oldest ``count`` messages waiting are in the index now; the rest,
        if any, is due at once."""
        with self._lock:
            del self._unindexed[:count]
        self._index_due = time.monotonic() if self._unindexed else float("inf")

    def _merge(self) -> bool:
        """One bounded step of FTS5's segment merging; whether it found work.

        FTS5 merges its segments within the commit that adds one, by
        default, and a merge of large segments stalls that commit for tens
        of milliseconds: every message waiting on it waits that long. So
        the index is made with automerge off and merged here, a few pages
        at a time (``MERGE_PAGES``), after each index step and then between
        commits while it finds work.
        """
        if not (self._fts and self._saving):
            return False
        connection = self._connection
        changes = connection.total_changes
        try:
            connection.execute(
                "INSERT INTO message_fts (message_fts, rank) VALUES ('merge', ?)", (MERGE_PAGES,)
            )
        except sqlite3.Error as error:
            self._fail([], error)
            return False
        self._commits += 1
        return connection.total_changes - changes >= 2  # FTS5's sign that it merged

    def _checkpoint_connection(self) -> sqlite3.Connection | None:
        """The checkpointer's connection, opened (its WAL too) before the store is
        in use, so that every file the store holds is open once it is made."""
        try:
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return None  # the writer reports what fails; the WAL then grows until close
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            connection.close()
            return None
        return connection

    def _checkpoint(self, connection: sqlite3.Connection | None) -> None:
        """The checkpointer thread: copy the WAL into the database, beside the writer.

        A checkpoint syncs the disk twice; run by the writer (SQLite's
        automatic checkpoint), it would hold up the commit that triggers it.
        A passive checkpoint on a connection of its own never waits for the
        writer, nor the writer for it. Every ``CHECKPOINT_EVERY_S`` if
        anything was committed, and once more at the end.
        """
        if connection is None:
            return
        try:
            done = -1
            while True:
                stopping = self._closing.wait(CHECKPOINT_EVERY_S)
                if self._commits != done:
                    done = self._commits
                    try:
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:
                        pass  # the writer reports a failing disk; try again later
                if stopping:
                    return
        finally:
            connection.close()

    def _insert(self, connection: sqlite3.Connection, batch: list[ChatMessage]) -> None:
        connection.executemany(_INSERT, [_row(m) for m in batch])

    def _index(
        self, connection: sqlite3.Connection, batch: Iterable[tuple[ChatMessage, frozenset[str]]]
    ) -> None:
        if self._fts:
            connection.executemany(
                "INSERT INTO message_fts (rowid, words) VALUES (?, ?)",
                [(m.id, " ".join(words)) for m, words in batch if words],
            )
        else:
            connection.executemany(
                "INSERT INTO message_words (word, id) VALUES (?, ?)",
                [(word, m.id) for m, words in batch for word in words],
            )

    def _release(self, last_id: int) -> None:
        """Every message up to ``last_id`` is kept (or given up on): tell flush and the room."""
        with self._lock:
            self._done_id = max(self._done_id, last_id)
            self._in_flight = []
            self._done.notify_all()
        try:
            self._durable(last_id)
        except Exception:
            logger.exception("the history's durable callback failed")

    def _fail(self, batch: list[ChatMessage], error: sqlite3.Error) -> None:
        with self._lock:
            self._saving = False
            pending = batch + self._queue
            self._queue = []
            for message in pending:
                self._keep_unsaved(message)
        if pending:
            self._release(pending[-1].id)  # the room first: it holds them back
        self._status(
            f"Cannot save history to {self._path} ({error}); new messages are kept in "
            f"memory only (the last {MAX_UNSAVED:,}) until it can.",
            False,
        )

    def _keep_unsaved(self, message: ChatMessage) -> None:
        """Under the lock: keep ``message`` in memory, dropping the oldest past the bound."""
        self._unsaved.append(message)
        if len(self._unsaved) > MAX_UNSAVED:
            self._unsaved.popleft()
            self._dropped += 1

    def _retry(self, *, resume: bool) -> None:
        """Save the unsaved messages; once none are left, save as before if ``resume``."""
        connection = self._connection
        while True:
            with self._lock:
                pending = list(self._unsaved)
            indexing = [_with_words(message) for message in pending]
            try:
                connection.execute("BEGIN IMMEDIATE")
                self._insert(connection, pending)
                self._reserve(connection)
                connection.execute("COMMIT")
            except sqlite3.Error:
                _rollback(connection)
                return
            self._add_unindexed(indexing)
            with self._lock:
                while pending and self._unsaved and self._unsaved[0].id <= pending[-1].id:
                    self._unsaved.popleft()
                if self._unsaved:
                    continue  # said while this was saved: save them too
                self._saving = resume
                dropped, self._dropped = self._dropped, 0
            lost = f"; {dropped:,} older messages could not be kept" if dropped else ""
            self._status(f"History is being saved again to {self._path}{lost}.", True)
            return

    def _cutoff(self) -> tuple[int, float]:
        """Retention: delete every message below this id or older than this time."""
        oldest_id = 0
        if self._keep_messages is not None:
            row = self._connection.execute(
                "SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET ?",
                (self._keep_messages - 1,),
            ).fetchone()
            oldest_id = 0 if row is None else row[0]
        oldest_ts = -float("inf")
        if self._keep_days is not None:
            oldest_ts = self._clock() - self._keep_days * 86_400
        return oldest_id, oldest_ts

    def _delete_chunk(self, cutoff: tuple[int, float]) -> bool:
        """Delete the oldest messages past ``cutoff``, a chunk; whether more may remain."""
        oldest_id, oldest_ts = cutoff
        if self._unindexed:
            # Indexed after their deletion, they would stay in the index: a
            # chunk first, and the deletion at a later call.
            return self._index_step()
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM messages m ORDER BY m.id LIMIT ?", (DELETE_CHUNK,)
            ).fetchall()
            # Times follow ids (but for a clock set back): stop at the first kept one.
            doomed = []
            for row in rows:
                if row[0] >= oldest_id and row[1] >= oldest_ts:
                    break
                doomed.append(row)
            if doomed:
                last = doomed[-1][0]
                connection.execute("DELETE FROM messages WHERE id <= ?", (last,))
                if self._fts:
                    connection.execute("DELETE FROM message_fts WHERE rowid <= ?", (last,))
                else:
                    connection.executemany(
                        "DELETE FROM message_words WHERE word = ? AND id = ?",
                        [(word, row[0]) for row in doomed for word in message_words(_message(row))],
                    )
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            _rollback(connection)
            self._fail([], error)
            return False
        return len(doomed) == DELETE_CHUNK

    def _finish(self, saving: bool) -> None:
        """The writer's last work, once everything queued is committed."""
        if not saving:
            self._retry(resume=False)  # a last try; what it saves is indexed at start
        else:
            while self._unindexed and self._index_step():
                pass
        self._settle()

    def _settle(self) -> None:
        """At close: reserve no id beyond the last one given, so that a clean
        restart goes on from the next one instead of skipping a block."""
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            _set_meta(connection, "reserved", self._last)
            connection.execute("COMMIT")
        except sqlite3.Error:
            _rollback(connection)  # the block reserved stays: ids skip it, as after a kill

    def _status(self, sentence: str, saving: bool) -> None:
        try:
            self._on_status(sentence, saving)
        except Exception:
            logger.exception("the history's status callback failed")


class _Rows(list[_Row]):
    """Rows read, and whether the query was cut short by its budget."""

    cut = False


def _combine(
    newest: list[ChatMessage], rows: Iterable[_Row], limit: int
) -> tuple[list[ChatMessage], bool]:
    """Memory's newest messages, then the database's (both newest first), without
    repeats, at most ``limit``; and whether the database's were cut short."""
    found = newest[:limit]
    seen = {message.id for message in found}
    for row in rows:
        if len(found) == limit:
            break
        if row[0] not in seen:
            found.append(_message(row))
    return found, isinstance(rows, _Rows) and rows.cut


def _message(row: _Row) -> ChatMessage:
    return ChatMessage(row[0], row[2], row[3], row[1], bool(row[4]), file=_file(row[5]))


def _file_json(file: FileInfo | None) -> str | None:
    if file is None:
        return None
    return json.dumps(file.to_wire(), ensure_ascii=False, separators=(",", ":"))


def _file(text: str | None) -> FileInfo | None:
    """A stored message's file; one the database mangled is left out, not fatal."""
    if text is None:
        return None
    try:
        return FileInfo.from_wire(json.loads(text))
    except (ValueError, TypeError, AttributeError, ProtocolError):
        logger.warning("history: a message's file could not be read back: %.80r", text)
        return None


def _row(m: ChatMessage) -> tuple[int, float, str, str, int, str | None]:
    return (m.id, m.ts, m.sender, m.text, int(m.action), _file_json(m.file))


def _with_words(message: ChatMessage) -> tuple[ChatMessage, frozenset[str]]:
    return message, message_words(message)


def _message_id(message: ChatMessage) -> int:
    return message.id


def _ignore_id(last_id: int) -> None:
    """No room watching yet."""


def _meta(connection: sqlite3.Connection, key: str) -> object:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _set_meta(connection: sqlite3.Connection, key: str, value: object) -> None:
    connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _rollback(connection: sqlite3.Connection) -> None:
    try:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the transaction is gone with the error that ended it


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"a limit is at least 1, not {limit}")


def _cannot_open(path: Path, error: sqlite3.Error) -> str:
    return (
        f"Cannot open the history database {path} ({error}); check that its folder is "
        "writable and that the file is a database this server made."
    )


def _cannot_read(path: Path, error: sqlite3.Error) -> str:
    return f"Cannot read the history database {path} ({error})."
