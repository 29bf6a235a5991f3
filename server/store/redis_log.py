"""The backplane on Redis: one stream is the room's log, one Lua script orders each change.

How this works (``/work/shared/NOTES-backplane.md`` has the why): every key
of a room shares one hash tag, ``chat:{room}:``. A change is one call of
``ROOM_SCRIPT``, which atomically checks the room's epoch, that this server
is still registered, and the change's rule (a name claimed with
``HSETNX``, a recipient present, a speaker holding its name), then takes
the next log position (and message id) with ``INCR``, stamps Redis's
``TIME`` and ``XADD``s the event to the log with the position as its id.
Public messages also go to a capped ``history`` stream, for servers that
join later. Each command carries an operation id; the script keeps its
answer for a minute, so a command sent again after a lost reply is
answered, not applied twice. Counters never go back: each command passes
the highest position and id its server has seen (``Replica.floors``), and
the script starts above them if Redis came back empty; registering raises
the id counter to the server's, so a server that saw none of those ids
cannot give one again.

Three threads per server, none of them a selector loop's:

- the *writer* takes up to ``PIPELINE`` queued commands at a time and
  sends them as one pipeline on one connection (so each client's order is
  kept); on a lost connection it sends the same commands again, with the
  same operation ids, until it gets through or this server is fenced;
- the *reader* follows the log with ``XREAD BLOCK`` from its last position
  and hands each batch to the replica; a gap in the positions (entries
  trimmed before it read them) fences the server, which then starts over;
- the *heartbeat* refreshes this server's entry every ``heartbeat``
  seconds. With no answer for ``5 x heartbeat`` (its own clock, from when
  the beat was sent) it fences the server (``Replica.fence``: clients get
  ``shutdown``, hellos ``room-unavailable``), then registers again as a
  new server when Redis answers. It also runs the clean-up: a server whose
  entry is ``10 x heartbeat`` old (Redis's clock) is removed, its users
  announced gone in batches of ``REAP_BATCH``. The cut-off is shorter than
  the clean-up, so a server that cannot reach Redis has closed its clients
  before anyone frees their names: there are never two "alice"s.
  Each acknowledged beat also gives a *lease*, which ends (on Redis's
  clock, estimated early) when the cut-off after that beat's sending
  would fence the server; every command carries it and the script refuses
  it once the lease is over, so a command cannot run after its server has
  cut its clients off (a pipeline that waited in a hung Redis's socket).

``redis`` is imported here only, and only a server started with
``--redis`` imports this module.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from server.config import shown_url
from server.protocol import ChatMessage
from server.store.backplane import Backplane, Command, Event, Holder, Replica, Reply, Snapshot

logger = logging.getLogger("server")

PIPELINE = 128  # commands per round trip
QUEUE_SIZE = 20_000  # commands waiting: each session has at most one, and its leave
LOG_RETENTION = 50_000  # events the log keeps (about): how far a server may lag
HISTORY_KEPT = 1_000  # public messages the history stream keeps, for new servers
OP_TTL = 60  # seconds an answer is kept for a command sent again
REAP_BATCH = 1_000  # users announced gone per call of the clean-up
READ_COUNT = 1_000  # events per read

# Every script's helpers: the next value of a counter that never goes below
# a floor, and Redis's clock in milliseconds (the room's one clock).
_HELPERS = """
local function bump(key, floor)
  local v = redis.call('INCR', key)
  if v <= floor then v = floor + 1; redis.call('SET', key, v) end
  return v
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

