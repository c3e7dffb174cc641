"""Dual-stack media (issue 18): SIP on 127.0.0.1 and [::1], the relay on 127.0.0.1 with
``address6 = "::1"``. A baresip phone on IPv6 calls one on IPv4 and the reverse; each hears the
other's tone, so real RTP crossed the relay between the families both ways."""
from __future__ import annotations

import socket

import pytest

from clients import Baresip
from harness import HpbxServer, reserved_pair, reserved_port, write_config
from callrig import user
from test_default_config import wait_heard


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback (::1) here")

TENANT = '[tenant]\nname = "dual"\n' + user("six", "601") + user("four", "602")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("dual")
    (d / "tenant.toml").write_text(TENANT)
    srv = HpbxServer(d)
    port = srv.port
    srv.config = write_config(d, port, provision=(d / "tenant.toml",), sip_extra={
        "listen": [f"udp:127.0.0.1:{port}", f"udp:[::1]:{port}"]})
    base = 10000 + (port % 90) * 100
    with open(srv.config, "a") as f:
        f.write(f'\n[rtp]\nports = "{base}-{base + 99}"\naddress = "127.0.0.1"\naddress6 = "::1"\n')
    with srv:
        yield srv


def admin(server, method, **params):
    from hpbx.admin.client import AdminClient
    with AdminClient(str(server.dir / "hpbx.sock"), timeout=5) as client:
        return client.call(method, params or None)


@pytest.mark.parametrize("caller", ["six", "four"])
def test_ipv6_and_ipv4_phones_hear_each_other(server, tmp_path, caller):
    port = server.port
    six = Baresip(tmp_path / "six", "six", "six-pw", f"[::1]:{port}", sip_port=reserved_pair("::1"),
                  host="::1", tone=440)
    four = Baresip(tmp_path / "four", "four", "four-pw", f"127.0.0.1:{port}",
                   sip_port=reserved_pair(), tone=1000)
    with six, four:
        six.wait_event("REGISTER_OK")
        four.wait_event("REGISTER_OK")
        a, b = (six, four) if caller == "six" else (four, six)
        a.command("dial", f"sip:{'602' if caller == 'six' else '601'}@{a.server}")
        a.wait_event("CALL_ESTABLISHED")
        b.wait_event("CALL_ESTABLISHED")
        assert abs(wait_heard(six, 1000) - 1000) <= 20, six.output()
        assert abs(wait_heard(four, 440) - 440) <= 20, four.output()
        [call] = admin(server, "call.list")
        peers = {leg: call["media"][leg]["peer"][0] for leg in ("a", "b")}
        assert peers == ({"a": "::1", "b": "127.0.0.1"} if caller == "six"
                         else {"a": "127.0.0.1", "b": "::1"}), call
        a.command("hangup")
        b.wait_event("CALL_CLOSED")
