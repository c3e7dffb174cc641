"""Fixtures of the admin tests (the rig itself is in adminrig.py)."""
from __future__ import annotations

import pytest

from adminrig import ServerThread, make_settings
from hpbx.admin.context import AdminContext


@pytest.fixture(params=["asyncio", "uvloop"])
def start_admin(tmp_path, request):
    """Starts in-process admin servers; every test using it runs on both event loops (the
    real server runs uvloop when installed)."""
    started: list[ServerThread] = []

    def start(ctx: AdminContext | None = None, admin_kw: dict | None = None, **server_kw) -> ServerThread:
        if ctx is None:
            ctx = AdminContext(settings=make_settings(tmp_path, **(admin_kw or {})))
        st = ServerThread(ctx, request.param, **server_kw).start()
        started.append(st)
        return st

    yield start
    for st in started:
        st.stop()


@pytest.fixture
def admin_server(start_admin) -> ServerThread:
    return start_admin()


@pytest.fixture
def prov(start_admin, tmp_path):
    """(server, registration store): an admin server over real provisioning on SQLite."""
    from adminrig import provisioned_context

    ctx, bindings = provisioned_context(tmp_path)
    yield start_admin(ctx), bindings
    bindings.close()
