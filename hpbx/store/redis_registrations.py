"""Registrations (bindings) in Redis, shared by every node of a cluster.

One hash ``hpbx:bindings`` holds every binding: field ``username NUL contact``, value the
binding's row (the SQLite table's columns, then the node holding its flow) as JSON. A batch
(the registrar's ``write_batch``) is one script call (``_BATCH``, atomic like every Redis
script): it gets the batch as the one JSON message that is also PUBLISHed on
``hpbx:registrations``, and applies its HDELs and HSETs, so a batch is stored and announced
whole or not at all, and the registrar answers 200 only after the call returned. (One argument
instead of a MULTI/EXEC of 2N+4: redis-py packs each argument in Python, which cost ~10 µs a
binding.) Every node subscribes before it
loads the hash: nothing stored after its load escapes it. A subscriber that lost its
connection loads the whole hash again once it is back (``on_resync``).

Durability is Redis's: an acknowledged binding survives kill -9 of any hpbx node as long as
Redis runs; to survive a Redis restart run it with ``appendonly yes`` (``appendfsync always``
loses nothing, ``everysec`` up to a second).
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hpbx.errors import HpbxError
from hpbx.store.registrations import COLUMNS, Binding

log = logging.getLogger("hpbx.store.redis")

HASH = "hpbx:bindings"
CHANNEL = "hpbx:registrations"
_SEP = "\x00"
# compare-and-delete: a field goes only if it still holds the value the caller saw expire (a
# node refreshing it meanwhile wins)
_CAD = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""
_SCAN_COUNT = 20_000
# KEYS: the hash, the channel; ARGV[1]: {"node":..., "del":[[user, contact]...], "put":[row...]}
_BATCH = """
local m = cjson.decode(ARGV[1])
for _, d in ipairs(m.del) do
  redis.call('HDEL', KEYS[1], d[1] .. '\0' .. d[2])
end
for _, row in ipairs(m.put) do
  redis.call('HSET', KEYS[1], row[1] .. '\0' .. row[2], cjson.encode(row))
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return #m.put
"""


def field(username: str, contact: str) -> str:
    return f"{username}{_SEP}{contact}"


def encode(b: Binding) -> bytes:
    return orjson.dumps((*b.row(), b.node))


def decode(value: bytes, now: float) -> Binding:
    return _from_row(orjson.loads(value), now)


def _from_row(row: list, now: float) -> Binding:
    """A row as ``encode`` wrote it: the table's columns, then the node."""
    node = row.pop()
    if len(row) != len(COLUMNS):
        raise ValueError(f"a binding row has {len(row)} columns, expected {len(COLUMNS)}")
    row[-1] = bool(row[-1])
    return Binding(*row, last_seen=now, node=node)


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=0)


class RedisRegistrations:
    """The registrar's store (``load``, ``write_batch``, ``close``) over one Redis."""

    def __init__(self, url: str, node: str):
        self.url = url
        self.node = node
        self.redis = connect(url)
        self._loaded: list[Binding] = []
        self._subscriber: asyncio.Task | None = None
        self._cad = None
        self._batch = None
        self._own = b'{"node":' + orjson.dumps(node) + b","  # our own messages start so
        self.stats = {"published_batches": 0, "received_batches": 0, "resyncs": 0}

    async def open(self, now: float, on_change, on_resync) -> None:
        """Subscribe, then load every binding not yet expired (``load`` hands them over).
        ``on_change(puts, deletes)`` runs for every batch another node stored."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise HpbxError(f"Redis {self.url}: {exc}") from None
        self._cad = self.redis.register_script(_CAD)
        self._batch = self.redis.register_script(_BATCH)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        self._loaded = await self.read_all(now)
        self._subscriber = asyncio.get_running_loop().create_task(
            self._listen(pubsub, on_change, on_resync))

    async def read_all(self, now: float) -> list[Binding]:
        """Every live binding; expired ones are deleted (compare-and-delete)."""
        out, expired = [], []
        cursor = 0
        while True:
            cursor, chunk = await self.redis.hscan(HASH, cursor, count=_SCAN_COUNT)
            for key, value in chunk.items():
                b = decode(value, now)
                if b.expires_at > now:
                    out.append(b)
                else:
                    expired += (key, value)
            if cursor == 0:
                break
        if expired:
            await self._cad(keys=[HASH], args=expired)
        return out

    def load(self, now: float) -> list[Binding]:
        loaded, self._loaded = self._loaded, []
        return [b for b in loaded if b.expires_at > now]

    def write_batch(self, upserts: list[Binding], deletes: list[tuple[str, str]],
                    refreshes: list[Binding] = ()):
        """The batch as one script call; returns the awaitable the registrar waits on."""
        rows = [encode(b) for b in upserts]
        rows += [encode(b) for b in refreshes]
        message = self._own + b'"del":' + orjson.dumps(deletes) + b',"put":[' + b",".join(rows) + b"]}"
        self.stats["published_batches"] += 1
        return self._batch(keys=[HASH, CHANNEL], args=[message])

    async def _listen(self, pubsub, on_change, on_resync) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    if message["type"] != "message" or message["data"].startswith(self._own):
                        continue
                    batch = orjson.loads(message["data"])
                    self.stats["received_batches"] += 1
                    now = time.time()
                    puts = [_from_row(row, now) for row in batch["put"]]
                    try:
                        on_change(puts, [tuple(d) for d in batch["del"]])
                    except Exception:
                        log.exception("registrations from node %s not applied", batch["node"])
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                log.warning("registrations subscriber lost Redis (%s); reconnecting", exc)
                await self._resubscribe(pubsub, on_resync)

    async def _resubscribe(self, pubsub, on_resync) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await pubsub.subscribe(CHANNEL)
                loaded = await self.read_all(time.time())
            except (RedisError, OSError) as exc:
                log.warning("registrations subscriber: Redis still unreachable (%s)", exc)
                continue
            self.stats["resyncs"] += 1
            on_resync(loaded)
            return

    async def aclose(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        await self.redis.aclose()

