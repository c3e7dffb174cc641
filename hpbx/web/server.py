"""The HTTP(S) face on aiohttp, in the server's event loop.

aiohttp is the one HTTP stack of hpbx: its server, its cookies and its static files serve the
admin page, ``POST /rpc``, phone provisioning and ``/metrics``, and its WebSocket support is
there for CTI. Routes:

  GET  /                     the admin page (hpbx/web/static: index.html, app.js, app.css)
  POST /api/login            {"username", "password"} -> session cookie + CSRF token
  POST /api/logout, GET /api/session
  POST /rpc                  JSON-RPC 2.0 (object or batch) through the admin dispatch, as the
                             logged-in account (cookie + X-CSRF-Token, or HTTP Basic)
  POST /api/announcements    multipart upload of an announcement's audio (WAV/MP3; hpbx/web/media.py)
  GET  /api/announcements/<tenant>/<id>.wav   its audio, for the page's player
  GET  /prov/<mac>.xml|.cfg  a phone's configuration (digest, or basic over TLS/loopback)
  GET  /prov/phonebook/<mac>.xml
  GET  /metrics              Prometheus text; from ``metrics_allow`` networks or an operator

Failed logins and wrong phone credentials are counted and handed to every callable in
``auth_failure_hooks`` as ``(host, port, kind, username)`` (kind "web-login", "web-basic" or
"provisioning"), which is where the ban engine connects.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import hmac
import ipaddress
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any, Callable

import orjson
from aiohttp import web

from hpbx.admin.protocol import INVALID_PARAMS, INVALID_REQUEST, PERMISSION_DENIED, RpcError, encode
from hpbx.admin.scope import WebAccount
from hpbx.pbx.phones import normalize_mac
from hpbx.errors import ValidationError
from hpbx.sip.auth import Authenticator, Verdict
from hpbx.web import media, metrics
from hpbx.web.provisioning import EXTENSION, Renderer
from hpbx.web.sessions import LoginLimiter, Sessions

log = logging.getLogger("hpbx.web")

STATIC = Path(__file__).parent / "static"
COOKIE = "hpbx_session"
BASIC_CACHE_SECS = 60.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json",
                        headers=headers)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _DeviceCredential:
    """What the digest core looks up: a phone's fetch credentials as (username, password)."""

    __slots__ = ("username", "sip_password", "mac")

    def __init__(self, username: str, password: str, mac: str):
        self.username, self.sip_password, self.mac = username, password, mac


