"""/metrics in the Prometheus text exposition format (version 0.0.4), written by hand: a few
gauges and counters read from the live server at each scrape, no registry to keep in step."""
from __future__ import annotations

from typing import Iterable


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help: str, samples: Iterable[tuple[dict, float]]) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            if labels:
                text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{text}}} {float(value):g}")
            else:
                self.lines.append(f"{name} {float(value):g}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def collect(ctx, media=None) -> str:
    """``ctx``: the AdminContext (registrations, calls, stats sources); ``media``: the
    MediaEngine, for relay streams and packet counters of the live calls."""
    e = Exposition()
    regs = list(ctx.list_registrations(None, None)) if ctx.list_registrations else []
    per_tenant_regs: dict[str, int] = {}
    for r in regs:
        per_tenant_regs[r.get("tenant") or ""] = per_tenant_regs.get(r.get("tenant") or "", 0) + 1
    e.metric("hpbx_registrations", "gauge", "Registered device bindings.",
             [({"tenant": t}, n) for t, n in sorted(per_tenant_regs.items())] or [({}, 0)])
    calls = list(ctx.list_calls()) if ctx.list_calls else []
    per_tenant_calls: dict[str, int] = {}
    for c in calls:
        per_tenant_calls[c.get("tenant") or ""] = per_tenant_calls.get(c.get("tenant") or "", 0) + 1
    tenants = []
    if ctx.provisioning is not None:
        tenants = sorted(t.name for t in ctx.provisioning.directory.tenants())
    e.metric("hpbx_active_calls", "gauge", "Calls in progress per tenant.",
             [({"tenant": t}, per_tenant_calls.get(t, 0)) for t in sorted(set(tenants) | set(per_tenant_calls))])
    stats = ctx.stats_sources.get("calls")
    c = stats() if stats else {}
    e.metric("hpbx_calls_total", "counter", "Calls started since the server started.",
             [({}, c.get("calls_started", 0))])
    e.metric("hpbx_calls_answered_total", "counter", "Calls answered since the server started.",
             [({}, c.get("calls_answered", 0))])
    e.metric("hpbx_calls_failed_total", "counter", "Calls that ended unanswered.",
             [({}, c.get("calls_failed", 0))])
    streams = packets = lost = bytes_ = 0
    if media is not None:
        for s in media.list():
            for leg in s["legs"].values():
                if leg.get("peer"):
                    streams += 1
                packets += leg.get("packets", 0)
                bytes_ += leg.get("bytes", 0)
                lost += max(0, leg.get("lost", 0))
        e.metric("hpbx_relay_sessions", "gauge", "Relay sessions (one per anchored call).", [({}, len(media))])
        e.metric("hpbx_relay_port_pairs_free", "gauge", "Free RTP port pairs.", [({}, media.free_pairs())])
    e.metric("hpbx_relay_streams", "gauge", "Relay legs with a latched peer.", [({}, streams)])
    e.metric("hpbx_relay_packets", "gauge", "RTP packets relayed by the live calls.", [({}, packets)])
    e.metric("hpbx_relay_bytes", "gauge", "RTP bytes relayed by the live calls.", [({}, bytes_)])
    e.metric("hpbx_relay_packets_lost", "gauge", "RTP packets lost (RFC 3550) on the live calls.", [({}, lost)])
    sip = ctx.stats_sources.get("sip")
    if sip:
        s = sip()
        e.metric("hpbx_sip_connections", "gauge", "Open SIP TCP/TLS connections.", [({}, s.get("connections", 0))])
    security = ctx.stats_sources.get("security")
    if security:
        b = security()
        e.metric("hpbx_bans_active", "gauge", "Sources and users banned now.",
                 [({}, b.get("bans_active", 0))])
        e.metric("hpbx_guard_dropped_total", "counter",
                 "SIP packets and connections of banned sources dropped unparsed.",
                 [({}, b.get("guard_dropped", 0))])
        e.metric("hpbx_auth_failures_total", "counter", "Failed digest authentications.",
                 [({}, b.get("auth_failures", 0))])
    web = ctx.stats_sources.get("web")
    if web:
        w = web()
        e.metric("hpbx_web_login_failures_total", "counter", "Failed web logins.", [({}, w.get("login_failures", 0))])
        e.metric("hpbx_web_provisioning_auth_failures_total", "counter",
                 "Phone provisioning requests with wrong credentials.", [({}, w.get("prov_auth_failures", 0))])
    return e.text()
