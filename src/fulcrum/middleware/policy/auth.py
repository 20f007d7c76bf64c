"""HTTP Basic authentication (RFC 7617) against bcrypt hashes, with a cache so bcrypt runs rarely.

A bcrypt check takes tens of milliseconds by design, far too long for the
event loop, so checking is split in two: ``check_cached`` answers on the loop
when the answer is known, ``check_slow`` runs bcrypt (in a thread) when not.
The cache never holds a password: its keys are HMACs under a random key that
lives only in this object.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping

import bcrypt

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_PASSWORD = 72  # bcrypt reads no further; bcrypt>=5 refuses longer input instead of truncating
_DEFAULT_COST = 12

CACHE_SIZE = 1024
FAILURE_TTL_S = 60.0


def is_bcrypt_hash(value: str) -> bool:
    """Whether ``value`` looks like a bcrypt hash: ``$2a$``, ``$2b$`` or ``$2y$``, cost 04-31, 53 more characters."""
    return _BCRYPT.fullmatch(value) is not None


def _dummy_hash(cost: int) -> bytes:
    # A random salt with an arbitrary checksum: checkpw does the full work, then never matches.
    salt: bytes = bcrypt.gensalt(rounds=cost)
    return salt + b"." * 31


class BasicAuth:
    """Users and their bcrypt hashes for one realm, with the cache of recent answers.

    Successes are cached until the object is dropped (a config reload builds
    a new one), failures for ``FAILURE_TTL_S``; each kind in its own table of
    at most ``CACHE_SIZE`` entries, oldest dropped first, so a flood of wrong
    passwords cannot push out the users who got theirs right. An unknown user
    costs one bcrypt check against a dummy hash of the first user's cost, so
    the time taken does not tell whether a user exists. Methods may be called
    from the loop and from worker threads at once.
    """

    __slots__ = ("_bad", "_challenge", "_clock", "_dummy", "_good", "_key", "_lock", "_users", "realm")

    def __init__(self, realm: str, users: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        if _CONTROL.search(realm):
            raise ValueError(f"the realm must not contain control characters, got {realm!r}")
        for user, hashed in users.items():
            if not is_bcrypt_hash(hashed):
                raise ValueError(f"the password of {user!r} must be a bcrypt hash ($2b$...)")
        self.realm = realm
        self._users = {user: hashed.encode("ascii") for user, hashed in users.items()}
        first = next(iter(users.values()), None)
        self._dummy = _dummy_hash(int(first[4:6]) if first else _DEFAULT_COST)
        quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
        self._challenge = f'Basic realm="{quoted}", charset="UTF-8"'
        self._clock = clock
        self._key = secrets.token_bytes(32)
        # digest -> when the answer is forgotten; insertion order is age.
        self._good: dict[bytes, float] = {}
        self._bad: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401 answer."""
        return self._challenge

    @staticmethod
    def parse(authorization: str | None) -> tuple[str, str] | None:
        """User and password from an ``Authorization: Basic ...`` value; None when absent or malformed.

        The credentials are decoded as UTF-8, or as latin-1 when they are not
        UTF-8 (older clients). Control characters are refused (RFC 7617).
        """
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "basic" or not token:
            return None
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        user, colon, password = text.partition(":")
        if not colon or _CONTROL.search(text):
            return None
        return user, password

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.digest(self._key, f"{user}\0{password}".encode(), "sha256")

    def check_cached(self, user: str, password: str) -> bool | None:
        """True or False when the answer is cached, None when ``check_slow`` must decide."""
        if "\0" in user:  # would make the cache key ambiguous; parse never returns one
            return False
        # Dict lookups compare HMACs an attacker cannot compute, so their timing reveals nothing.
        digest = self._digest(user, password)
        with self._lock:
            if digest in self._good:
                return True
            forget_at = self._bad.get(digest)
            if forget_at is None:
                return None
            if self._clock() < forget_at:
                return False
            del self._bad[digest]
            return None

    def check_slow(self, user: str, password: str) -> bool:
        """Check with bcrypt (blocking for tens of milliseconds: run it in a thread) and cache the answer."""
        if "\0" in user:
            return False
        secret = password.encode()[:_MAX_PASSWORD]
        stored = self._users.get(user)
        if stored is None:
            bcrypt.checkpw(secret, self._dummy)
            ok = False
        else:
            ok = bcrypt.checkpw(secret, stored)
        digest = self._digest(user, password)
        with self._lock:
            if ok:
                _remember(self._good, digest, math.inf)
            else:
                _remember(self._bad, digest, self._clock() + FAILURE_TTL_S)
        return ok


def _remember(table: dict[bytes, float], digest: bytes, forget_at: float) -> None:
    table.pop(digest, None)
    if len(table) >= CACHE_SIZE:
        del table[next(iter(table))]
    table[digest] = forget_at