ROOM_SCRIPT = (
    _HELPERS
    + """
local p = KEYS[1]
local epoch, srv, op, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seq_floor, id_floor = tonumber(ARGV[5]), tonumber(ARGV[6])
local log_max, history_max, op_ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local identity, token, target, body = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local lease_end = tonumber(ARGV[14])
if redis.call('GET', p .. 'epoch') ~= epoch then return {'unavailable', 0} end
local opkey = p .. 'op:' .. op
local cached = redis.call('GET', opkey)
if cached then return cjson.decode(cached) end
local ms = now_ms()
if ms > lease_end then return {'unavailable', 0} end
if not redis.call('ZSCORE', p .. 'servers', srv) then return {'unavailable', 0} end
local names, ops, users = p .. 'names', p .. 'ops', p .. 'srv:' .. srv
local me = srv .. '|' .. token .. '|'
local function answer(status, seq)
  local reply = {status, seq}
  redis.call('SET', opkey, cjson.encode(reply), 'EX', op_ttl)
  return reply
end
local function owns(who)
  local v = redis.call('HGET', names, who)
  return v and string.sub(v, 1, #me) == me
end
local function append(...)
  local seq = bump(p .. 'seq', seq_floor)
  redis.call('XADD', p .. 'log', 'MAXLEN', '~', log_max, seq .. '-0', 'k', kind, 't', ms,
    's', srv, 'o', token, 'i', identity, 'j', target, 'b', body, ...)
  return answer('ok', seq)
end
if kind == 'join' then
  if redis.call('HSETNX', names, identity, me .. ms .. '|' .. body) == 0 then
    return answer('name-taken', 0)
  end
  redis.call('SADD', users, identity)
  return append()
elseif kind == 'leave' then
  if not owns(identity) then return answer('gone', 0) end
  redis.call('HDEL', names, identity)
  redis.call('HDEL', ops, identity)
  redis.call('SREM', users, identity)
  return append()
elseif kind == 'rename' then
  local v = redis.call('HGET', names, identity)
  if not (v and string.sub(v, 1, #me) == me) then return answer('gone', 0) end
  local since = string.match(string.sub(v, #me + 1), '^([^|]*)|')
  local value = me .. since .. '|' .. body
  if target ~= identity then
    if redis.call('HSETNX', names, target, value) == 0 then return answer('name-taken', 0) end
    redis.call('HDEL', names, identity)
    redis.call('SREM', users, identity)
    redis.call('SADD', users, target)
    if redis.call('HDEL', ops, identity) == 1 then redis.call('HSET', ops, target, '1') end
  else
    redis.call('HSET', names, identity, value)
  end
  return append()
elseif kind == 'say' then
  if not owns(identity) then return answer('gone', 0) end
  if target ~= '' and redis.call('HEXISTS', names, target) == 0 then
    return answer('no-such-user', 0)
  end
  local id = bump(p .. 'msgid', id_floor)
  if target == '' then
    redis.call('XADD', p .. 'history', 'MAXLEN', history_max, id .. '-0', 't', ms, 'b', body)
  end
  return append('m', id)
elseif kind == 'op' or kind == 'kick' then
  if redis.call('HEXISTS', names, identity) == 0 then return answer('no-such-user', 0) end
  if kind == 'op' then
    if target == '1' then redis.call('HSET', ops, identity, '1')
    else redis.call('HDEL', ops, identity) end
  end
  return append()
elseif kind == 'notice' then
  return append()
elseif kind == 'ban' then
  redis.call('HSET', p .. 'bans', identity, body)
  return append()
elseif kind == 'unban' then
  redis.call('HDEL', p .. 'bans', identity)
  return append()
end
return redis.error_reply('unknown command ' .. kind)
"""
)

REGISTER_SCRIPT = (
    _HELPERS
    + """
local p = KEYS[1]
local candidate, srv, count, id_floor = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('SET', p .. 'epoch', candidate, 'NX')
if tonumber(redis.call('GET', p .. 'msgid') or '0') < id_floor then
  redis.call('SET', p .. 'msgid', id_floor)
end
local ms = now_ms()
redis.call('ZADD', p .. 'servers', ms, srv)
return {redis.call('GET', p .. 'epoch'), redis.call('GET', p .. 'seq') or '0',
  redis.call('GET', p .. 'msgid') or '0', redis.call('HGETALL', p .. 'names'),
  redis.call('HKEYS', p .. 'ops'),
  redis.call('XREVRANGE', p .. 'history', '+', '-', 'COUNT', count),
  redis.call('HVALS', p .. 'bans'), ms}
"""
)

