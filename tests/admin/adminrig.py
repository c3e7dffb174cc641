"""Admin test rig: a real AdminServer on a real Unix socket in tmp_path, driven by real clients.

``admin_server`` runs the server in its own thread and asyncio loop, so the test talks to it
over the socket exactly as hpbxctl does; its context holds whatever real services exist.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

from hpbx.admin.client import AdminClient
from hpbx.admin.context import AdminContext
from hpbx.admin.server import AdminServer
from hpbx.settings import AdminSettings, Settings

REPO = Path(__file__).resolve().parents[2]
HPBXCTL = REPO / ".venv" / "bin" / "hpbxctl"


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class ServerThread:
    def __init__(self, ctx: AdminContext, loop_kind: str = "asyncio", **server_kw):
        self.ctx = ctx
        self.loop = new_loop(loop_kind)
        self.server = AdminServer(ctx, **server_kw)
        self.thread = threading.Thread(target=self.loop.run_forever, name="admin-test-loop", daemon=True)

    @property
    def path(self) -> str:
        return self.server.path

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServerThread:
        self.thread.start()
        self.run(self.server.start())
        return self

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def client(self, timeout: float = 10.0) -> AdminClient:
        return AdminClient(self.path, timeout=timeout)


def make_settings(tmp_path: Path, **admin_kw) -> Settings:
    admin = AdminSettings(socket=str(tmp_path / "run" / "hpbx.sock"), **admin_kw)
    return replace(Settings(path=str(tmp_path / "hpbx.toml")), admin=admin)




def provisioned_context(tmp_path: Path, **admin_kw):
    """A context of real services on a fresh SQLite file: the provisioning service, and the
    registrations as the registrar stores them (``RegistrationStore``, returned too so tests can add bindings)."""
    import time

    from hpbx.pbx.provisioning import Provisioning
    from hpbx.store.registrations import RegistrationStore
    from hpbx.store.sqlite import Store

    settings = make_settings(tmp_path, **admin_kw)
    db = tmp_path / "hpbx.sqlite3"
    store = Store(db)
    bindings = RegistrationStore(db)

    def list_registrations(tenant, user):
        return (b.as_dict() for b in bindings.load(time.time())
                if (tenant is None or b.tenant == tenant) and (user is None or b.username == user))

    ctx = AdminContext(settings=settings, provisioning=Provisioning(store), list_registrations=list_registrations)
    ctx.stats_sources["store"] = lambda: {"users": store.count("user"), "bindings": bindings.count()}
    return ctx, bindings
