"""Fingerprints, invites and safety words (PROTOCOL.md, "Encryption")."""

from __future__ import annotations

import base64
import hashlib

import pytest

from server.protocol.fingerprint import (
    Invite,
    fingerprint,
    invite,
    invite_code,
    is_fingerprint,
    parse_invite,
    safety_words,
)

CERT = b"a certificate's DER bytes"
FP = "sha256:" + hashlib.sha256(CERT).hexdigest()
OTHER = fingerprint(b"another certificate")


def test_fingerprint_is_sha256_of_the_der_bytes() -> None:
    assert fingerprint(CERT) == FP
    assert is_fingerprint(FP)
    assert not is_fingerprint(FP.upper())
    assert not is_fingerprint(FP[:-1])


def test_invite_code_is_base32_of_the_first_16_bytes() -> None:
    expected = base64.b32encode(hashlib.sha256(CERT).digest()[:16]).decode().rstrip("=").lower()
    assert invite_code(FP) == expected
    assert len(expected) == 26
    grouped = invite_code(FP, group=4)
    assert grouped.replace("-", "") == expected
    assert all(len(part) == 4 for part in grouped.split("-")[:-1])


@pytest.mark.parametrize(
    ("host", "shown"),
    [("192.168.1.7", "192.168.1.7"), ("chat.local", "chat.local"), ("fe80::1", "[fe80::1]")],
)
def test_an_invite_round_trips(host: str, shown: str) -> None:
    text = invite(host, 12345, FP)
    assert text.startswith(f"{shown}:12345#")
    parsed = parse_invite(text)
    assert parsed == Invite(host, 12345, invite_code(FP))
    assert parsed.matches(FP)
    assert not parsed.matches(OTHER)
    assert not parsed.matches("not a fingerprint")


def test_an_invite_is_read_as_people_paste_it() -> None:
    code = invite_code(FP)
    pasted = parse_invite(f"  10.0.0.2:4000#{code.upper()}\n")
    assert pasted is not None and pasted.matches(FP)
    assert parse_invite(f"10.0.0.2:4000#{code[:13]}-{code[13:]}") == pasted


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.2",
        "10.0.0.2:4000",
        "10.0.0.2:4000#",
        "10.0.0.2:4000#abc",  # too short to be 16 bytes
        "10.0.0.2:70000#" + "a" * 26,
        "10.0.0.2:0#" + "a" * 26,
        "10.0.0.2:4000#" + "1" * 26,  # not base32
        "host:4000#" + "a" * 26 + " trailing",
        "x" * 400,
    ],
)
def test_what_is_not_an_invite(text: str) -> None:
    assert parse_invite(text) is None


def test_safety_words_are_the_first_88_bits_in_11_bit_steps() -> None:
    from mnemonic import Mnemonic  # noqa: PLC0415 - the list the words come from

    words = Mnemonic("english").wordlist
    assert len(words) == 2048
    bits = bin(int.from_bytes(hashlib.sha256(CERT).digest(), "big"))[2:].zfill(256)
    expected = tuple(words[int(bits[i * 11 : i * 11 + 11], 2)] for i in range(8))
    assert safety_words(FP) == expected
    assert safety_words(OTHER) != expected
    with pytest.raises(ValueError):
        safety_words("sha256:xyz")