HEARTBEAT_SCRIPT = (
    _HELPERS
    + """
local p = KEYS[1]
if redis.call('GET', p .. 'epoch') ~= ARGV[1] then return {'epoch', 0, 0} end
if not redis.call('ZSCORE', p .. 'servers', ARGV[2]) then return {'reaped', 0, 0} end
local ms = now_ms()
redis.call('ZADD', p .. 'servers', 'XX', ms, ARGV[2])
return {'ok', tonumber(redis.call('GET', p .. 'seq') or '0'), ms}
"""
)

# Removes one silent server's users (``ARGV[2]`` names one: a server leaving
# on purpose), at most a batch of them per call; returns how many, and
# whether that server is now gone altogether.
REAP_SCRIPT = (
    _HELPERS
    + """
local p = KEYS[1]
local epoch, dead, silent_ms, batch = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local seq_floor, log_max = tonumber(ARGV[5]), ARGV[6]
if redis.call('GET', p .. 'epoch') ~= epoch then return {0, 0} end
local ms = now_ms()
if dead == '' then
  local found = redis.call('ZRANGEBYSCORE', p .. 'servers', '-inf', ms - silent_ms, 'LIMIT', 0, 1)
  if #found == 0 then return {0, 0} end
  dead = found[1]
end
local users = p .. 'srv:' .. dead
local prefix = dead .. '|'
local gone = {}
for _, who in ipairs(redis.call('SPOP', users, batch)) do
  local v = redis.call('HGET', p .. 'names', who)
  if v and string.sub(v, 1, #prefix) == prefix then
    redis.call('HDEL', p .. 'names', who)
    redis.call('HDEL', p .. 'ops', who)
    table.insert(gone, who)
  end
end
if #gone > 0 then
  local seq = bump(p .. 'seq', seq_floor)
  redis.call('XADD', p .. 'log', 'MAXLEN', '~', log_max, seq .. '-0', 'k', 'gone', 't', ms,
    's', dead, 'o', 0, 'i', '', 'j', '', 'b', cjson.encode(gone))
end
if redis.call('SCARD', users) == 0 then
  redis.call('ZREM', p .. 'servers', dead)
  return {#gone, 1}
end
return {#gone, 0}
"""
)


@dataclass(slots=True)
class _Queued:
    server: str
    command: Command
    done: Callable[[Reply], None]
    op: str


