"""One room served by several servers: this server's replica of it.

How this works (PROTOCOL.md, "Several servers, one room"): a ``SharedRoom``
is a ``Room`` that changes nothing by itself. Its ``join``, ``say``,
``rename``, ``leave``, ``set_op``, ``notice`` and remote kicks check what
this server alone can check (a banned name, a name too long to be anyone's)
and *submit* the change to the backplane (``server.store.backplane``),
which orders it for every server; they return ``None`` and tell the
session how it ended through its ``done``. The backplane's reader thread
then calls ``apply`` with the room's events in order, this server's own
among them, and the room applies each under its lock exactly as a single
server would have: names, the broadcast log, private frames, the history.
So the welcome, the echo and every ``joined``, ``left`` and ``renamed``
are built from this replica, in the log's order, on every server.

Bans are the room's too: one made or lifted here is kept in Redis and
sent as an event, which every other server writes to its own bans.json
(outside the room's lock), and a server that registers learns those in
force from its snapshot. Its present matches are kicked where they are.

The room's users are ``Member``s (this server's connections) and
``Remote``s (another server's, of which it knows the name, address and
whether it came over TLS, from their ``join`` events). A join or rename is
done when its own event is applied (its name is then the room's); a
message is done when the backplane answers (its echo comes with the log).
A leave is submitted and forgotten: the member stops following the log
at once, its name is released when its event comes back.

When the backplane is out of reach for longer than its cut-off, or
disowns this server, ``fence`` closes every local member with a
``shutdown`` saying why and the room refuses hellos with
``room-unavailable``, until ``reset`` gives it a fresh snapshot as a new
server id.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from server.fanout import Outbox
from server.protocol import (
    MAX_NAME_INPUT,
    ChatMessage,
    ErrorCode,
    Joined,
    LeaveReason,
    Left,
    Notice,
    OpChanged,
    ProtocolError,
    RemoteProtocolError,
    Renamed,
    clean_text,
    compact_json,
    encode,
    name_identity,
    show_wire,
)
from server.room import Done, Member, Room, Seat, name_taken_error, no_such_user_error
from server.store.backplane import Backplane, Command, Event, Holder, Kind, Reply, Snapshot
from server.store.bans import Ban, BanStoreError
from server.store.memory import MemoryNames, Roster

logger = logging.getLogger("server")

APPLY_BATCH = 64  # events applied per hold of the room's lock

UNREACHABLE = "This server cannot reach the room's other servers at the moment."


class Remote:
    """A user of the room connected to another server: nothing is queued for it here."""

    __slots__ = ("name", "outbox", "secure", "server", "token")

    def __init__(self, name: str, server: str, token: int, secure: bool) -> None:
        self.name: str | None = name
        self.server = server
        self.token = token
        self.secure = secure
        self.outbox = _NOWHERE

    def notify(self) -> None:
        """Its own server tells it."""


_NOWHERE = Outbox()  # every Remote's: it follows no log and is never read


@dataclass(slots=True)
class _Joining:
    member: Member
    seat: Seat
    done: Done
    left: LeaveReason | None = None  # it left before its join came back


class SharedRoom(Room):
    """A ``Room`` whose changes are ordered by ``backplane``; see the module docstring.

    Takes ``Room``'s keyword arguments. ``start`` registers it with the
    backplane; until then (and while fenced) hellos get ``room-unavailable``.
    """

    def __init__(self, backplane: Backplane, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._backplane = backplane
        self._server: str | None = None  # as registered; None: fenced (or not yet)
        self._why = UNREACHABLE
        self._tokens = itertools.count(1)
        self._token_of: dict[Member, int] = {}  # this server's members, joining or joined
        self._local: dict[int, Member] = {}  # by token: the joined ones
        self._joining: dict[int, _Joining] = {}
        self._renaming: dict[int, Done] = {}
        self._seq = 0  # the last event applied
        recent = self._history.recent()
        self._last_id = recent[-1].message.id if recent else 0

    def start(self) -> None:
        """Register with the backplane and follow the room's log."""
        self._backplane.start(self)

    # -- what sessions call ------------------------------------------------

    def join(
        self, member: Member, name: str, seat: Seat | None = None, done: Done | None = None
    ) -> int | None:
        assert done is not None, "a shared room answers a join later"
        seat = Seat("?", lambda by, message: None) if seat is None else seat
        identity = name_identity(name)
        with self._lock:
            self._admit_name(identity)
            server = self._unavailable_unless_registered()
            token = next(self._tokens)
            self._joining[token] = _Joining(member, seat, done)
            self._token_of[member] = token
        command = Command(Kind.JOIN, self._holder_body(name, member, seat), identity, token)
        self._submit(server, command, lambda reply: self._join_answered(token, name, reply))
        return None

    def leave(
        self,
        member: Member,
        reason: LeaveReason,
        *,
        by: str | None = None,
        message: str | None = None,
    ) -> int | None:
        with self._lock:
            token = self._token_of.pop(member, None)
            if token is None:
                return None
            joining = self._joining.get(token)
            if joining is not None:
                joining.left = reason  # left as soon as its join comes back
                return None
            self._local.pop(token, None)
            self._fanout.leave(member.outbox)  # it is gone for this server at once
            name, server, closed = member.name, self._server, self._closed
        if server is not None and not closed and name is not None:
            # On the way out of a stopping server, its users go in one batch
            # (the backplane's close), not one event each.
            body = compact_json({"r": reason.value, "b": by, "m": message})
            self._submit(server, Command(Kind.LEAVE, body, name_identity(name), token), _ignore)
        return max(0, len(self._names) - 1)  # its name is the room's until its leave comes back

    def rename(self, member: Member, name: str, done: Done | None = None) -> str | None:
        assert done is not None, "a shared room answers a rename later"
        identity = name_identity(name)
        with self._lock:
            old = member.name
            assert old is not None, "only a member can rename"
            self._admit_name(identity)
            server = self._unavailable_unless_registered()
            token = self._local_token(member)
            seat = self._seats[member]
            self._renaming[token] = done
        command = Command(
            Kind.RENAME, self._holder_body(name, member, seat), name_identity(old), token, identity
        )
        self._submit(server, command, lambda reply: self._rename_answered(token, name, reply))
        return None

    def say(
        self,
        member: Member,
        text: str,
        *,
        action: bool = False,
        to: str | None = None,
        file: Any = None,
        done: Done | None = None,
    ) -> int | None:
        assert done is not None, "a shared room answers a message later"
        assert file is None, "a shared room shares no files"
        target = ""
        if to is not None:
            # Longer than any spelling of a name, or no name at all (an empty
            # target is the script's "everyone"): nobody.
            target = "" if len(to) > MAX_NAME_INPUT else name_identity(to)
            if not target:
                raise _no_such_user_say(to)
        with self._lock:
            sender = member.name
            assert sender is not None, "only a member can speak"
            server = self._unavailable_unless_registered()
            token = self._local_token(member)
        body = compact_json({"n": sender, "x": text, "a": action})
        command = Command(Kind.SAY, body, name_identity(sender), token, target)
        self._submit(server, command, lambda reply: done(_said(reply, to)))
        return None

    def set_op(self, name: str, op: bool, by: str | None) -> str | None:
        found = self.seat(name)
        server = self._server
        if found is None or server is None:
            return None
        target = found[0]
        body = compact_json({"b": by})
        self._submit(
            server,
            Command(Kind.OP, body, name_identity(target), target="1" if op else "0"),
            _ignore,
        )
        return target

    def notice(self, text: str, by: str | None) -> None:
        text = clean_text(text)
        server = self._server
        if server is not None:
            self._submit(server, Command(Kind.NOTICE, compact_json({"x": text, "b": by})), _ignore)

    def ban(
        self,
        *,
        name: str | None = None,
        address: str | None = None,
        duration: float | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> Ban:
        ban = super().ban(name=name, address=address, duration=duration, reason=reason, by=by)
        self._share_ban(Kind.BAN, ban)
        return ban

    def unban(self, ban_id: int) -> Ban | None:
        ban = super().unban(ban_id)
        if ban is not None:
            self._share_ban(Kind.UNBAN, ban)
        return ban

    def close(self) -> None:
        super().close()
        self._backplane.close()

    # -- what the backplane calls (its threads) -----------------------------

    def floors(self) -> tuple[int, int]:
        return self._seq, self._last_id

    def reset(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._forget_everyone()
            self._server = snapshot.server
            self._seq = snapshot.seq
            self._last_id = max(self._last_id, snapshot.last_id)
            for holder in snapshot.holders:
                self._seat_remote(holder)
            self._ops_changed()
            recent = self._history.recent()
            newest = recent[-1].message.id if recent else 0
            for message in snapshot.history:
                if message.id > newest:
                    self._history.append(message)
        for body in snapshot.bans:  # bans.json is written outside the room's lock
            self._keep_ban(body)
        logger.info(
            "Joined the shared room as server %s: %d users, at position %d",
            snapshot.server,
            len(snapshot.holders),
            snapshot.seq,
        )

    def fence(self, why: str) -> None:
        with self._lock:
            if self._server is None:
                return
            self._server = None
            self._why = why
            joining = list(self._joining.values())
            renaming = list(self._renaming.values())
            closing = [self._seats[m] for m in self._local.values() if m in self._seats]
            for member in self._local.values():
                self._fanout.leave(member.outbox)
            self._forget_everyone()
        logger.warning("Left the shared room: %s", why)
        error = _unavailable(why)
        for waiting in joining:
            waiting.done(error)
        for done in renaming:
            done(error)
        for seat in closing:
            seat.close(why)

    def apply(self, server: str, events: Sequence[Event]) -> None:
        index = 0
        while index < len(events):
            after: list[Callable[[], None]] = []
            flush = urgent = False
            with self._lock:
                if server != self._server:
                    return  # read before this server was fenced
                # The lock is let go every APPLY_BATCH events, and after each
                # welcome (in a big room, a welcome is the costly part), so
                # that the loops' pulls never wait long for it.
                stop = min(len(events), index + APPLY_BATCH)
                while index < stop:
                    event = events[index]
                    index += 1
                    if event.seq <= self._seq:
                        continue  # a batch read again after a reconnect
                    self._seq = event.seq
                    welcomes = len(self._local)
                    try:
                        wants = self._APPLY[event.kind](self, event, after)
                    except (KeyError, TypeError, ValueError, AttributeError) as exc:
                        # Only a server of another version writes what this
                        # one cannot read: skip it, as every replica does.
                        logger.error("Cannot apply the room's event %s: %r", event.seq, exc)
                        continue
                    if wants is not None:
                        flush = True
                        urgent = urgent or wants
                    if len(self._local) != welcomes:
                        break
            for action in after:
                action()
            if flush:
                self._on_broadcast(urgent)

    # -- applying events (the lock is held) ---------------------------------
    # Each returns None when it logged nothing, else whether to flush at once.

    def _apply_join(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        body = event.body
        name, host, secure = str(body["n"]), str(body["h"]), bool(body["x"])
        joining = self._joining.pop(event.token, None) if event.server == self._server else None
        owner: Member
        if joining is None:
            owner = Remote(name, event.server, event.token, secure)
            seat = Seat(host, self._remote_kick(event.identity), secure=secure, since=event.ts)
        else:
            owner, seat = joining.member, joining.seat
            seat.since, seat.op = event.ts, False
        if not self._names.claim(event.identity, name, owner):
            logger.error("The room's log gave %s a name this server thinks taken", show_wire(name))
            if joining is not None:
                after.append(lambda: joining.done(_unavailable(UNREACHABLE)))
            return None
        if self._insecure is not None and not secure:
            self._insecure.add(event.identity, name)
        self._seats[owner] = seat
        urgent = self._broadcast(Joined(name, event.ts))
        if joining is None:
            return urgent
        member = joining.member
        recent = self._history.recent()
        try:
            welcome = self._welcome(name, secure, len(recent))
        except RemoteProtocolError as exc:
            refused: ProtocolError = exc
            after.append(lambda: joining.done(refused))
            joining.left = LeaveReason.ERROR
        else:
            member.name = name
            self._local[event.token] = member
            outbox = member.outbox
            self._fanout.join(outbox)
            outbox.put(self._log, welcome, reply=True)  # its session waits: see Outbox
            for entry in recent:
                outbox.put(self._log, entry.frame, reply=True)
            after.append(lambda: joining.done(None))
            after.append(member.notify)
        if joining.left is not None:
            # It went while its join was on its way: it leaves now.
            member.name = name
            server = self._server
            assert server is not None
            body = compact_json({"r": joining.left.value, "b": None, "m": None})
            command = Command(Kind.LEAVE, body, event.identity, event.token)
            after.append(lambda: self._submit(server, command, _ignore))
            self._local.pop(event.token, None)
            self._fanout.leave(member.outbox)
        return urgent

    def _apply_leave(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        body = event.body
        reason = LeaveReason(body["r"])
        return self._depart(event.identity, reason, event.ts, body.get("b"), body.get("m"))

    def _apply_gone(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        if event.server == self._server:
            # This server's users were announced gone: it was taken for dead.
            # They are closed too, though the departures below forget them.
            why = "This server was out of touch with the room."
            seats = [self._seats[m] for m in self._local.values() if m in self._seats]
            after.append(lambda: self.fence(why))
            after.extend(functools.partial(seat.close, why) for seat in seats)
        urgent: bool | None = None
        for identity in event.body:
            done = self._depart(str(identity), LeaveReason.DISCONNECTED, event.ts, None, None)
            if done is not None:
                urgent = bool(urgent) or done
        return urgent

    def _depart(
        self,
        identity: str,
        reason: LeaveReason,
        ts: float,
        by: object,
        message: object,
    ) -> bool | None:
        owner = self._names.owner_of(identity)
        if owner is None or owner.name is None:
            return None
        name = owner.name
        self._names.release(identity, owner)
        if self._insecure is not None and not owner.secure:
            self._insecure.remove(identity, name)
        seat = self._seats.pop(owner, None)
        if seat is not None and seat.op:
            self._ops_changed()
        if not isinstance(owner, Remote):
            token = self._token_of.pop(owner, None)
            if token is not None:
                self._local.pop(token, None)
            self._fanout.leave(owner.outbox)
        return self._broadcast(
            Left(
                name,
                reason,
                ts,
                by=None if by is None else str(by),
                message=None if message is None else str(message),
            )
        )

    def _apply_rename(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        owner = self._names.owner_of(event.identity)
        done = self._renaming.pop(event.token, None) if event.server == self._server else None
        if owner is None or owner.name is None:
            return None
        old, name = owner.name, str(event.body["n"])
        if not self._names.rename(event.identity, event.target, name, owner):
            logger.error("The room's log renamed %s to a name this server thinks taken", old)
            return None
        if self._insecure is not None and not owner.secure:
            self._insecure.remove(event.identity, old)
            self._insecure.add(event.target, name)
        owner.name = name
        seat = self._seats.get(owner)
        if seat is not None and seat.op:
            self._ops_changed()
        if done is not None:
            after.append(lambda: done(None))
        return self._broadcast(Renamed(old, name, event.ts))

    def _apply_say(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        body = event.body
        self._last_id = max(self._last_id, event.msg_id)
        sender, text, action = str(body["n"]), str(body["x"]), bool(body["a"])
        if not event.target:
            return self._post(ChatMessage(event.msg_id, sender, text, event.ts, action))
        recipient = self._names.owner_of(event.target)
        speaker = self._names.owner_of(event.identity)
        if recipient is None or recipient.name is None:
            return None
        frame = encode(ChatMessage(event.msg_id, sender, text, event.ts, action, recipient.name))
        for owner in {id(o): o for o in (speaker, recipient) if o is not None}.values():
            if not isinstance(owner, Remote):
                owner.outbox.put(self._log, frame)
                after.append(owner.notify)
        return None

    def _apply_op(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        owner = self._names.owner_of(event.identity)
        if owner is None or owner.name is None:
            return None
        op = event.target == "1"
        seat = self._seats[owner]
        if seat.op != op:
            seat.op = op
            self._ops_changed()
        by = event.body.get("b")
        return self._broadcast(
            OpChanged(owner.name, op, event.ts, by=None if by is None else str(by)), urgent=True
        )

    def _apply_notice(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        by = event.body.get("b")
        notice = Notice(str(event.body["x"]), event.ts, by=None if by is None else str(by))
        return self._broadcast(notice, urgent=True)

    def _apply_kick(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        owner = self._names.owner_of(event.identity)
        if owner is not None and not isinstance(owner, Remote):
            seat = self._seats[owner]
            by = event.body.get("b")
            message = str(event.body["m"])
            after.append(lambda: seat.kick(None if by is None else str(by), message))
        return None

    def _apply_ban(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        if event.server != self._server:  # the server that made it has it
            after.append(lambda: self._keep_ban(event.body))
        return None

    def _apply_unban(self, event: Event, after: list[Callable[[], None]]) -> bool | None:
        if event.server != self._server:
            after.append(lambda: self._lift_ban(event.body))
        return None

    _APPLY: ClassVar[
        dict[str, Callable[[SharedRoom, Event, list[Callable[[], None]]], bool | None]]
    ] = {
        Kind.JOIN: _apply_join,
        Kind.LEAVE: _apply_leave,
        Kind.GONE: _apply_gone,
        Kind.RENAME: _apply_rename,
        Kind.SAY: _apply_say,
        Kind.OP: _apply_op,
        Kind.NOTICE: _apply_notice,
        Kind.KICK: _apply_kick,
        Kind.BAN: _apply_ban,
        Kind.UNBAN: _apply_unban,
    }

    # -- helpers -------------------------------------------------------------

    def _submit(self, server: str, command: Command, done: Callable[[Reply], None]) -> None:
        if not self._backplane.submit(server, command, done):
            done(Reply("unavailable"))

    def _unavailable_unless_registered(self) -> str:
        """This server's id in the room; ``room-unavailable`` if it has none. Lock held."""
        if self._server is None:
            raise _unavailable(self._why)
        return self._server

    def _holder_body(self, name: str, member: Member, seat: Seat) -> str:
        """What a join or rename tells the room of its holder: name, address, TLS."""
        secure = self._insecure is not None and member.secure
        return compact_json({"n": name, "h": seat.host, "x": secure})

    def _local_token(self, member: Member) -> int:
        """``member``'s token in this registration; ``room-unavailable`` if it
        joined before a fence (its ``shutdown`` is on its way). Lock held."""
        token = self._token_of.get(member)
        if token is None or token not in self._local:
            raise _unavailable(self._why)
        return token

    def _join_answered(self, token: int, name: str, reply: Reply) -> None:
        if reply.ok:
            return  # done when its event is applied
        with self._lock:
            joining = self._joining.pop(token, None)
            if joining is not None:
                self._token_of.pop(joining.member, None)
        if joining is not None:
            joining.done(_name_refused(reply, name))

    def _rename_answered(self, token: int, name: str, reply: Reply) -> None:
        if reply.ok:
            return  # done when its event is applied
        with self._lock:
            done = self._renaming.pop(token, None)
        if done is not None:
            done(_name_refused(reply, name))

    def _share_ban(self, kind: str, ban: Ban) -> None:
        """Tell the other servers of a ban made or lifted here (by its name and address)."""
        server = self._server
        if server is None:
            logger.warning("A ban changed while the room was out of reach: this server only")
            return
        body = compact_json(
            {"n": ban.name, "i": ban.identity, "a": ban.address, "r": ban.reason,
             "b": ban.by, "e": ban.expires}
        )  # fmt: skip
        key = f"{ban.identity or ''}|{ban.address or ''}"
        self._submit(server, Command(kind, body, key), _ignore)

    def _keep_ban(self, body: Any) -> None:
        """Another server's ban, kept here too (bans.json: never under the room's lock)."""
        try:
            self.bans.keep(
                name=body["n"],
                identity=body["i"],
                address=body["a"],
                expires=body["e"],
                reason=body["r"],
                by=body["b"],
            )
        except (BanStoreError, ValueError, KeyError, TypeError) as exc:
            logger.error("Cannot keep the room's ban on %s: %s", body, exc)

    def _lift_ban(self, body: Any) -> None:
        """Another server lifted a ban: lift its twin here."""
        try:
            for ban in self.bans.matching(body["i"], body["a"]):
                self.bans.remove(ban.id)
        except (BanStoreError, ValueError, KeyError, TypeError) as exc:
            logger.error("Cannot lift the room's ban on %s: %s", body, exc)

    def _remote_kick(self, identity: str) -> Callable[[str | None, str], None]:
        """A remote user's seat's kick: its own server removes it."""

        def kick(by: str | None, message: str) -> None:
            server = self._server
            if server is not None:
                command = Command(Kind.KICK, compact_json({"b": by, "m": message}), identity)
                self._submit(server, command, _ignore)

        return kick

    def _seat_remote(self, holder: Holder) -> None:
        owner = Remote(holder.name, holder.server, holder.token, holder.secure)
        if not self._names.claim(holder.identity, holder.name, owner):
            return
        if self._insecure is not None and not holder.secure:
            self._insecure.add(holder.identity, holder.name)
        kick = self._remote_kick(holder.identity)
        self._seats[owner] = Seat(holder.host, kick, holder.secure, holder.since, holder.op)

    def _forget_everyone(self) -> None:
        """Drop every user, local or not: the snapshot or the fence says who is left."""
        self._names = MemoryNames()
        self._insecure = None if self._insecure is None else Roster()
        self._seats.clear()
        self._token_of.clear()
        self._local.clear()
        self._joining.clear()
        self._renaming.clear()
        self._ops_changed()


def _ignore(reply: Reply) -> None:
    if not reply.ok and reply.status != "gone":
        logger.info("The room did not take a change: %s", reply.status)


def _unavailable(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.ROOM_UNAVAILABLE, why)


def _refused(reply: Reply) -> ProtocolError:
    """What a session is told of a change the room did not take (not a name taken)."""
    if reply.status in {"unavailable", "gone"}:
        return _unavailable(UNREACHABLE)
    return RemoteProtocolError(ErrorCode.SERVER_FULL, "The room is busy; try again later.")


def _name_refused(reply: Reply, name: str) -> ProtocolError:
    """What a join or rename to ``name`` the room did not take is told."""
    return name_taken_error(name) if reply.status == "name-taken" else _refused(reply)


def _no_such_user_say(to: str) -> RemoteProtocolError:
    error = no_such_user_error(to)
    error.in_reply_to = "say"
    return error


def _said(reply: Reply, to: str | None) -> ProtocolError | None:
    if reply.ok:
        return None
    if reply.status == "no-such-user" and to is not None:
        return _no_such_user_say(to)
    return _refused(reply)
