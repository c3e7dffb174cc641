"""A message that arrives while the server is still starting (its port is bound; mail,
voicemail/MWI, the fax service and the admin socket not yet installed) is held and answered by
the finished server. Before, the half-built server answered it: a SUBSCRIBE for message-summary
got 489, an INVITE to a fax number 480, an INVITE during the listeners' own start 405.
"""
from __future__ import annotations

import asyncio
import logging

from harness import RawPhone, free_port, write_config, write_users_toml
from hpbx import settings as settings_mod
from hpbx.app import Server, new_loop


def test_invite_during_start_up_is_answered_once_ready(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hpbx")
    port = free_port()
    users = write_users_toml(tmp_path / "users.toml", [("early", "early-secret")])
    settings = settings_mod.load(write_config(tmp_path, port, provision=[users], transports=("udp",)))
    server = Server(settings)
    phone = RawPhone("127.0.0.1", port)
    sent = []

    async def slow_admin(real=server._start_admin):
        # the SIP port is bound by now: the phone calls before the admin socket exists
        sent.append(phone.request("INVITE", f"sip:early@127.0.0.1:{port}", ["Contact: <sip:x@127.0.0.1>"],
                                  from_user="early"))
        await asyncio.sleep(0.3)
        assert phone.recv(0.05) is None, "answered before start-up was done"
        await real()

    server._start_admin = slow_admin
    loop = new_loop()
    try:
        loop.run_until_complete(server.start())
        assert sent, "the start-up never reached the admin socket"
        answer = phone.recv_until(lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12], 3.0)
        # the finished server challenges the caller (the B2BUA's INVITE handler)
        assert answer is not None and answer.startswith("SIP/2.0 407"), answer
        assert "1 messages held during start-up" in caplog.text, caplog.text
    finally:
        loop.run_until_complete(server.stop())
        loop.close()
        phone.close()
