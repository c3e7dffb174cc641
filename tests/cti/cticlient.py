"""A CTI client for tests: a real WebSocket (aiohttp) in a thread of its own, so that a test can
run SIPp processes and talk CTI at the same time. Requests wait for their answer; events are
kept with the wall-clock time their frame arrived (to compare with SIPp's message trace).

    with CtiClient(url) as cti:
        cti.login("anna", "anna-cti")
        ev = cti.wait_event("ringing")
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time

import aiohttp
import orjson


class CtiError(Exception):
    def __init__(self, error: dict):
        super().__init__(error.get("message"))
        self.error = error
        self.code = error.get("code")


class CtiClient:
    def __init__(self, url: str, timeout: float = 5.0):
        self.url = url
        self.timeout = timeout
        self.events: list[dict] = []  # each with "_at": time.time() of arrival
        self.closed_code: int | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future] = {}
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ws = None
        self._http = None
        self._failed: BaseException | None = None
        self._thread.start()
        if not self._ready.wait(timeout) or self._failed is not None:
            raise AssertionError(f"CTI connect to {url} failed: {self._failed!r}")

    # ---- the thread
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        try:
            self._http = aiohttp.ClientSession()
            self._ws = await self._http.ws_connect(self.url, max_msg_size=4 << 20)
        except Exception as exc:  # reported to the constructor
            self._failed = exc
            self._ready.set()
            if self._http is not None:
                await self._http.close()
            return
        self._ready.set()
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                doc = orjson.loads(msg.data)
                if "method" in doc and "id" not in doc:
                    doc["params"]["_at"] = time.time()
                    with self._cond:
                        self.events.append(doc["params"])
                        self._cond.notify_all()
                else:
                    fut = self._answers.pop(doc.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(doc)
        finally:
            self.closed_code = self._ws.close_code
            for fut in self._answers.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"CTI socket closed ({self.closed_code})"))
            with self._cond:
                self._cond.notify_all()
            await self._http.close()

    async def _send(self, doc: dict) -> dict:
        fut = self._loop.create_future()
        self._answers[doc["id"]] = fut
        await self._ws.send_str(orjson.dumps(doc).decode())
        return await fut

    # ---- the test's side
    def request(self, method: str, **params) -> dict:
        """The whole answer frame (result or error)."""
        doc = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        return asyncio.run_coroutine_threadsafe(self._send(doc), self._loop).result(self.timeout)

    def call(self, method: str, **params):
        """The result, or CtiError with the error object."""
        answer = self.request(method, **params)
        if "error" in answer:
            raise CtiError(answer["error"])
        return answer["result"]

    def login(self, username: str, password: str) -> dict:
        return self.call("login", username=username, password=password)

    def wait_event(self, kind: str, timeout: float | None = None, **match) -> dict:
        """The first event of ``kind`` (whose fields equal ``match``) received so far or within
        ``timeout``; AssertionError naming what did arrive otherwise."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for ev in self.events:
                    if ev.get("type") == kind and all(ev.get(k) == v for k, v in match.items()):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self.closed_code is not None:
                    raise AssertionError(f"no {kind} event {match} within the time; got "
                                         f"{[(e.get('type'), e.get('username') or e.get('call_id')) for e in self.events]}")
                self._cond.wait(left)

    def events_of(self, kind: str, **match) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e.get("type") == kind
                    and all(e.get(k) == v for k, v in match.items())]

    def wait_closed(self, timeout: float = 5.0) -> int | None:
        self._thread.join(timeout)
        return self.closed_code

    def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(self.timeout)
        self._thread.join(self.timeout)

    def __enter__(self) -> "CtiClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
