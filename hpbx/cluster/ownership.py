"""Live call ownership and node failure, in Redis.

Every node keeps ``hpbx:node:<name>`` alive (a key with a ``ttl`` refreshed every
``beat`` s, holding the node's SIP address) and is a member of the set ``hpbx:nodes``; each
beat also reads the other nodes' addresses (``peers``: where the hop to a flow held by another
node goes, ``hpbx.sip.edge``). Its live calls are the hash
``hpbx:calls:<name>``: call id -> the call's CDR as it stands (written when the call starts and
when it is answered, removed when it ends; changes are sent every ``FLUSH_SECS`` in one
pipeline, so a call shorter than that costs nothing).

A node whose key has expired is dead. The first live node to take the lock
``hpbx:takeover:<name>`` (SET NX) ends its calls: each one's CDR is written with the time of
the takeover as its end and "node <name> failed" as its reason, then removed from the hash,
one by one (a takeover that dies midway leaves only unwritten calls to the next one). A node
that starts under a name whose calls hash is not empty (it was killed and restarted) ends
those calls itself first. Dialogs of a dead node are gone with it: its phones and trunks see
no answer to their next in-dialog request; the CDR is what survives.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import orjson
from redis.exceptions import RedisError

from hpbx.store.redis_registrations import connect

log = logging.getLogger("hpbx.cluster")

NODES = "hpbx:nodes"
FLUSH_SECS = 0.2


def _iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class CallOwnership:
    def __init__(self, url: str, node: str, write_cdr, sip_address: tuple[str, int] = ("", 0),
                 beat: float = 1.0, ttl: float = 3.0):
        """``write_cdr(doc)`` stores one CDR (the provisioning service's ``cdr_add``)."""
        self.node = node
        self.sip_address = sip_address
        self.peers: dict[str, tuple[str, int]] = {}  # other live nodes -> SIP address, in place
        self.peer_hosts: set[str] = set()
        self.redis = connect(url)
        self.write_cdr = write_cdr
        self.beat = beat
        self.ttl = ttl
        self._put: dict[str, object] = {}  # call id -> Call, to write
        self._del: set[str] = set()
        self._written: set[str] = set()  # in the hash (or on their way there)
        self._flush_task: asyncio.Task | None = None
        self._beat_task: asyncio.Task | None = None
        self.stats = {"calls_taken_over": 0, "nodes_taken_over": 0, "ownership_errors": 0}

    def _calls_key(self, node: str) -> str:
        return f"hpbx:calls:{node}"

    async def start(self) -> None:
        await self._take_over(self.node, "restarted")
        await self._alive()
        await self.redis.sadd(NODES, self.node)
        await self._read_peers()
        self._beat_task = asyncio.get_running_loop().create_task(self._beating())

    async def _alive(self) -> None:
        await self.redis.set(f"hpbx:node:{self.node}",
                             orjson.dumps({"sip": self.sip_address, "beat": _iso()}),
                             px=int(self.ttl * 1000))

    async def _read_peers(self) -> None:
        names = sorted(n.decode() for n in await self.redis.smembers(NODES) if n.decode() != self.node)
        values = await self.redis.mget([f"hpbx:node:{n}" for n in names]) if names else []
        found = {}
        for name, raw in zip(names, values):
            if raw is not None:
                host, port = orjson.loads(raw)["sip"]
                found[name] = (host, port)
        if found != self.peers:
            self.peers.clear()
            self.peers.update(found)
            self.peer_hosts.clear()
            self.peer_hosts.update(h for h, _ in found.values())
            log.info("cluster peers: %s", ", ".join(f"{n}={h}:{p}" for n, (h, p) in found.items()) or "none")

    # ---- what the call service reports
    def started(self, call) -> None:
        self._put[call.id] = call
        self._schedule()

    changed = started

    def ended(self, call) -> None:
        self._put.pop(call.id, None)  # never written: nothing to remove
        if call.id in self._written:
            self._written.discard(call.id)
            self._del.add(call.id)
            self._schedule()

    def _schedule(self) -> None:
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_SECS)
        await self.flush()

    async def flush(self) -> None:
        self._flush_task = None
        puts, self._put = self._put, {}
        dels, self._del = self._del, set()
        if not puts and not dels:
            return
        pipe = self.redis.pipeline(transaction=False)
        key = self._calls_key(self.node)
        if puts:
            pipe.hset(key, mapping={cid: orjson.dumps(call.cdr()) for cid, call in puts.items()})
        if dels:
            pipe.hdel(key, *dels)
        self._written.update(puts)  # before the await: a call ending meanwhile is removed
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self.stats["ownership_errors"] += 1
            log.warning("live calls not stored in Redis: %s", exc)

    # ---- presence and takeover
    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(self.beat)
            try:
                await self._alive()
                await self._look_for_dead()
                await self._read_peers()
            except (RedisError, OSError) as exc:
                log.warning("cluster heartbeat: %s", exc)

    async def _look_for_dead(self) -> None:
        for raw in await self.redis.smembers(NODES):
            node = raw.decode()
            if node == self.node or await self.redis.exists(f"hpbx:node:{node}"):
                continue
            if not await self.redis.set(f"hpbx:takeover:{node}", self.node, nx=True,
                                        px=int(30 * 1000)):
                continue  # another node is on it
            log.warning("node %s is gone (no heartbeat for %.0f s): ending its calls", node, self.ttl)
            ended = await self._take_over(node, "failed")
            if await self.redis.hlen(self._calls_key(node)):
                continue  # a CDR could not be written: tried again once the lock has expired
            await self.redis.srem(NODES, node)
            self.stats["nodes_taken_over"] += 1
            log.info("node %s: %d calls ended with CDRs", node, ended)

    async def _take_over(self, node: str, why: str) -> int:
        key = self._calls_key(node)
        calls = await self.redis.hgetall(key)
        end = _iso()
        for cid, raw in calls.items():
            doc = orjson.loads(raw)
            doc["end"] = end
            doc["end_reason"] = f"node {node} {why}"
            try:
                self.write_cdr(doc)
            except Exception:
                log.exception("[%s] CDR of node %s not written", cid.decode(errors="replace"), node)
                continue
            await self.redis.hdel(key, cid)
            self.stats["calls_taken_over"] += 1
        return len(calls)

    def counters(self) -> dict:
        return {**self.stats, "calls_owned": len(self._written), "peers": len(self.peers)}

    async def stop(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            await asyncio.gather(self._beat_task, return_exceptions=True)
        if self._flush_task is not None:
            self._flush_task.cancel()
            await asyncio.gather(self._flush_task, return_exceptions=True)
        await self.flush()
        try:
            # a clean stop: nobody needs to take this node over
            await self.redis.delete(f"hpbx:node:{self.node}")
            await self.redis.srem(NODES, self.node)
        except (RedisError, OSError) as exc:
            log.warning("cluster: leaving: %s", exc)
        await self.redis.aclose()
