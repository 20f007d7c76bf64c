"""The Redis state backend (``state: {backend: redis, url}``): I/O only, for several instances behind one name.

Two parts, each with its own connection pool and its own view of whether Redis is reachable:

- ``SharedOverlay`` keeps the runtime changes of the admin API (the overlay of
  ``fulcrum.state.changes`` as plain data) in one Redis hash, an entry per server, with a version,
  and pushes each new version to every instance on a pub/sub channel. One background task does all
  of its I/O: it subscribes, catches up with what is stored, writes the entries of the servers
  changed here and hands the state that results to a callback. For one server the last writer wins.
- ``RedisBuckets`` runs the shared rate limits' token buckets in Redis, atomically in a Lua script
  on Redis's clock (``TIME``: instances' clocks need not agree), so every instance counts against
  one bucket per key; the takes of one turn of the event loop share one script call.

When Redis cannot be reached each instance keeps serving with what it has (its last overlay, the
buckets in its own memory), says so once in the log, reconnects with backoff, and says once when
it is back. Nothing here knows about snapshots, routes or requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from fulcrum.config.state import StateBackend, redact_url

log = logging.getLogger("fulcrum.state")

#: Seconds to connect, and to wait for one reply, before Redis counts as unreachable.
CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 1.0
#: Reconnect delays: from the first to the longest, doubling, with a little jitter.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 3.0
#: Connections per pool; a request needing one more waits for one to be free.
MAX_CONNECTIONS = 64

# The runtime changes are a hash (KEYS[1]): one field per server ("group/id"), its value the JSON of what
# was changed about it; KEYS[2] counts the versions. A document is the whole hash at one version, as JSON:
# {"version": n, "origin": "<instance>", "entries": {"group/id": "<its JSON>", ...}} (a bad entry spoils only itself).
_DOCUMENT = """
local function document(version, origin)
  local all = redis.call('HGETALL', KEYS[1])
  local parts = {}
  for i = 1, #all, 2 do parts[#parts + 1] = cjson.encode(all[i]) .. ':' .. cjson.encode(all[i + 1]) end
  return '{"version":' .. version .. ',"origin":' .. cjson.encode(origin) .. ',"entries":{'
    .. table.concat(parts, ',') .. '}}'