class RedisBackplane(Backplane):
    """A ``Backplane`` on the Redis at ``url`` for the room called ``room``.

    ``heartbeat`` (seconds) sets the other times: the cut-off is 5 times
    it, the clean-up 10 times (tests shorten it).
    """

    def __init__(
        self,
        url: str,
        room: str,
        *,
        heartbeat: float = 1.0,
        history: int = HISTORY_KEPT,
        retention: int = LOG_RETENTION,
    ) -> None:
        self.url = url
        self._prefix = f"chat:{{{room}}}:"
        self._keys = [self._prefix]
        self._heartbeat = heartbeat
        self._cutoff = 5 * heartbeat
        self._silent_ms = int(10_000 * heartbeat)
        self._history = max(1, history)
        self._retention = max(1, retention)
        block = min(1.0, heartbeat)
        self._block_ms = max(1, int(block * 1000))
        self._writer = _client(url, timeout=self._cutoff)
        self._reader = _client(url, timeout=block + self._cutoff)
        self._beater = _client(url, timeout=max(heartbeat, 0.05))
        self._shas: dict[str, str] = {}
        self._queue: queue.Queue[_Queued] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._server: str | None = None  # registered as; None: fenced or not yet
        # Ids this server was registered as before a fence: their users are
        # announced gone as soon as it registers again, not at the clean-up,
        # so that its clients get their names back when they reconnect.
        self._previous: list[str] = []
        self._epoch = ""
        self._position = 0  # the reader's: the last event read
        self._lease_end = 0  # Redis's clock (ms): no command of this server runs after it
        self._registered = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._replica: Replica | None = None
        self._threads: list[threading.Thread] = []
        self._op_prefix = uuid.uuid4().hex[:16] + ":"
        self._op_count = itertools.count(1)

    # -- Backplane ---------------------------------------------------------------

    def start(self, replica: Replica) -> None:
        self._replica = replica
        if not self._register():
            logger.warning(
                "Redis at %s does not answer; the room waits for it", shown_url(self.url)
            )
        for name, run in (
            ("redis-writer", self._write_loop),
            ("redis-reader", self._read_loop),
            ("redis-heartbeat", self._beat_loop),
        ):
            thread = threading.Thread(target=run, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, server: str, command: Command, done: Callable[[Reply], None]) -> bool:
        # A random prefix per process and a counter (next() is atomic):
        # unique across servers and restarts, at a fraction of uuid4's cost,
        # which was a fifth of a loop thread's time in a flood of messages.
        item = _Queued(server, command, done, f"{self._op_prefix}{next(self._op_count)}")
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            self._registered.notify_all()
        # The threads wait a beat or a read at most; one stuck on a hung
        # Redis is a daemon and is left behind rather than holding the stop.
        for thread in self._threads:
            thread.join(self._block_ms / 1000 + 0.5)
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            self._retire(server)
        for client in (self._writer, self._reader, self._beater):
            client.close()

    # -- registering and fencing -----------------------------------------------------

    def _register(self) -> bool:
        """Join the room as a new server, from a snapshot; whether Redis answered."""
        replica = self._replica
        assert replica is not None
        server = uuid.uuid4().hex[:12]
        # The ids this server has seen go up front: a Redis that came back
        # empty starts above them even if another server's message is the
        # first (that one passes floors of its own, maybe none).
        _seq_floor, id_floor = replica.floors()
        try:
            self._load_scripts()
            sent = time.monotonic()
            raw = self._call(
                self._beater,
                REGISTER_SCRIPT,
                [uuid.uuid4().hex, server, self._history, id_floor],
            )
        except RedisError as exc:
            logger.debug("Cannot register with Redis: %s", exc)
            return False
        epoch, seq, last_id, names, ops, history, bans, redis_ms = raw
        lease_end = self._lease_from(sent, int(redis_ms))
        snapshot = Snapshot(
            server,
            int(seq),
            int(last_id),
            _holders(names, {o.decode() for o in ops}),
            _history(history),
            [json.loads(ban) for ban in bans],
        )
        with self._lock:
            # Under the lock: the reader reads nothing for this registration,
            # and the writer sends nothing, before the replica has the snapshot.
            replica.reset(snapshot)
            self._server, self._epoch, self._position = server, epoch.decode(), snapshot.seq
            self._lease_end = lease_end
            self._registered.notify_all()
        return True

    def _lease_from(self, sent: float, redis_ms: int) -> int:
        """The end, on Redis's clock, of the lease an answer to a beat sent at
        ``sent`` (this server's clock) gives: the cut-off after that send.

        Redis ran the beat at ``redis_ms``, somewhere between its sending and
        now; taking it as now puts the send, and the lease's end, early, never
        late. So Redis refuses this server's commands from before the moment
        this server cuts its clients off (``_beat_loop``), and a client whose
        say was never answered (the app offers to send it again) is right.
        """
        return redis_ms - int((time.monotonic() - sent) * 1000) + int(self._cutoff * 1000)

    def _fence(self, why: str) -> None:
        with self._lock:
            if self._server is None:
                return
            self._previous.append(self._server)
            self._server = None
        assert self._replica is not None
        self._replica.fence(why)

    def _retire(self, server: str) -> None:
        """Announce the users of ``server`` (this one stopping, or its registration
        before a fence) gone now, not at the clean-up."""
        deadline = time.monotonic() + 2.0
        try:
            while time.monotonic() < deadline:
                _count, finished = self._reap(server)
                if finished:
                    return
        except RedisError as exc:
            logger.warning("Could not tell Redis this server stops: %s", exc)

    def _retire_previous(self) -> None:
        while self._previous:
            self._retire(self._previous[0])
            self._previous.pop(0)

    def _reap(self, dead: str) -> tuple[int, bool]:
        assert self._replica is not None
        seq_floor, _ = self._replica.floors()
        args = [self._epoch, dead, self._silent_ms, REAP_BATCH, seq_floor, self._retention]
        count, finished = self._call(self._beater, REAP_SCRIPT, args)
        return int(count), bool(finished)

    # -- the heartbeat --------------------------------------------------------------------

    def _beat_loop(self) -> None:
        acked = time.monotonic()
        while not self._stopping.wait(self._heartbeat):
            with self._lock:
                server, epoch, position = self._server, self._epoch, self._position
            if server is None:
                if self._register():
                    acked = time.monotonic()
                    self._retire_previous()
                continue
            sent = time.monotonic()
            try:
                status, seq, redis_ms = self._call(self._beater, HEARTBEAT_SCRIPT, [epoch, server])
            except RedisError as exc:
                if time.monotonic() - acked > self._cutoff:
                    self._fence(f"{UNREACHABLE_WHY} ({_short(exc)})")
                continue
            if status != b"ok":
                self._fence("This server was out of touch with the room for too long.")
                continue
            if int(seq) < position:
                self._fence("The room's data went back in time (Redis lost writes).")
                continue
            if time.monotonic() - acked > self._cutoff:
                # Paused past the cut-off (a stopped process, a long stall):
                # its clients may have been given up on; start over.
                self._fence("This server was out of touch with the room for too long.")
                continue
            acked = sent
            lease_end = self._lease_from(sent, int(redis_ms))
            with self._lock:
                if self._server == server:
                    self._lease_end = max(self._lease_end, lease_end)
            try:
                for _ in range(10):  # bounded: the rest at the next beat
                    if self._reap("")[0] == 0:
                        break
            except RedisError as exc:
                logger.debug("The clean-up could not run: %s", exc)

    # -- the writer -------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < PIPELINE:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._send(batch)
        while True:  # stopping: whatever is left will not be sent
            try:
                self._queue.get_nowait().done(Reply("unavailable"))
            except queue.Empty:
                return

    def _send(self, batch: list[_Queued]) -> None:
        """Send ``batch`` until Redis answers, or its server is fenced, or we stop."""
        assert self._replica is not None
        pause = 0.01
        while True:
            with self._lock:
                server, epoch, lease_end = self._server, self._epoch, self._lease_end
            live = [item for item in batch if item.server == server]
            for item in batch:
                if item.server != server:
                    item.done(Reply("unavailable"))
            if not live or self._stopping.is_set():
                for item in live:
                    item.done(Reply("unavailable"))
                return
            seq_floor, id_floor = self._replica.floors()
            try:
                pipe = self._writer.pipeline(transaction=False)
                for item in live:
                    c = item.command
                    args: list[Any] = [epoch, item.server, item.op, c.kind, seq_floor, id_floor]
                    args += [self._retention, self._history, OP_TTL]
                    args += [c.identity, c.token, c.target, c.body, lease_end]
                    pipe.evalsha(self._shas[ROOM_SCRIPT], 1, self._prefix, *args)
                results = pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Sent again with the same operation ids: nothing runs twice.
                logger.debug("Redis writer: %s; sending %d again", exc, len(live))
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                batch = live
                continue
            if any(isinstance(result, NoScriptError) for result in results):
                self._reload()  # Redis restarted: its scripts are gone
                batch = live
                continue
            for item, result in zip(live, results, strict=True):
                if isinstance(result, Exception):
                    logger.error("Redis refused a %s: %s", item.command.kind, result)
                    item.done(Reply("unavailable"))
                else:
                    item.done(Reply(result[0].decode(), int(result[1])))
            return

    # -- the reader -----------------------------------------------------------------------------

    def _read_loop(self) -> None:
        assert self._replica is not None
        pause = 0.01
        log = self._prefix + "log"
        while not self._stopping.is_set():
            with self._lock:
                if self._server is None:
                    self._registered.wait(0.25)
                    continue
                server, position = self._server, self._position
            try:
                reply: Any = self._reader.xread(
                    {log: f"{position}-0"}, count=READ_COUNT, block=self._block_ms
                )
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.debug("Redis reader: %s", exc)
                self._stopping.wait(pause)
                pause = min(pause * 2, 0.5)
                continue
            pause = 0.01
            if not reply:
                continue
            events = _events(reply[0][1])
            gap = _gap(position, events)
            with self._lock:
                if self._server != server:
                    continue  # fenced meanwhile: those belong to the old registration
                if gap is None:
                    self._position = events[-1].seq if events else position
            if gap is not None:
                self._fence(f"This server fell behind the room ({gap}).")
                continue
            self._replica.apply(server, events)

    # -- helpers ------------------------------------------------------------------------------

    def _load_scripts(self) -> None:
        if not self._shas:
            self._reload()

    def _reload(self) -> None:
        for script in (ROOM_SCRIPT, REGISTER_SCRIPT, HEARTBEAT_SCRIPT, REAP_SCRIPT):
            self._shas[script] = self._writer.script_load(script)

    def _call(self, client: redis.Redis, script: str, args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self._shas[script], 1, self._prefix, *args)
        except NoScriptError:
            self._reload()
            return client.evalsha(self._shas[script], 1, self._prefix, *args)


