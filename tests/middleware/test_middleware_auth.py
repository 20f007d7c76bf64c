"""Basic authentication: header parsing, the challenge, bcrypt checks and their cache."""

from __future__ import annotations

import base64
import time

import bcrypt
import pytest

from fulcrum.middleware.policy import auth
from fulcrum.middleware.policy.auth import BasicAuth, is_bcrypt_hash

# Cost 4, the least bcrypt allows, keeps the suite fast.
ALICE = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()
BOB = bcrypt.hashpw("pässwörd".encode(), bcrypt.gensalt(4)).decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def basic(credentials: bytes, scheme: str = "Basic") -> str:
    return f"{scheme} {base64.b64encode(credentials).decode()}"


@pytest.mark.parametrize("value", [ALICE, "$2a$10$" + "a" * 53, "$2y$31$" + "./AZaz09" * 6 + "abcde"])
def test_is_bcrypt_hash(value: str) -> None:
    assert is_bcrypt_hash(value)


@pytest.mark.parametrize(
    "value",
    ["", "secret", "$2x$10$" + "a" * 53, "$2b$03$" + "a" * 53, "$2b$32$" + "a" * 53, "$2b$10$" + "a" * 52,
     "$2b$10$" + "a" * 54, "$2b$10$" + "a" * 52 + "+", "$2b$1$" + "a" * 53, "$1$" + "a" * 57],
)
def test_is_not_bcrypt_hash(value: str) -> None:
    assert not is_bcrypt_hash(value)


def test_challenge_escapes_the_realm() -> None:
    assert BasicAuth("api", {}).challenge() == 'Basic realm="api", charset="UTF-8"'
    assert BasicAuth('say "hi" \\o/', {}).challenge() == 'Basic realm="say \\"hi\\" \\\\o/", charset="UTF-8"'


@pytest.mark.parametrize("realm", ["a\r\nSet-Cookie: x=1", "tab\there", "nul\0"])
def test_realm_with_control_characters_is_refused(realm: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        BasicAuth(realm, {})


def test_users_must_have_bcrypt_hashes() -> None:
    with pytest.raises(ValueError, match="the password of 'carol' must be a bcrypt hash"):
        BasicAuth("api", {"alice": ALICE, "carol": "plaintext"})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic(b"alice:wonderland"), ("alice", "wonderland")),
        (basic(b"alice:wonderland", "basic"), ("alice", "wonderland")),
        (basic(b"alice:wonderland", "BASIC"), ("alice", "wonderland")),
        ("Basic   YWxpY2U6d29uZGVybGFuZA==  ", ("alice", "wonderland")),
        ("Basic YWxpY2U6d29uZGVybGFuZA", ("alice", "wonderland")),  # padding left off
        (basic(b"alice:"), ("alice", "")),
        (basic(b":pw"), ("", "pw")),
        (basic(b"alice:a:b:c"), ("alice", "a:b:c")),  # only the first colon splits
        (basic("bob:pässwörd".encode()), ("bob", "pässwörd")),
        (basic("bob:pässwörd".encode("latin-1")), ("bob", "pässwörd")),
    ],
)
def test_parse(header: str, expected: tuple[str, str]) -> None:
    assert BasicAuth.parse(header) == expected


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic", "Basic ", "Bearer YWxpY2U6d29uZGVybGFuZA==", "BasicYWxpY2U6d29uZGVybGFuZA==",
     "Basic !!!!", "Basic YWxpY2U6d29uZGVybGFuZA===", "Basic Y", basic(b"no colon"), basic(b"al\nice:pw"),
     basic(b"alice:p\x00w"), basic(b"alice:p\x7fw")],
)
def test_parse_malformed(header: str | None) -> None:
    assert BasicAuth.parse(header) is None


def test_check_slow_then_cached() -> None:
    clock = FakeClock()
    policy = BasicAuth("api", {"alice": ALICE, "bob": BOB}, clock=clock)
    assert policy.check_cached("alice", "wonderland") is None
    assert policy.check_slow("alice", "wonderland") is True
    assert policy.check_cached("alice", "wonderland") is True
    clock.now += 10**6
    assert policy.check_cached("alice", "wonderland") is True  # successes stay
    assert policy.check_cached("bob", "pässwörd") is None
    assert policy.check_slow("bob", "pässwörd") is True


def test_failures_are_cached_for_a_minute() -> None:
    clock = FakeClock()
    policy = BasicAuth("api", {"alice": ALICE}, clock=clock)
    assert policy.check_slow("alice", "guess") is False
    assert policy.check_cached("alice", "guess") is False
    assert policy.check_cached("alice", "wonderland") is None  # another password is another entry
    clock.now += 59.9
    assert policy.check_cached("alice", "guess") is False
    clock.now += 0.1
    assert policy.check_cached("alice", "guess") is None


def test_unknown_user_fails_and_is_cached() -> None:
    policy = BasicAuth("api", {"alice": ALICE})
    assert policy.check_cached("mallory", "wonderland") is None
    assert policy.check_slow("mallory", "wonderland") is False
    assert policy.check_cached("mallory", "wonderland") is False


def test_unknown_user_costs_a_bcrypt_check_of_the_same_cost() -> None:
    slow = bcrypt.hashpw(b"pw", bcrypt.gensalt(10)).decode()
    policy = BasicAuth("api", {"alice": slow})

    def seconds(user: str) -> float:
        best = float("inf")
        for i in range(3):
            start = time.perf_counter()
            policy.check_slow(user, f"wrong{i}")
            best = min(best, time.perf_counter() - start)
        return best

    known, unknown = seconds("alice"), seconds("mallory")
    assert 0.4 < unknown / known < 2.5


def test_no_users_at_all() -> None:
    policy = BasicAuth("api", {})
    assert policy.check_slow("alice", "x") is False


def test_cache_holds_no_plaintext() -> None:
    policy = BasicAuth("api", {"alice": ALICE})
    policy.check_slow("alice", "wonderland")
    policy.check_slow("alice", "guess")
    keys = list(policy._good) + list(policy._bad)
    assert len(keys) == 2
    assert all(len(k) == 32 and b"wonderland" not in k and b"guess" not in k for k in keys)


def test_the_same_credentials_get_a_different_key_in_another_instance() -> None:
    a, b = BasicAuth("api", {"alice": ALICE}), BasicAuth("api", {"alice": ALICE})
    a.check_slow("alice", "wonderland")
    b.check_slow("alice", "wonderland")
    assert a._good.keys() != b._good.keys()


def test_cache_is_bounded_and_failures_do_not_evict_successes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "CACHE_SIZE", 3)
    policy = BasicAuth("api", {"alice": ALICE})
    assert policy.check_slow("alice", "wonderland")
    for i in range(5):
        policy.check_slow("alice", f"guess{i}")
    assert len(policy._bad) == 3
    assert policy.check_cached("alice", "guess0") is None  # the oldest failures went
    assert policy.check_cached("alice", "guess4") is False
    assert policy.check_cached("alice", "wonderland") is True


def test_long_passwords_are_cut_at_72_bytes_like_bcrypt() -> None:
    long = "x" * 100
    hashed = bcrypt.hashpw(long[:72].encode(), bcrypt.gensalt(4)).decode()
    policy = BasicAuth("api", {"alice": hashed})
    assert policy.check_slow("alice", long) is True


def test_nul_in_user_is_refused() -> None:
    policy = BasicAuth("api", {"alice": ALICE})
    assert policy.check_cached("alice\0wonderland", "") is False
    assert policy.check_slow("alice\0wonderland", "") is False
