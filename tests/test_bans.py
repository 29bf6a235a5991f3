"""The ban store (server/store/bans.py) and the password checks (server/passwords.py),
without a server: a fake clock, a temporary data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.passwords import GuessCounter, Secret, loopback
from server.store.bans import BANS_FILE, BanStore, BanStoreError, address_group, parse_network


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("host", "group"),
    [
        ("192.168.1.7", "192.168.1.7/32"),
        ("::ffff:192.168.1.7", "192.168.1.7/32"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
    ],
)
def test_address_groups(host: str, group: str) -> None:
    assert str(address_group(host)) == group


def test_a_host_name_is_no_address() -> None:
    assert address_group("example.org") is None


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.0.0.9", "10.0.0.9/32"),
        ("10.0.0.9/8", "10.0.0.0/8"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
    ],
)
def test_parse_network(text: str, network: str) -> None:
    assert str(parse_network(text)) == network


@pytest.mark.parametrize("text", ["", "bob", "10.0.0.0/33", "1.2.3", "10.0.0.1/x"])
def test_parse_network_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_network(text)


def test_matching_by_address_prefix_and_name() -> None:
    store = BanStore(clock=Clock())
    store.add(address="192.168.1.0/24")
    store.add(address="2001:db8::5")
    store.add(identity="mallory", name="Mallory")
    assert store.match_address("192.168.1.200") is not None
    assert store.match_address("::ffff:192.168.1.3") is not None
    assert store.match_address("192.168.2.1") is None
    assert store.match_address("2001:db8::ffff:1") is not None  # the same /64
    assert store.match_address("2001:db8:0:1::1") is None
    assert store.match_address("not an address") is None
    assert store.match_name("mallory") is not None
    assert store.match_name("alice") is None


def test_expired_bans_are_pruned_and_dropped_from_the_file(tmp_path: Path) -> None:
    clock = Clock()
    store = BanStore.in_folder(tmp_path, clock)
    store.add(address="10.0.0.1", duration=60)
    store.add(identity="eve", name="eve")
    assert store.match_address("10.0.0.1") is not None
    clock.now += 60
    assert store.match_address("10.0.0.1") is None
    assert [b.identity for b in store.in_force()] == ["eve"]
    store.add(identity="bob", name="bob")  # the next write leaves the expired one out
    saved = json.loads((tmp_path / BANS_FILE).read_text(encoding="utf-8"))
    assert [b.get("identity") for b in saved["bans"]] == ["eve", "bob"]


def test_the_file_is_replaced_whole_and_reloaded(tmp_path: Path) -> None:
    clock = Clock()
    store = BanStore.in_folder(tmp_path, clock)
    first = store.add(identity="x", name="X", reason="r", by="alice", duration=100)
    store.add(address="10.0.0.0/8")
    assert store.remove(2) is not None
    assert store.remove(2) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [BANS_FILE]  # no temporary left
    again = BanStore.in_folder(tmp_path, clock)
    assert again.in_force() == [first]
    assert again.add(identity="y").id == 3  # ids are never reused


def test_a_ban_expired_while_the_server_was_down_is_gone(tmp_path: Path) -> None:
    clock = Clock()
    BanStore.in_folder(tmp_path, clock).add(identity="x", duration=10)
    clock.now += 11
    assert BanStore.in_folder(tmp_path, clock).in_force() == []


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 2, "next_id": 1, "bans": []}',
        '{"version": 1, "bans": []}',
        '{"version": 1, "next_id": 1, "bans": [{"id": 1}]}',
        '{"version": 1, "next_id": 1, "bans": [{"id": 1, "created": 1}]}',
        '{"version": 1, "next_id": 1, "bans": [{"id": 1, "created": 1, "address": "x"}]}',
        '{"version": 1, "next_id": 1, "bans": [{"id": "1", "created": 1, "identity": "x"}]}',
    ],
)
def test_a_damaged_file_refuses_to_start(tmp_path: Path, text: str) -> None:
    (tmp_path / BANS_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(BanStoreError, match="bans file"):
        BanStore.in_folder(tmp_path)


def test_a_ban_that_cannot_be_written_is_not_made(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    store = BanStore.in_folder(folder)
    folder.write_text("", encoding="utf-8")  # where the folder should be made
    with pytest.raises(BanStoreError):
        store.add(identity="x")
    assert store.in_force() == []


def test_the_secret_keeps_no_password() -> None:
    secret = Secret.from_password("hunter2")
    assert secret.check("hunter2")
    assert not secret.check("hunter3") and not secret.check("")
    assert secret.phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "hunter2" not in repr(secret) and "hunter2" not in secret.phc
    assert not secret.check("\ud800")  # a lone surrogate from JSON is only wrong


def test_guess_counter_refills_and_exempts() -> None:
    counter = GuessCounter(burst=2, refill=10.0, exempt=loopback)
    counter.charge("10.0.0.1", 0.0)
    assert counter.retry_after("10.0.0.1", 0.0) is None
    counter.charge("10.0.0.1", 0.0)
    assert counter.retry_after("10.0.0.1", 0.0) == pytest.approx(10.0)
    assert counter.retry_after("10.0.0.1", 5.0) == pytest.approx(5.0)
    assert counter.retry_after("10.0.0.1", 10.0) is None
    counter.charge("2001:db8::1", 0.0)
    counter.charge("2001:db8::2", 0.0)  # the same /64
    assert counter.retry_after("2001:db8::3", 0.0) is not None
    for _ in range(5):
        counter.charge("127.0.0.1", 0.0)
        counter.charge("::1", 0.0)
    assert counter.retry_after("127.0.0.1", 0.0) is None
    assert counter.retry_after("::1", 0.0) is None


def test_a_ban_from_another_server_is_kept_once_with_its_own_end(tmp_path: Path) -> None:
    now = [1000.0]
    store = BanStore(tmp_path / BANS_FILE, clock=lambda: now[0])
    fields = {"name": "Bob", "identity": "bob", "reason": "flood", "by": "alice"}
    kept = store.keep(address="10.0.0.7", expires=1600.0, **fields)
    assert kept is not None and kept.expires == 1600.0 and kept.address == "10.0.0.7/32"
    assert store.keep(address="10.0.0.7/32", expires=1600.0, **fields) is None  # once
    assert store.keep(address=None, expires=None, **fields) is not None  # another key
    assert store.keep(address="10.0.0.8", expires=999.0, **fields) is None  # ended
    assert [b.id for b in store.matching("bob", "10.0.0.7")] == [kept.id]
    assert store.matching("bob", "10.0.0.9") == []
    assert len(BanStore(tmp_path / BANS_FILE, clock=lambda: now[0]).in_force()) == 2  # written