class WebServer:
    def __init__(self, ctx, admin, settings, media=None):
        self.ctx = ctx
        self.admin = admin  # hpbx.admin.server.AdminServer: its dispatch serves /rpc
        self.media = media
        self.settings = settings
        self.sessions = Sessions(settings.http.session_ttl)
        self.limiter = LoginLimiter(settings.http.login_failures, settings.http.login_window)
        self.renderer = Renderer(settings)
        self.device_auth = Authenticator(self._device_lookup, "hpbx-provisioning", 300)
        self.auth_failure_hooks: list[Callable[[str, int, str, str], Any]] = []
        # host -> False when the ban engine has banned it: its logins and phone fetches get 403
        self.source_allowed: Callable[[str], bool] = lambda host: True
        # callables (app) adding routes of other services to this listener (CTI's /cti)
        self.route_hooks: list[Callable[[web.Application], Any]] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._basic_cache: dict[bytes, tuple[Any, float]] = {}
        self._device_by_user: dict[str, _DeviceCredential] = {}
        self._metrics_allow = tuple(ipaddress.ip_network(n, strict=False) for n in settings.http.metrics_allow)
        self._runner: web.AppRunner | None = None
        self.bound: list[tuple[str, str, int]] = []  # (scheme, host, port) actually listening
        ctx.stats_sources.setdefault("web", self.stats)
        if ctx.accounts is not None:
            ctx.accounts.listeners.append(self._account_changed)

    def _account_changed(self, username: str) -> None:
        """A changed or deleted account: its sessions end, cached Basic credentials go."""
        self.sessions.drop_account(username)
        self._basic_cache.clear()

    # -- lifecycle ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.admin.max_line)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC, append_version=False)
        app.router.add_post("/api/login", self.login)
        app.router.add_post("/api/logout", self.logout)
        app.router.add_get("/api/session", self.session_info)
        app.router.add_post("/rpc", self.rpc)
        app.router.add_post("/api/announcements", self.announcement_upload)
        app.router.add_get("/api/announcements/{tenant}/{id}.wav", self.announcement_audio)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/prov/phonebook/{mac}.xml", self.phonebook)
        app.router.add_get("/prov/{mac}.{ext}", self.phone_config)
        app.on_response_prepare.append(self._headers)
        for hook in self.route_hooks:
            hook(app)
        return app

    async def start(self) -> None:
        http = self.settings.http
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        tls = None
        if any(lst.scheme == "https" for lst in http.listen):
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(http.tls_cert, http.tls_key or None)
        for lst in http.listen:
            site = web.TCPSite(self._runner, lst.host, lst.port, backlog=256, reuse_address=True,
                               ssl_context=tls if lst.scheme == "https" else None)
            await site.start()
            for sock in site._server.sockets:  # port 0: learn the real one
                host, port = sock.getsockname()[:2]
                self.bound.append((lst.scheme, host, port))
            log.info("web face listening on %s", lst)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def configure(self, settings) -> None:
        self.settings = settings
        self.sessions.ttl = settings.http.session_ttl
        self.limiter.limit = settings.http.login_failures
        self.limiter.window = settings.http.login_window
        self.renderer.configure(settings)
        self._metrics_allow = tuple(ipaddress.ip_network(n, strict=False) for n in settings.http.metrics_allow)

    def stats(self) -> dict:
        return {"sessions": len(self.sessions), **self.counters}

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        if request.path.startswith(("/api/", "/rpc", "/prov/")):
            response.headers["Cache-Control"] = "no-store"

    # -- failures ------------------------------------------------------------------------------

    def _failed(self, request: web.Request, kind: str, username: str) -> None:
        self.counters["login_failures" if kind.startswith("web") else "prov_auth_failures"] += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        host, port = (peer[0], peer[1]) if peer else (request.remote or "", 0)
        log.warning('SECURITY event=http_auth_failed kind=%s src=%s user="%s"', kind, host, username[:64])
        for hook in self.auth_failure_hooks:
            try:
                hook(host, port, kind, username)
            except Exception:
                log.exception("auth failure hook %r failed", hook)

    # -- the page and the session --------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def _banned(self, request: web.Request) -> bool:
        try:
            banned = not self.source_allowed(request.remote or "")
        except ValueError:
            return False
        if banned:
            self.counters["banned_refused"] += 1
        return banned

    async def login(self, request: web.Request) -> web.Response:
        source = request.remote or ""
        if self._banned(request):
            return _json({"error": "this address is banned"}, 403)
        wait = self.limiter.retry_after(source)
        if wait:
            self.counters["login_locked"] += 1
            return _json({"error": "too many failed logins; try again later", "retry_after": int(wait)},
                         429, {"Retry-After": str(int(wait))})
        try:
            body = await request.json(loads=orjson.loads)
            username, password = body["username"], body["password"]
            if not isinstance(username, str) or not isinstance(password, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _json({"error": "expected {\"username\": ..., \"password\": ...}", "field": "username"}, 400)
        account = await asyncio.to_thread(self.ctx.accounts.authenticate, username, password) \
            if self.ctx.accounts is not None else None
        if account is None:
            self.limiter.failed(source)
            self._failed(request, "web-login", username)
            return _json({"error": "wrong username or password", "field": "password"}, 401)
        self.limiter.succeeded(source)
        session = self.sessions.create(account)
        self.counters["logins"] += 1
        response = _json({"account": account.to_dict(), "csrf": session.csrf})
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict", path="/",
                            secure=request.secure, max_age=self.settings.http.session_ttl)
        return response

    def _session(self, request: web.Request):
        return self.sessions.get(request.cookies.get(COOKIE))

    async def logout(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is not None:
            if not self.sessions.csrf_ok(session, request.headers.get("X-CSRF-Token")):
                return _json({"error": "missing or wrong X-CSRF-Token"}, 403)
            self.sessions.drop(session.token)
        response = _json({"logged_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def session_info(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _json({"error": "not logged in"}, 401)
        return _json({"account": session.account.to_dict(), "csrf": session.csrf})

    # -- /rpc ----------------------------------------------------------------------------------

    async def _basic_account(self, request: web.Request, header: str):
        try:
            raw = base64.b64decode(header[6:].strip(), validate=True)
            username, _, password = raw.decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        key = hashlib.sha256(raw).digest()
        cached = self._basic_cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        source = request.remote or ""
        if self.limiter.retry_after(source):
            return None
        account = await asyncio.to_thread(self.ctx.accounts.authenticate, username, password) \
            if self.ctx.accounts is not None else None
        if account is None:
            self.limiter.failed(source)
            self._failed(request, "web-basic", username)
            return None
        if len(self._basic_cache) > 1000:
            self._basic_cache.clear()
        self._basic_cache[key] = (account, now + BASIC_CACHE_SECS)
        return account

    async def _principal(self, request: web.Request):
        """(principal, None) or (None, error response)."""
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            if self._banned(request):
                return None, self._rpc_denied("this address is banned", 403)
            account = await self._basic_account(request, header)
            if account is None:
                return None, self._rpc_denied("wrong credentials", 401)
            return WebAccount(account), None
        session = self._session(request)
        if session is None:
            return None, self._rpc_denied("not logged in", 401)
        if not self.sessions.csrf_ok(session, request.headers.get("X-CSRF-Token")):
            return None, self._rpc_denied("missing or wrong X-CSRF-Token", 403)
        return WebAccount(session.account), None

    @staticmethod
    def _rpc_denied(reason: str, status: int) -> web.Response:
        err = RpcError(PERMISSION_DENIED, f"permission denied: {reason}", {"reason": reason})
        return web.Response(body=encode({"jsonrpc": "2.0", "error": err.to_json(), "id": None}),
                            status=status, content_type="application/json")

    async def rpc(self, request: web.Request) -> web.Response:
        principal, denied = await self._principal(request)
        if denied is not None:
            return denied
        body = await request.read()
        if b"\n" in body.strip():
            # one request (or batch) per body; a newline inside JSON text is only whitespace
            body = body.replace(b"\r", b" ").replace(b"\n", b" ")
        if not body.strip():
            err = RpcError(INVALID_REQUEST, "invalid request: empty body")
            return web.Response(body=encode({"jsonrpc": "2.0", "error": err.to_json(), "id": None}),
                                status=400, content_type="application/json")
        answer = await self.admin.handle_line(body, principal)
        if answer is None:
            return web.Response(status=204)
        return web.Response(body=answer, content_type="application/json")

    # -- /metrics ------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        allowed = False
        try:
            addr = ipaddress.ip_address(request.remote or "")
            allowed = any(addr in net for net in self._metrics_allow)
        except ValueError:
            pass
        if not allowed:
            session = self._session(request)
            allowed = session is not None and session.account.operator
        if not allowed:
            return web.Response(status=403, text="forbidden\n")
        text = metrics.collect(self.ctx, self.media)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Version": "0.0.4"})

    # -- phone provisioning --------------------------------------------------------------------

    def _device_lookup(self, username: str):
        # the digest core asks for the user it checks: only the phone named in the path answers
        return self._device_by_user.get(username)

    def _phone(self, mac_text: str):
        phones = self.ctx.phones
        if phones is None:
            return None
        try:
            mac = normalize_mac(mac_text)
        except ValidationError:
            return None
        return phones.phones.get(mac)

    def _check_device(self, request: web.Request, phone) -> web.Response | None:
        """None when the request carries this phone's credentials; else the 401 to send."""
        if self._banned(request):
            return web.Response(status=403, text="403: banned\n")
        header = request.headers.get("Authorization", "")
        plain_ok = request.secure or _is_loopback(request.remote)
        if header[:6].lower() == "basic ":
            if not plain_ok:
                return self._device_challenge(plain_ok)  # basic only over TLS (or loopback)
            try:
                user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if (hmac.compare_digest(user.encode(), phone.http_user.encode())
                    and hmac.compare_digest(password.encode(), phone.http_password.encode())):
                return None
            self._failed(request, "provisioning", user)
            return self._device_challenge(plain_ok)
        if header[:7].lower() == "digest ":
            self._device_by_user = {phone.http_user: _DeviceCredential(phone.http_user, phone.http_password,
                                                                       phone.mac)}
            try:
                verdict, cred, username = self.device_auth.check(request.method, header)
            finally:
                self._device_by_user = {}
            if verdict is Verdict.OK and cred is not None and cred.mac == phone.mac:
                return None
            if verdict is Verdict.STALE:
                return self._device_challenge(plain_ok, stale=True)
            if verdict is Verdict.FORBIDDEN or username:
                self._failed(request, "provisioning", username or "")
            return self._device_challenge(plain_ok)
        return self._device_challenge(plain_ok)

    def _device_challenge(self, plain_ok: bool, stale: bool = False) -> web.Response:
        headers = [(k, v) for k, v in self.device_auth.challenge_headers(stale=stale)]
        if plain_ok:
            headers.append(("WWW-Authenticate", 'Basic realm="hpbx-provisioning", charset="UTF-8"'))
        response = web.Response(status=401, text="401: credentials required\n")
        for k, v in headers:
            response.headers.add(k, v)
        return response

    def _base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def phone_config(self, request: web.Request) -> web.Response:
        phone = self._phone(request.match_info["mac"])
        if phone is None or EXTENSION.get(phone.vendor) != request.match_info["ext"]:
            self.counters["prov_unknown"] += 1
            return web.Response(status=404, text="404: unknown device\n")
        denied = self._check_device(request, phone)
        if denied is not None:
            return denied
        self.counters["prov_served"] += 1
        body = self.renderer.config(phone, self.ctx.provisioning.directory, self._base_url(request))
        return web.Response(text=body, content_type="application/xml" if phone.vendor == "snom" else "text/plain",
                            charset="utf-8")

    async def phonebook(self, request: web.Request) -> web.Response:
        phone = self._phone(request.match_info["mac"])
        if phone is None:
            return web.Response(status=404, text="404: unknown device\n")
        denied = self._check_device(request, phone)
        if denied is not None:
            return denied
        body = self.renderer.phonebook(phone, self.ctx.provisioning.directory, self.ctx.addressbooks)
        return web.Response(text=body, content_type="application/xml", charset="utf-8")

    # -- announcement audio (hpbx/web/media.py) ------------------------------------------------

    @staticmethod
    def _rpc_answer(result: Any = None, error: RpcError | None = None, status: int = 200) -> web.Response:
        body = {"jsonrpc": "2.0", "id": None}
        if error is not None:
            body["error"] = error.to_json()
        else:
            body["result"] = result
        return web.Response(body=encode(body), status=status, content_type="application/json")

    async def announcement_upload(self, request: web.Request) -> web.Response:
        """multipart/form-data: ``audio`` (the file) and optional ``tenant``, ``id``, ``name``,
        ``kind``. An existing id gets the new audio (announcement.update), else
        announcement.create; both through the dispatch as the logged-in account (scoped,
        audited). The converted file is kept only when that call succeeds."""
        principal, denied = await self._principal(request)
        if denied is not None:
            return denied
        if not request.content_type.startswith("multipart/"):
            return self._rpc_answer(error=RpcError(INVALID_PARAMS, "expected multipart/form-data",
                                                   {"field": "audio", "reason": "expected multipart/form-data"}), status=400)
        root = media.media_dir(self.settings)
        spool = root / ".upload"
        spool.mkdir(parents=True, exist_ok=True)
        upload = spool / f"{base64.urlsafe_b64encode(os.urandom(9)).decode()}.in"
        params: dict[str, Any] = {}
        got_audio = False
        try:
            reader = await request.multipart()
            async for part in reader:
                if part.name == "audio":
                    size = 0
                    with open(upload, "wb") as fh:
                        while chunk := await part.read_chunk(1 << 16):
                            size += len(chunk)
                            if size > media.MAX_UPLOAD:
                                raise web.HTTPRequestEntityTooLarge(max_size=media.MAX_UPLOAD, actual_size=size)
                            fh.write(chunk)
                    got_audio = size > 0
                elif part.name in ("tenant", "name", "kind", "id"):
                    value = (await part.read(decode=True)).decode("utf-8", "replace")[:256]
                    if value != "":
                        params[part.name] = value
            if "id" in params:
                try:
                    params["id"] = int(params["id"])
                except ValueError:
                    raise RpcError(INVALID_PARAMS, "id: must be a number", {"field": "id", "reason": "must be a number"})
            if not got_audio:
                raise RpcError(INVALID_PARAMS, "audio: no file was sent", {"field": "audio", "reason": "no file was sent"})
            params = principal.fill("announcement.create", params)
            tenant = params.get("tenant")
            if not isinstance(tenant, str) or not tenant:
                raise RpcError(INVALID_PARAMS, "tenant: is required", {"field": "tenant", "reason": "is required"})
            principal.authorize(self.ctx, "announcement.create", dict(params))  # before anything is written
            existing = None
            if "id" in params:
                try:
                    existing = await self.admin.call("announcement.get", {"tenant": tenant, "id": params["id"]}, principal)
                except RpcError:
                    existing = None
            kind = params.get("kind") or (existing or {}).get("kind") or "announcement"
            name = media.new_name(tenant)
            try:
                ms = await media.convert(upload, root / name, kind)
            except ValidationError as exc:
                field = "audio" if exc.field == "file" else exc.field
                raise RpcError(INVALID_PARAMS, f"{field}: {exc.reason}", {"field": field, "reason": exc.reason}) from None
            fields = {**params, "file": name, "duration_ms": ms}
            try:
                result = await self.admin.call("announcement.update" if existing else "announcement.create",
                                               fields, principal)
            except BaseException:
                (root / name).unlink(missing_ok=True)
                raise
            old = (existing or {}).get("file", "")
            if old and old != name and media.own_file(tenant, old):
                (root / old).unlink(missing_ok=True)
            self.counters["announcement_uploads"] += 1
            return self._rpc_answer(result)
        except RpcError as exc:
            return self._rpc_answer(error=exc)
        finally:
            upload.unlink(missing_ok=True)

    async def announcement_audio(self, request: web.Request) -> web.StreamResponse:
        """The audio of one announcement, for a logged-in account that may read it (a tenant
        admin: its own tenant's only; another tenant's answers 404 like a missing one)."""
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            principal, denied = await self._principal(request)
            if denied is not None:
                return denied
        else:
            session = self._session(request)
            if session is None:
                return web.Response(status=401, text="401: not logged in\n")
            principal = WebAccount(session.account)  # a GET changes nothing: no CSRF token needed
        try:
            ident = int(request.match_info["id"])
            a = await self.admin.call("announcement.get", {"tenant": request.match_info["tenant"], "id": ident},
                                      principal)
        except (ValueError, RpcError):
            return web.Response(status=404, text="404: no such announcement\n")
        path = media.resolve(self.settings, a.get("file", ""))
        if path is None:
            return web.Response(status=404, text="404: the announcement has no audio file\n")
        return web.FileResponse(path, headers={"Content-Type": "audio/wav", "Cache-Control": "no-store"})
