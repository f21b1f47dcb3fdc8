"""Key generation, shape and hashing: what makes a leaked database useless to an attacker."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

import pytest

from services.auth import keys
from services.auth.keys import KeyHasher, base62, generate_key, looks_like_key, visible_prefix
from services.auth.sessions import new_token

SECRET = "a-server-secret-of-enough-length"


def _base62_value(digits: str) -> int:
    value = 0
    for digit in digits:
        value = value * 62 + keys.BASE62_ALPHABET.index(digit)
    return value


def test_generated_keys_are_kp_live_and_43_base62_characters() -> None:
    for _ in range(200):
        plaintext = generate_key().plaintext
        assert re.fullmatch(r"kp_live_[0-9A-Za-z]{43}", plaintext), plaintext
        assert looks_like_key(plaintext)


def test_the_body_encodes_32_random_bytes_from_the_secrets_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requested: list[int] = []

    def token_bytes(count: int) -> bytes:
        requested.append(count)
        return bytes(range(200, 200 + count))

    monkeypatch.setattr(keys.secrets, "token_bytes", token_bytes)

    body = generate_key().plaintext.removeprefix("kp_live_")

    assert requested == [32]
    assert _base62_value(body) == int.from_bytes(bytes(range(200, 232)), "big")


def test_keys_do_not_repeat() -> None:
    plaintexts = {generate_key().plaintext for _ in range(2_000)}
    assert len(plaintexts) == 2_000


@pytest.mark.parametrize("value", [0, 1, 61, 62, 2**255, 2**256 - 1])
def test_base62_round_trips_every_256_bit_value_at_fixed_width(value: int) -> None:
    digits = base62(value, 43)
    assert len(digits) == 43
    assert _base62_value(digits) == value


def test_base62_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        base62(62**43, 43)


def test_visible_prefix_is_kp_live_plus_a_few_characters() -> None:
    plaintext = generate_key().plaintext
    prefix = visible_prefix(plaintext)
    assert prefix == plaintext[:12]
    assert prefix.startswith("kp_live_")
    assert generate_key().plaintext != plaintext


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "kp_live_",
        "kp_live_" + "a" * 42,
        "kp_live_" + "a" * 44,
        "kp_test_" + "a" * 43,
        "KP_LIVE_" + "a" * 43,
        "kp_live_" + "a" * 42 + "-",
        "kp_live_" + "a" * 42 + "_",
        "kp_live_" + "a" * 42 + "é",
        "kp_live_" + "a" * 42 + "\n",
        " kp_live_" + "a" * 42,
        "Bearer kp_live_" + "a" * 43,
    ],
)
def test_strings_not_shaped_like_keys_are_recognised(candidate: str) -> None:
    assert not looks_like_key(candidate)


def test_huge_strings_are_rejected_without_scanning_them() -> None:
    huge = "kp_live_" + "a" * 50_000_000
    started = time.perf_counter()
    assert not looks_like_key(huge)
    assert time.perf_counter() - started < 0.01


def test_hash_is_hmac_sha256_under_the_server_secret() -> None:
    plaintext = generate_key().plaintext
    digest = KeyHasher(SECRET).hash(plaintext)

    assert digest == hmac.new(SECRET.encode(), plaintext.encode(), hashlib.sha256).digest()
    assert len(digest) == 32
    assert KeyHasher(SECRET).hash(plaintext) == digest, "stable across instances and restarts"
    assert KeyHasher(SECRET + "!").hash(plaintext) != digest
    assert hashlib.sha256(plaintext.encode()).digest() != digest


def test_a_short_server_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        KeyHasher("too-short")


# --- playground keys ------------------------------------------------------------------------------


def test_a_playground_key_is_shaped_like_any_key_and_the_same_for_its_session() -> None:
    token = new_token().plaintext
    key = KeyHasher(SECRET).playground_key(token)

    assert looks_like_key(key.plaintext)
    assert key.visible_prefix == key.plaintext[:12]
    assert KeyHasher(SECRET).playground_key(token) == key, "stable across instances and restarts"


def test_a_playground_key_is_derived_from_the_token_under_its_own_key() -> None:
    token = new_token().plaintext
    key = KeyHasher(SECRET).playground_key(token).plaintext
    own_key = hmac.new(SECRET.encode(), keys.PLAYGROUND_PURPOSE, hashlib.sha256).digest()
    body = hmac.new(own_key, token.encode(), hashlib.sha256).digest()

    assert _base62_value(key.removeprefix("kp_live_")) == int.from_bytes(body, "big")
    # Not the stored hash's HMAC: the two uses of the secret never meet.
    assert body != KeyHasher(SECRET).hash(token)


def test_playground_keys_differ_by_session_and_by_secret() -> None:
    tokens = [new_token().plaintext for _ in range(500)]
    derived = {KeyHasher(SECRET).playground_key(token).plaintext for token in tokens}
    assert len(derived) == 500
    assert KeyHasher(SECRET + "!").playground_key(tokens[0]).plaintext not in derived