end
"""

#: Write the entries of the servers changed here (ARGV: origin, channel, then (how, field, value) triples: "set",
#: "del", or "keep" to set a field only when it is not there, for a state written back), count a version and
#: publish the whole new document, in one step; returns it.
_WRITE_STATE = _DOCUMENT + """
for i = 3, #ARGV, 3 do
  if ARGV[i] == 'del' then
    redis.call('HDEL', KEYS[1], ARGV[i + 1])
  elseif ARGV[i] == 'keep' then
    redis.call('HSETNX', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  end
end
local doc = document(redis.call('INCR', KEYS[2]), ARGV[1])
redis.call('PUBLISH', ARGV[2], doc)
return doc
"""

#: The stored document (version 0: nothing was ever written, or Redis lost it).
_READ_STATE = _DOCUMENT + """
return document(tonumber(redis.call('GET', KEYS[2]) or '0'), '')
"""

#: One token from each bucket named in KEYS (the GCRA form of a token bucket, as ``TokenBuckets``), in order,
#: with ARGV holding (interval, burst, slack) per key: a bucket's value is the moment, in microseconds of Redis's
#: clock, it is full again. Answers per key 0 when allowed, else the microseconds to wait. A key expires once its
#: bucket is full again, so idle buckets vanish. A key named twice is taken from twice, one after the other.
_TAKE_TOKENS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local waits = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local slack = tonumber(ARGV[3 * i])
  local full_at = tonumber(redis.call('GET', KEYS[i])) or now
  if full_at < now then full_at = now end
  local after = full_at + interval
  local wait = after - now - burst
  if wait > slack then
    waits[i] = math.ceil(wait)
  else
    redis.call('SET', KEYS[i], string.format('%.0f', after), 'PX', math.ceil((after - now) / 1000) + 1000)
    waits[i] = 0
  end
end
return waits
"""
#: The most takes sent in one script call, and the most calls out at once: under load the takes that come
#: while calls are out wait for the next, so the busier the proxy, the more takes each round trip carries.
MAX_BATCH = 256
MAX_IN_FLIGHT = 2

#: What an unreachable or failing Redis raises (OSError: a socket error not wrapped by redis-py).
FAILURES = (RedisError, OSError)


def connect(url: str, reply_timeout: float | None = REPLY_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> Redis:
    """A client of ``url`` that fails fast (short timeouts, no retries of its own: the callers back off).

    ``reply_timeout=None`` is for a pub/sub subscriber, which waits for messages as long as there are
    none; TCP keepalive still notices a peer that vanished.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=CONNECT_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=reply_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis(connection_pool=pool)


class Backoff:
    """Delays between reconnect attempts: doubling from ``first`` up to ``longest``, each within +-20%."""

    def __init__(self, first: float = BACKOFF_FIRST, longest: float = BACKOFF_MAX) -> None:
        self.first = first
        self.longest = longest
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        delay = self._next
        self._next = min(self.longest, delay * 2)
        return delay * random.uniform(0.8, 1.2)


class Outage:
    """Logs the loss of Redis once, and its return once, however many attempts fail in between."""

    def __init__(self, what: str, url: str) -> None:
        self.what = what
        self.url = redact_url(url)
        self.down = False
        self.failures = 0  # attempts that failed, logged or not

    def lost(self, err: BaseException) -> None:
        self.failures += 1
        if not self.down:
            self.down = True
            log.warning("state backend: Redis at %s unreachable (%s: %s); %s, reconnecting", self.url,
                        type(err).__name__, err, self.what)

    def back(self) -> None:
        if self.down:
            self.down = False
            log.info("state backend: Redis at %s reachable again", self.url)


#: Called with (version, overlay data) when another instance's change (or the stored state) should be applied.
OnRemote = Callable[[int, dict[str, Any]], Awaitable[None]]


class SharedOverlay:
    """The overlay of runtime changes, stored in Redis with a version and broadcast by pub/sub.

    Stored per server: a change made here writes the entries of the servers it touched (what this
    instance changed since it last wrote or applied a state), never the others', so changes made
    on several instances to different servers all stay, even when they were made while Redis was
    unreachable; for one server, the last writer wins. Every write publishes the whole new state.

    ``changed(data)`` records a change made here (no I/O: the background task writes it, at once when
    Redis is there, else when it is back). A state to apply comes to ``on_remote``, which should take
    its lock, ask ``accept(version)`` before applying (a change made here and not yet written, or a
    version not newer than the one this instance has, is not to be applied) and tell ``applied`` after.

    Catching up (at start and after every reconnect): a change made here while Redis was unreachable
    is written then (and the state that results applied); else the stored state is applied when its
    version is not the one this instance has; and a Redis that lost everything (restarted without
    persistence) gets this instance's whole state written back.
    """

    def __init__(self, url: str, prefix: str, on_remote: OnRemote) -> None:
        self.url = redact_url(url)  # for logs
        self.key = f"{prefix}:overlay"
        self.version_key = f"{prefix}:overlay:version"
        self.channel = f"{prefix}:changes"
        self.origin = uuid.uuid4().hex
        self.on_remote = on_remote
        self.version = 0  # of the state this instance has (0: none from Redis yet)
        self._client = connect(url, max_connections=4)
        self._subscriber = connect(url, reply_timeout=None, max_connections=4)
        self._write = self._client.register_script(_WRITE_STATE)
        self._read_state = self._client.register_script(_READ_STATE)
        self._data: dict[str, Any] = {}  # the overlay in force here (Overlay.describe()), changed or applied
        self._synced: dict[str, str] = {}  # its entries as last written or applied: what changed since is ours
        self._dirty = 0  # > 0: a change made here is not written yet (a count, so a newer one is not lost)
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()  # the first catch-up is done
        self._tried = asyncio.Event()  # the first attempt is over (caught up, or failed)
        self._outage = Outage("serving with the last state", url)
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and not self._outage.down

    @property
    def failures(self) -> int:
        """Attempts to reach Redis that failed since start (one log line per outage, whatever this counts)."""
        return self._outage.failures

    async def start(self, wait: float = CONNECT_TIMEOUT + REPLY_TIMEOUT) -> bool:
        """Start the background task and wait, up to ``wait`` seconds, for its first attempt to load the stored
        state; True when it did."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self._tried.wait(), wait)
        except TimeoutError:
            pass
        if not self._ready.is_set():
            log.warning("state backend: no answer from Redis at %s yet; starting with the file's config and the "
                        "runtime changes will be loaded when it answers", self.url)
            return False
        return True

    def changed(self, data: dict[str, Any]) -> None:
        """A change made on this instance: ``data`` (the whole overlay) is the state here now; write what changed."""
        self._data = data
        self._dirty += 1
        self._wake.set()

    def accept(self, version: int) -> bool:
        """Whether the state of ``version`` from Redis is to be applied now (ask under the applier's lock)."""
        return not self._dirty and version > self.version

    def applied(self, version: int, data: dict[str, Any]) -> None:
        """The state ``data`` of ``version`` is in force here now (a state that could not be applied is not)."""
        self.version = version
        self._data = data
        self._synced = overlay_entries(data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._client.aclose(close_connection_pool=True)
        await self._subscriber.aclose(close_connection_pool=True)

    # -- the background task ----------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._session(backoff)
            except FAILURES as err:
                self._outage.lost(err)
                self._tried.set()
            except Exception:  # a bug must not end the sharing for good
                log.exception("state backend: error while sharing state through Redis at %s", self.url)
            await asyncio.sleep(backoff.delay())

    async def _session(self, backoff: Backoff) -> None:
        pubsub = self._subscriber.pubsub()
        try:
            await pubsub.subscribe(self.channel)  # first: nothing published after the catch-up's read is missed
            await self._catch_up()
            self._outage.back()
            backoff.reset()
            self._ready.set()
            self._tried.set()
            reader = asyncio.ensure_future(self._read(pubsub))
            writer = asyncio.ensure_future(self._write_changes())
            try:
                done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raises what ended it
                raise ConnectionError("the pub/sub connection closed")
            finally:
                for task in (reader, writer):
                    task.cancel()
                await asyncio.gather(reader, writer, return_exceptions=True)
        finally:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            except FAILURES:
                pass

    async def _catch_up(self) -> None:
        doc = _parse(await self._read_state(keys=[self.key, self.version_key]))
        if doc is None:
            return
        version, _, data = doc
        if version < self.version:
            self.version = 0  # Redis lost the versions this instance saw (a restart without persistence)
        if version == 0 and _has_changes(self._data):  # nothing stored: never written, or Redis lost it
            log.info("state backend: Redis at %s holds no state; writing this instance's runtime changes back",
                     self.url)
            await self._flush(restore=True)
        elif self._dirty:
            await self._flush()
        elif version != self.version:
            await self.on_remote(version, data)

    async def _flush(self, restore: bool = False) -> None:
        """Write the entries changed here (and, to ``restore`` a Redis that lost them, the others where no other
        instance wrote them back first); apply the state that results when it holds others' changes too."""
        dirty = self._dirty
        ours = overlay_entries(self._data)
        synced = self._synced
        args = [self.origin, self.channel]
        for key in sorted(ours.keys() | synced.keys()):
            entry = ours.get(key)
            if entry != synced.get(key):
                args += ("set", key, entry) if entry is not None else ("del", key, "")
            elif restore and entry is not None:
                args += ("keep", key, entry)
        doc = _parse(await self._write(keys=[self.key, self.version_key], args=args))
        self._synced = ours
        self._dirty -= dirty
        if doc is None:
            return
        version, _, data = doc
        if overlay_entries(data) == ours:
            self.version = max(self.version, version)  # the state here is the stored one: nothing to apply
        else:
            await self.on_remote(version, data)  # ours and others' changes together (if nothing newer came here)

    async def _write_changes(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                await self._flush()

    async def _read(self, pubsub: PubSub) -> None:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            doc = _parse(message["data"])
            if doc is None or self._dirty:
                continue  # a change of ours is about to be written, and brings the others' back with it
            await self.on_remote(doc[0], doc[2])  # accept() leaves out what this instance has already


def overlay_entries(data: Mapping[str, Any]) -> dict[str, str]:
    """``Overlay.describe()`` data as the stored hash: per server ("group/id"), the JSON of what was changed."""
    entries: dict[str, dict[str, Any]] = {}

    def at(item: Mapping[str, Any]) -> dict[str, Any]:
        return entries.setdefault(f"{item['upstream']}/{item['id']}", {})

    for item in data.get("added", ()):
        at(item)["added"] = [item["url"], item["weight"]]
    for item in data.get("weights", ()):
        at(item)["weight"] = item["weight"]
    for item in data.get("states", ()):
        at(item)["state"] = item["state"]
    for item in data.get("removing", ()):
        at(item)["removing"] = True
    for item in data.get("removed", ()):
        at(item)["removed"] = True
    return {key: json.dumps(entry, sort_keys=True, separators=(",", ":")) for key, entry in entries.items()}


def overlay_data(entries: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """The stored hash as ``Overlay.describe()`` data; an entry that cannot be read is left out (and logged)."""
    data: dict[str, list[dict[str, Any]]] = {"added": [], "weights": [], "states": [], "removing": [], "removed": []}
    for key, raw in sorted(entries.items()):
        group, _, sid = key.partition("/")
        where = {"upstream": group, "id": sid}
        try:
            entry = json.loads(raw)
            parts: list[tuple[str, dict[str, Any]]] = []
            if "added" in entry:
                url, weight = entry["added"]
                parts.append(("added", {**where, "url": url, "weight": weight}))
            if "weight" in entry:
                parts.append(("weights", {**where, "weight": entry["weight"]}))
            if "state" in entry:
                parts.append(("states", {**where, "state": entry["state"]}))
            if entry.get("removing"):
                parts.append(("removing", where))
            if entry.get("removed"):
                parts.append(("removed", where))
        except (TypeError, ValueError, AttributeError) as err:
            log.error("state backend: ignoring the stored changes of %s, which cannot be read (%s)", key, err)
            continue
        for part, item in parts:
            data[part].append(item)
    return data


def _parse(raw: bytes | str | None) -> tuple[int, str, dict[str, Any]] | None:
    """(version, origin, overlay data) of a stored or published document; None (logged) when it is not one."""
    try:
        doc = json.loads(raw or "")
        result = (int(doc["version"]), str(doc["origin"]), overlay_data(doc["entries"]))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        log.error("state backend: ignoring a state document that cannot be read (%s)", err)
        return None
    return result


def _has_changes(data: Mapping[str, Any]) -> bool:
    return any(data.get(part) for part in ("added", "weights", "states", "removing", "removed"))


#: One take waiting for its answer: (key, interval, burst, slack, the answer).
_Take = tuple[str, float, float, float, "asyncio.Future[float | None]"]


def _answer(batch: list[_Take], wait: float | None) -> None:
    for item in batch:
        if not item[4].done():
            item[4].set_result(wait)


class RedisBuckets:
    """Token buckets kept in Redis (``rate_limit`` with ``shared: true``), taken atomically by a Lua script.

    Every take is answered by Redis, never guessed here, so the instances together never let more
    through than one bucket would. The takes made in one turn of the event loop (the requests of
    that turn) go together in one script call: one round trip for all of them, not one each.

    ``take`` answers None, without any I/O, while Redis is known to be unreachable: the caller then
    uses its own memory bucket. The first failure is logged; a background probe reconnects with
    backoff and the buckets in Redis are used again once it answers.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.url = redact_url(url)  # for logs
        self.prefix = f"{prefix}:rl:"
        self._client = connect(url)
        self._script = self._client.register_script(_TAKE_TOKENS)
        self._outage = Outage("shared rate limits count in each instance's memory meanwhile", url)
        self._probe: asyncio.Task[None] | None = None
        self._batch: list[_Take] = []  # takes not sent yet
        self._scheduled = False  # a _send is due in this turn of the loop
        self._in_flight = 0  # script calls sent and not answered
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def up(self) -> bool:
        return not self._outage.down

    async def take(self, key: str, interval_us: float, burst_us: float, slack_us: float) -> float | None:
        """Take a token from the bucket ``key``: 0.0 allowed, else seconds to wait; None when Redis is not there."""
        if self._outage.down:
            return None
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[float | None] = loop.create_future()
        self._batch.append((self.prefix + key, interval_us, burst_us, slack_us, answer))
        if not self._scheduled and self._in_flight < MAX_IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._send)
        return await answer

    def _send(self) -> None:
        """Send what waits, in calls of at most ``MAX_BATCH`` takes, while fewer than ``MAX_IN_FLIGHT`` are out."""
        self._scheduled = False
        if self._outage.down:
            batch, self._batch = self._batch, []
            _answer(batch, None)
            return
        loop = asyncio.get_running_loop()
        while self._batch and self._in_flight < MAX_IN_FLIGHT:
            batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
            self._in_flight += 1
            task = loop.create_task(self._take_all(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _take_all(self, batch: list[_Take]) -> None:
        args: list[float] = []
        for _, interval_us, burst_us, slack_us, _ in batch:
            args += (interval_us, burst_us, slack_us)
        try:
            waits = await self._script(keys=[item[0] for item in batch], args=args)
            for item, wait in zip(batch, waits, strict=True):
                if not item[4].done():  # its request may have gone meanwhile
                    item[4].set_result(int(wait) / 1e6)
        except FAILURES as err:
            self._lost(err)
        finally:
            _answer(batch, None)  # failed or cancelled: the memory buckets answer (answered ones are left alone)
            self._in_flight -= 1
            if self._batch and not self._scheduled:  # what came meanwhile goes next
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._send)

    def _lost(self, err: BaseException) -> None:
        self._outage.lost(err)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = Backoff()
        while True:
            await asyncio.sleep(backoff.delay())
            try:
                await self._client.ping()
            except FAILURES:
                continue
            self._outage.back()
            return

    async def close(self) -> None:
        for task in [self._probe, *self._sending]:
            if task is not None:
                task.cancel()
        await self._client.aclose(close_connection_pool=True)


def shared_overlay(state: StateBackend, on_remote: OnRemote) -> SharedOverlay | None:
    """The overlay store for ``state`` (None for the memory backend)."""
    if state.backend != "redis" or state.url is None:
        return None
    return SharedOverlay(state.url, state.prefix, on_remote)


def redis_buckets(state: StateBackend) -> RedisBuckets | None:
    """The bucket store for ``state`` (None for the memory backend)."""
    if state.backend != "redis" or state.url is None:
        return None
    return RedisBuckets(state.url, state.prefix)