UNREACHABLE_WHY = "This server lost its connection to the room's other servers"


def _client(url: str, *, timeout: float) -> redis.Redis:
    """A client with no retries of its own: the backplane retries, with operation ids."""
    return redis.Redis.from_url(
        url,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:120] or type(exc).__name__


def _events(entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> list[Event]:
    events = []
    for entry_id, fields in entries:
        seq = int(entry_id.split(b"-")[0])
        try:
            events.append(
                Event(
                    seq,
                    fields[b"k"].decode(),
                    int(fields[b"t"]) / 1000,
                    fields[b"s"].decode(),
                    int(fields[b"o"]),
                    json.loads(fields[b"b"]),
                    fields[b"i"].decode(),
                    fields[b"j"].decode(),
                    int(fields.get(b"m", 0)),
                )
            )
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            # Kept in the order (its position is seen), applied by nobody.
            logger.error("The room's log has an entry this server cannot read: %r", exc)
            events.append(Event(seq, "", 0.0, "", 0, {}))
    return events


def _gap(position: int, events: Sequence[Event]) -> str | None:
    """Why ``events`` do not follow ``position`` one by one, if they do not."""
    expected = position + 1
    for event in events:
        if event.seq != expected:
            return f"expected event {expected}, read {event.seq}"
        expected += 1
    return None


def _holders(flat: Sequence[bytes], ops: set[str]) -> list[Holder]:
    holders = []
    for identity_raw, value in zip(flat[::2], flat[1::2], strict=True):
        identity = identity_raw.decode()
        server, token, since, body = value.decode().split("|", 3)
        info = json.loads(body)
        holders.append(
            Holder(
                identity,
                server,
                int(token),
                str(info["n"]),
                str(info["h"]),
                bool(info["x"]),
                int(since) / 1000,
                identity in ops,
            )
        )
    return holders


def _history(entries: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[ChatMessage]:
    """The history stream's entries (newest first, as a script returns them), oldest first."""
    messages = []
    for entry_id, flat in reversed(entries):
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        body = json.loads(fields[b"b"])
        messages.append(
            ChatMessage(
                int(entry_id.split(b"-")[0]),
                str(body["n"]),
                str(body["x"]),
                int(fields[b"t"]) / 1000,
                bool(body["a"]),
            )
        )
    return messages
