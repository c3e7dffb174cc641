"""Phones behind NAT: which bindings need the source address, and keepalives towards them.

A binding is "behind NAT" when the user carries the flag, or its Contact names another address
than the one the REGISTER came from (a private address, a hostname, another port). Such
bindings are reached at the source address (and over the phone's own connection for TCP/TLS),
and are kept open by keepalives every ``keepalive_interval`` seconds: an OPTIONS request over
UDP (any answer counts), a CRLFCRLF ping over TCP/TLS (RFC 5626, answered by CRLF). A binding
whose keepalives go unanswered is marked offline; after ``keepalive_grace`` seconds without an
answer it is removed.

The service walks the NAT'd bindings in slices, one slice per second, so that N bindings cost
N/interval keepalives per second and one timer, whatever N is.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import socket
import time

from hpbx._fast import sipmsg

log = logging.getLogger("hpbx.sip.nat")


def is_ip(host: str) -> bool:
    # inet_pton first (each call routes through here; address objects cost ~4 us), the
    # ipaddress module for what it alone accepts (IPv6 zone ids)
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):  # ValueError: a NUL in it
            pass
    if "%" not in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def contact_hostport(uri: str) -> tuple[str, int]:
    try:
        parsed = sipmsg.parse_uri(uri)
    except Exception:
        return "", 0
    return parsed.host, parsed.port


def needs_nat(host: str, port: int, source_host: str, source_port: int, transport: str) -> bool:
    """Is a contact at host:port (port 0: default) behind NAT, seen from the source address?"""
    if host == source_host and (port or 5060) == source_port:
        return False
    if transport != "udp":
        # stream connections are reused anyway; the contact port of a TCP phone is often a
        # listening port that the NAT does not forward
        return not is_ip(host) or ipaddress.ip_address(host).is_private and host != source_host
    return True


class KeepaliveService:
    def __init__(self, wheel, registrar, transactions, transports, settings, clock=time.time):
        self.wheel = wheel
        self.registrar = registrar
        self.transactions = transactions
        self.transports = transports
        self.clock = clock
        self.configure(settings)
        self._cycle: list = []
        self._pos = 0
        self._per_tick = 0
        self._timer = None
        self.stats = {"keepalive_sent": 0, "keepalive_answered": 0, "keepalive_failed": 0,
                      "keepalive_removed": 0}

    def configure(self, settings) -> None:
        self.interval = settings.sip.keepalive_interval
        self.grace = settings.sip.keepalive_grace
        self.user_agent = settings.sip.user_agent

    def start(self) -> None:
        if self._timer is None:
            self._timer = self.wheel.call_later(min(1.0, self.interval or 1.0), self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        step = min(1.0, self.interval or 1.0)
        self._timer = self.wheel.call_later(step, self._tick)
        if not self.interval:
            return
        if self._pos >= len(self._cycle):
            node = self.registrar.node  # only the node holding a flow keeps it open
            self._cycle = [b for bindings in self.registrar.bindings.values()
                           for b in bindings if b.behind_nat and b.node == node]
            self._pos = 0
            self._per_tick = max(1, math.ceil(len(self._cycle) * step / self.interval))
        now = self.clock()
        end = min(self._pos + self._per_tick, len(self._cycle))
        for binding in self._cycle[self._pos:end]:
            if now - binding.keepalive_sent >= self.interval * 0.9:
                self._probe(binding, now)
        self._pos = end

    def _probe(self, binding, now: float) -> None:
        registrar = self.registrar
        if binding not in registrar.bindings.get(binding.username, ()):
            return  # unregistered meanwhile
        conn = None
        if binding.transport != "udp":
            conn = self.transports.connections.get(binding.connection_id)
            if conn is not None and conn.closed:
                conn = None
            if conn is not None and binding.keepalive_sent and conn.last_pong >= binding.keepalive_sent:
                self._answered(binding, 200)
        if binding.keepalive_sent and binding.last_seen < binding.keepalive_sent:
            self._unanswered(binding, now)
            if binding not in registrar.bindings.get(binding.username, ()):
                return
        binding.keepalive_sent = now
        self.stats["keepalive_sent"] += 1
        if binding.transport == "udp":
            self._send_options(binding, registrar.target(binding))
        elif conn is not None:
            conn.send(b"\r\n\r\n")
        # no connection left: the next round finds the ping unanswered

    def _send_options(self, binding, target) -> None:
        host = target.host
        ruri = binding.contact
        local_host, _ = self.transports.local_address("udp", host)
        headers = [
            ("From", f"<sip:keepalive@{local_host}>;tag={sipmsg.new_tag()}"),
            ("To", f"<{ruri}>"),
            ("Call-ID", sipmsg.new_call_id(local_host)),
            ("CSeq", "1 OPTIONS"),
            ("User-Agent", self.user_agent),
        ]
        self.transactions.send_request("OPTIONS", ruri, headers, target,
                                       lambda tx, status, msg: self._answered(binding, status))

    def _answered(self, binding, status: int) -> None:
        now = self.clock()
        if status == 408 or status == 503:
            self._unanswered(binding, now)
            return
        self.stats["keepalive_answered"] += 1
        binding.last_seen = now
        if not binding.online:
            log.info("%s: binding %s online again", binding.username, binding.contact)
        binding.online = True

    def _unanswered(self, binding, now: float) -> None:
        self.stats["keepalive_failed"] += 1
        if binding.online:
            log.info("%s: binding %s offline (keepalive unanswered)", binding.username,
                     binding.contact)
        binding.online = False
        if now - binding.last_seen > self.grace:
            log.info("%s: binding %s removed (no keepalive answer for %ds)", binding.username,
                     binding.contact, int(now - binding.last_seen))
            self.stats["keepalive_removed"] += 1
            self.registrar.remove(binding)
