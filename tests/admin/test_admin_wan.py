"""system.info's WAN address: the source address of the default route, read over netlink in
a network namespace the test builds (with and without a default route)."""
from __future__ import annotations

import uuid

import pytest

from hpbx.admin.methods import find_wan_address

pyroute2 = pytest.importorskip("pyroute2")


@pytest.fixture
def empty_netns():
    name = "hpbx-wan-" + uuid.uuid4().hex[:8]
    try:
        pyroute2.netns.create(name)
    except Exception as exc:  # no CAP_SYS_ADMIN or no netns support
        pytest.skip(f"cannot create a network namespace: {exc}")
    yield name
    pyroute2.netns.remove(name)


def test_no_default_route_is_said_so(empty_netns):
    assert find_wan_address(netns=empty_netns) == {"address": None, "reason": "no default route"}


def test_default_route_source_address(empty_netns):
    with pyroute2.NetNS(empty_netns) as ns:
        ns.link("add", ifname="wan0", kind="veth", peer="wan0p")
        idx = ns.link_lookup(ifname="wan0")[0]
        ns.addr("add", index=idx, address="198.51.100.7", prefixlen=24)
        ns.link("set", index=idx, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway="198.51.100.1")
    assert find_wan_address(netns=empty_netns) == {
        "address": "198.51.100.7", "interface": "wan0", "gateway": "198.51.100.1"}
