"""Bans shared by the nodes of a cluster, in Redis beside the node's own SQLite ban store.

A ban one node makes (the receive path's flood bans, digest-failure bans, ``ban.add``) or lifts
is written to the local store as on a single node, and also to the hash ``hpbx:bans`` (host ->
{reason, until, since}) with a PUBLISH on ``hpbx:bans`` in one script call; the other nodes
apply it to their guard at once (``on_ban`` / ``on_unban``), and a node that starts loads the
hash. Failure counters, trusted networks and toll overrides stay per node. Bans are stored
within a second of being made (the ban service's drain), so sharing them is asynchronous too:
a Redis error is logged and the local ban still holds.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson
from redis.exceptions import RedisError

from hpbx.store.redis_registrations import connect

log = logging.getLogger("hpbx.store.redis_bans")

HASH = CHANNEL = "hpbx:bans"
_WRITE = """
local m = cjson.decode(ARGV[1])
for _, host in ipairs(m.unban) do redis.call('HDEL', KEYS[1], host) end
for _, b in ipairs(m.ban) do redis.call('HSET', KEYS[1], b[1], cjson.encode(b)) end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 0
"""


class SharedBans:
    """The ``BanStore`` interface over a local ``BanStore``; bans also go to Redis."""

    def __init__(self, local, url: str, node: str):
        self.local = local
        self.node = node
        self.redis = connect(url)
        self._own = b'{"node":' + orjson.dumps(node) + b","
        self._script = self.redis.register_script(_WRITE)
        self._tasks: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None
        self.stats = {"bans_shared": 0, "bans_received": 0, "ban_share_errors": 0}

    async def open(self, on_ban, on_unban) -> list[tuple[str, str, float, float]]:
        """Subscribe, then return the bans in force in Redis: (host, reason, until, since)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        now = time.time()
        current, ended = [], []
        for host, raw in (await self.redis.hgetall(HASH)).items():
            h, reason, until, since = orjson.loads(raw)
            (current if until > now else ended).append((h, reason, until, since))
        if ended:
            await self.redis.hdel(HASH, *(b[0] for b in ended))
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub, on_ban, on_unban))
        return current

    async def _listen(self, pubsub, on_ban, on_unban) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    if message["type"] != "message" or message["data"].startswith(self._own):
                        continue
                    m = orjson.loads(message["data"])
                    for host in m["unban"]:
                        on_unban(host)
                    for host, reason, until, _since in m["ban"]:
                        on_ban(host, reason, until)
                    self.stats["bans_received"] += len(m["ban"]) + len(m["unban"])
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                log.warning("bans subscriber lost Redis (%s); retrying", exc)
                await asyncio.sleep(1.0)
                try:
                    await pubsub.subscribe(CHANNEL)
                except (RedisError, OSError):
                    continue

    # ---- the BanStore interface
    def write(self, bans=(), unbans=(), counters=None) -> None:
        self.local.write(bans, unbans, counters)
        if bans or unbans:
            message = self._own + b'"ban":' + orjson.dumps(list(bans)) + b',"unban":' \
                + orjson.dumps(list(unbans)) + b"}"
            task = asyncio.get_running_loop().create_task(self._share(message, len(bans) + len(unbans)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _share(self, message: bytes, n: int) -> None:
        try:
            await self._script(keys=[HASH], args=[message])
            self.stats["bans_shared"] += n
        except (RedisError, OSError) as exc:
            self.stats["ban_share_errors"] += 1
            log.warning("bans not shared with the other nodes: %s", exc)

    def __getattr__(self, name):
        return getattr(self.local, name)  # counters, trusted networks, toll overrides: local

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.redis.aclose()
