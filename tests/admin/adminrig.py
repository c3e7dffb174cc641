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


class ServerThread:
    def __init__(self, ctx: AdminContext, **server_kw):
        self.ctx = ctx
        self.loop = asyncio.new_event_loop()
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
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def client(self, timeout: float = 10.0) -> AdminClient:
        return AdminClient(self.path, timeout=timeout)


def make_settings(tmp_path: Path, **admin_kw) -> Settings:
    admin = AdminSettings(socket=str(tmp_path / "run" / "hpbx.sock"), **admin_kw)
    return replace(Settings(path=str(tmp_path / "hpbx.toml")), admin=admin)


