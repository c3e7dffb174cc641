"""Push notifications as an HTTP webhook (FEATURES 4.8.14): how a push gateway is fed.

A tenant with ``push_url`` gets one JSON POST per event:

* ``incoming_call`` when a call starts ringing a user with ``push_incoming`` (every user a
  row of the call names, registered or not: waking the app is the point);
* ``missed_call`` when a call offered to a user with ``push_missed`` (a row reached them)
  ends unanswered by anyone.

Body: ``{"event", "id", "tenant", "user", "call_id", "caller", "caller_name", "called",
"slot", "time"}`` (time: aware ISO 8601, UTC). Headers: ``X-Hpbx-Event``, ``X-Hpbx-Delivery``
(the id, the same on every attempt, so a receiver recognises a repeat) and
``X-Hpbx-Signature: sha256=<hex HMAC-SHA256 of the body with push_secret>``. A 2xx answer is
delivery; a connection failure, timeout, 5xx or 429 is tried again after 1, 2, 4 ... s up to
``MAX_ATTEMPTS``; another 4xx is given up at once (counted). Pushes live in memory: they are
notifications of the moment, not mail.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from datetime import datetime, timezone

import aiohttp
import orjson

from hpbx.pbx.missed import offered

log = logging.getLogger("hpbx.pbx.push")

RETRY_MIN = 1.0
MAX_ATTEMPTS = 8
TIMEOUT = 5.0
MAX_PENDING = 10_000  # pushes waiting at most (a dead gateway cannot grow memory without bound)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Push:
    def __init__(self, svc):
        self.svc = svc
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"push_sent": 0, "push_retried": 0, "push_failed": 0, "push_dropped": 0}

    # ------------------------------------------------------------------ events
    def call_started(self, call) -> None:
        self._each(call, "incoming_call", "push_incoming",
                   [r.value for r in call.plan.targets() if r.kind == "user"])

    def call_ended(self, call) -> None:
        if call.answer_iso:
            return
        self._each(call, "missed_call", "push_missed", offered(call))

    def _each(self, call, event: str, flag: str, usernames: list[str]) -> None:
        directory = self.svc.provisioning.directory
        tenant = directory.tenant(call.tenant)
        if tenant is None or not tenant.push_url:
            return
        for name in usernames:
            user = directory.user(name)
            if user is None or not getattr(user.flags, flag):
                continue
            caller_name = (call.caller_user.details.full_name() if call.caller_user is not None
                           else (call.a_msg.from_addr.display or "").strip('"'))
            doc = {"event": event, "id": secrets.token_hex(8), "tenant": call.tenant, "user": name,
                   "call_id": call.id, "caller": call.caller, "caller_name": caller_name,
                   "called": call.plan.dialled, "slot": call.plan.slot,
                   "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
            self.send(tenant.push_url, tenant.push_secret, doc)

    # ------------------------------------------------------------------ delivery
    def send(self, url: str, secret: str, doc: dict) -> None:
        if len(self._tasks) >= MAX_PENDING:
            self.stats["push_dropped"] += 1
            return
        task = self.svc.loop.create_task(self._deliver(url, secret, doc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, secret: str, doc: dict) -> None:
        body = orjson.dumps(doc)
        headers = {"Content-Type": "application/json", "X-Hpbx-Event": doc["event"],
                   "X-Hpbx-Delivery": doc["id"], "X-Hpbx-Signature": sign(secret, body),
                   "User-Agent": "hpbx-push"}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        wait = RETRY_MIN
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                status, why = 0, str(exc) or type(exc).__name__
            else:
                why = f"HTTP {status}"
            if 200 <= status < 300:
                self.stats["push_sent"] += 1
                return
            if status and status < 500 and status != 429:
                break
            if attempt < MAX_ATTEMPTS:
                self.stats["push_retried"] += 1
                log.info("push %s to %s: %s, again in %.0f s", doc["id"], url, why, wait)
                await asyncio.sleep(wait)
                wait *= 2
        self.stats["push_failed"] += 1
        log.warning("push %s (%s) to %s given up: %s", doc["id"], doc["event"], url, why)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


def install(svc) -> Push:
    push = Push(svc)
    svc.started_hooks.append(push.call_started)
    svc.ended_hooks.append(push.call_ended)
    return push
