"""IPv6 listeners: OPTIONS and a digest registration over UDP on [::1]."""
from __future__ import annotations

import socket

import pytest

from harness import HpbxServer, RawPhone, digest_authorization, header, sip_options


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback (::1) here")


def test_register_over_ipv6(tmp_path):
    with HpbxServer(tmp_path, users=[("six", "six-secret")], host="::1", transports=("udp", "tcp")) as srv:
        assert sip_options("::1", srv.port).startswith("SIP/2.0 200")
        assert sip_options("::1", srv.port, transport="tcp").startswith("SIP/2.0 200")
        ruri = f"sip:[::1]:{srv.port}"
        with RawPhone("::1", srv.port, host="::1") as phone:
            def send(extra=()):
                phone.request("REGISTER", ruri, [f"Contact: <sip:six@[::1]:{phone.port}>", *extra],
                              to_uri="sip:six@[::1]", from_user="six")
                return phone.recv_until(lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12])

            challenge = header(send(), "WWW-Authenticate")[0]
            ok = send([f"Authorization: {digest_authorization(challenge, 'six', 'six-secret', 'REGISTER', ruri)}"])
            assert ok.startswith("SIP/2.0 200"), ok
            top_via = header(ok, "Via")[0]
            assert ";received=::1" in top_via and f";rport={phone.port}" in top_via
        [row] = srv.bindings()
        assert row["source_host"] == "::1" and row["contact"] == f"sip:six@[::1]:{phone.port}"
