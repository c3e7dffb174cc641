"""Building blocks for the NAT tests' network namespaces: create and always remove them, join two
with a veth pair, address an interface, and make one a masquerading router.

Everything happens inside namespaces the test creates; the root namespace is never touched.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest

pyroute2 = pytest.importorskip("pyroute2")


def require_root_and_iptables() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not shutil.which("iptables"):
        pytest.skip("iptables is not installed")


def exec_in(ns_name: str) -> list[str]:
    """The command prefix that runs a program inside ``ns_name``."""
    return ["ip", "netns", "exec", ns_name]


@contextmanager
def namespaces(names):
    """Create every namespace in ``names`` with its loopback up; remove all of them on exit.

    The test is skipped when the kernel refuses to create one (no CAP_SYS_ADMIN, no netns)."""
    made = []
    try:
        for name in names:
            pyroute2.netns.create(name)
            made.append(name)
    except Exception as exc:
        _remove(made)
        pytest.skip(f"cannot create network namespaces: {exc}")
    try:
        for name in made:
            up(name, "lo")
        yield
    finally:
        _remove(made)


def _remove(made) -> None:
    for name in made:
        try:
            pyroute2.netns.remove(name)
        except Exception:
            pass  # already gone: nothing else to clean up


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair: ``if_a`` in ``ns_a``, its peer ``if_b`` moved into ``ns_b``."""
    with pyroute2.NetNS(ns_a) as ns:
        ns.link("add", ifname=if_a, kind="veth", peer=if_b)
        ns.link("set", index=ns.link_lookup(ifname=if_b)[0], net_ns_fd=ns_b)


def up(ns_name: str, ifname: str, address: str | None = None, gateway: str | None = None) -> None:
    """Bring ``ifname`` up, with an optional /24 address and default route."""
    with pyroute2.NetNS(ns_name) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        if address:
            ns.addr("add", index=idx, address=address, prefixlen=24)
        ns.link("set", index=idx, state="up")
        if gateway:
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)


def masquerade(router: str, out_if: str) -> None:
    """Make ``router`` forward IPv4 and masquerade everything leaving through ``out_if``."""
    subprocess.run(exec_in(router) + ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True, capture_output=True)
    subprocess.run(exec_in(router) + ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", out_if,
                                      "-j", "MASQUERADE"], check=True, capture_output=True)
