"""The ``[security]`` settings: bans (density, digest failures, scanners, trusted networks)
and the toll-fraud limits (``[security.toll]``, per tenant ``[security.toll.tenants.NAME]``).

Defaults follow Kamailio's stock anti-flood (16 messages per 2 s, ban 300 s), but a source
that authenticated a user within ``good_secs`` may send ``good_factor`` times more, so that an
office of phones behind one NAT (one address for all of them) is not banned when they all
re-register at once; and a source with registered phones is not banned for one phone's wrong
password: for such a source only that (source, user) pair is blocked.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

SCANNER_AGENTS = ("friendly-scanner", "sipvicious", "sipcli", "vaxsipuseragent", "pplsip",
                  "sundayddr", "iwar", "sip-scan")
# premium and high-risk destinations in the normalised form (+ and the country code)
PREMIUM_PREFIXES = ("+41900", "+41901", "+41906", "+881", "+882", "+883")


@dataclass(frozen=True, slots=True)
class TollLimits:
    max_outbound_per_user: int = 2       # concurrent trunk calls of one user; 0 = no limit
    max_outbound_per_tenant: int = 10    # concurrent trunk calls of one tenant; 0 = no limit
    calls_per_hour_user: int = 30        # trunk call attempts per user in any 60 minutes
    calls_per_hour_tenant: int = 200     # ... per tenant
    allow_international: bool = False    # numbers outside the home country
    allow_premium: bool = False          # premium_prefixes
    max_call_secs: int = 14400           # an answered trunk call is hung up after this; 0 = never
    # calls_per_hour_tenant exceeded: "refuse" the attempt, or "block" the tenant (its trunk
    # calls hung up, every further one refused until an operator sets blocked = false)
    on_rate_exceeded: str = "refuse"
    blocked: bool = False
    allow_prefixes: tuple[str, ...] = ()  # always allowed (normalised, e.g. "+49")
    deny_prefixes: tuple[str, ...] = ()   # always refused
    # talk minutes through the trunk in any 60 minutes / any 24 hours; 0 = no limit. An answered
    # call is hung up when the budget left at its answer is spent.
    minutes_per_hour_user: int = 0
    minutes_per_hour_tenant: int = 0
    minutes_per_day_user: int = 600
    minutes_per_day_tenant: int = 3000
    # "HH:MM-HH:MM" in the tenant's time zone ("" = off): then only national numbers (and
    # allow_prefixes) reach the trunk, international and premium are refused even if allowed
    night_hours: str = ""

    def as_dict(self) -> dict:
        return {name: (list(v) if isinstance(v, tuple) else v)
                for name in self.__slots__ for v in (getattr(self, name),)}


RATE_ACTIONS = ("refuse", "block")
NIGHT_RE = r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"


def night_window(text: str) -> tuple[int, int] | None:
    """"22:00-06:00" -> (1320, 360) minutes of the day; "" -> None."""
    if not text:
        return None
    a, b = text.split("-")
    return int(a[:2]) * 60 + int(a[3:]), int(b[:2]) * 60 + int(b[3:])
TOLL_KEYS = {name: type(getattr(TollLimits(), name)) for name in TollLimits.__slots__}


@dataclass(frozen=True, slots=True)
class TollSettings:
    country_code: str = "41"              # the home country: +41 and 0041 are national
    premium_prefixes: tuple[str, ...] = PREMIUM_PREFIXES
    defaults: TollLimits = field(default_factory=TollLimits)
    tenants: tuple[tuple[str, TollLimits], ...] = ()
    # a velocity or minutes cap exceeded, or a tenant blocked: POST a JSON event here and/or
    # mail it (through [smtp]); "" = no alert. At most one alert per tenant and rule per hour.
    alert_webhook: str = ""
    alert_mail: str = ""

    def limits(self, tenant: str) -> TollLimits:
        for name, limits in self.tenants:
            if name == tenant:
                return limits
        return self.defaults


TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are all fine as they are)
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"


@dataclass(frozen=True, slots=True)
class TlsCert:
    """A certificate served to clients that ask for ``domain`` (SNI)."""

    domain: str
    cert: str
    key: str = ""


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    enabled: bool = True
    flood_window: int = 2            # seconds
    flood_threshold: int = 16        # messages per window and source; 0 = no density check
    ban_secs: int = 300
    good_factor: int = 8
    good_secs: int = 3600
    auth_failures: int = 10          # failed digests per source (or source and user) ...
    auth_window: int = 60            # ... within this many seconds: ban (or block the pair)
    user_failures: int = 30          # failed digests for one user from any source ...
    user_window: int = 600           # ... within this: every further failing source is banned
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS
    trusted: tuple[str, ...] = ()    # networks never counted nor banned (trunks, operators)
    table_size: int = 65536          # sources tracked at once
    tls_min_version: str = "TLSv1.2"
    tls_ciphers: str = TLS_CIPHERS
    tls_verify_peers: bool = True    # our TLS connections (to trunks) check the certificate
    tls_ca_file: str = ""            # "" = the system's CAs
    tls_certs: tuple[TlsCert, ...] = ()  # per-domain certificates (SNI)
    toll: TollSettings = field(default_factory=TollSettings)


def _prefixes(r, key: str, default) -> tuple[str, ...]:
    values = r.get(key, list, list(default))
    for v in values:
        if not isinstance(v, str) or not v or not (v[0] == "+" and v[1:].isdigit() or v.isdigit()):
            raise r.fail(key, f"entries must be digit strings, optionally starting with +, got {v!r}")
    return tuple(values)


def limits_from(r, base: TollLimits) -> TollLimits:
    """Read the limit keys of one table over ``base``; ``r.finish()`` is the caller's."""
    values = {}
    for name, kind in TOLL_KEYS.items():
        if name not in r.table:
            r.used.add(name)
            continue
        if kind is int:
            values[name] = r.int_in(name, getattr(base, name), 0, 1_000_000)
        elif kind is bool:
            values[name] = r.get(name, bool, getattr(base, name))
        elif name == "night_hours":
            values[name] = r.get(name, str, getattr(base, name))
            if values[name] and not re.match(NIGHT_RE, values[name]):
                raise r.fail(name, f'must be "HH:MM-HH:MM" or "", got {values[name]!r}')
        elif kind is str:
            values[name] = r.get(name, str, getattr(base, name))
            if values[name] not in RATE_ACTIONS:
                raise r.fail(name, f"must be one of {', '.join(RATE_ACTIONS)}, got {values[name]!r}")
        else:
            values[name] = _prefixes(r, name, getattr(base, name))
    return replace(base, **values)


def from_dict(reader, path: str, table) -> SecuritySettings:
    """``reader`` is hpbx.settings._Reader (passed in: this module is imported by it)."""
    r = reader(path, "security", table)
    trusted = r.get("trusted", list, [])
    for net in trusted:
        try:
            ipaddress.ip_network(net, strict=False)
        except (TypeError, ValueError):
            raise r.fail("trusted", f"not a network: {net!r}") from None
    agents = r.get("scanner_agents", list, list(SCANNER_AGENTS))
    if len(agents) > 32 or not all(isinstance(a, str) and 0 < len(a.encode()) < 48 for a in agents):
        raise r.fail("scanner_agents", "at most 32 strings of 1-47 octets")
    if len(trusted) > 512:
        raise r.fail("trusted", "at most 512 networks")
    toll_table = r.get("toll", dict, {})
    version = r.get("tls_min_version", str, "TLSv1.2")
    if version not in TLS_VERSIONS:
        raise r.fail("tls_min_version", f"must be one of {', '.join(TLS_VERSIONS)}, got {version!r}")
    ca_file = r.get("tls_ca_file", str, "")
    if ca_file and not Path(ca_file).is_file():
        raise r.fail("tls_ca_file", f"file not found: {ca_file}")
    certs = []
    for i, item in enumerate(r.get("tls_certs", list, [])):
        if not isinstance(item, dict) or set(item) - {"domain", "cert", "key"} or \
                not all(isinstance(item.get(k, ""), str) for k in ("domain", "cert", "key")) or \
                not item.get("domain") or not item.get("cert"):
            raise r.fail("tls_certs", f"entry {i}: needs domain and cert (and optionally key) strings")
        for k in ("cert", "key"):
            if item.get(k) and not Path(item[k]).is_file():
                raise r.fail("tls_certs", f"entry {i}: {k} file not found: {item[k]}")
        certs.append(TlsCert(item["domain"].lower(), item["cert"], item.get("key", "")))
    sec = SecuritySettings(
        enabled=r.get("enabled", bool, True),
        flood_window=r.int_in("flood_window", 2, 1, 3600),
        flood_threshold=r.int_in("flood_threshold", 16, 0, 1_000_000),
        ban_secs=r.int_in("ban_secs", 300, 1, 86400 * 30),
        good_factor=r.int_in("good_factor", 8, 1, 1000),
        good_secs=r.int_in("good_secs", 3600, 0, 86400 * 7),
        auth_failures=r.int_in("auth_failures", 10, 0, 1_000_000),
        auth_window=r.int_in("auth_window", 60, 1, 86400),
        user_failures=r.int_in("user_failures", 30, 0, 1_000_000),
        user_window=r.int_in("user_window", 600, 1, 86400),
        scanner_agents=tuple(a.lower() for a in agents),
        trusted=tuple(trusted),
        table_size=r.int_in("table_size", 65536, 64, 1 << 24),
        tls_min_version=version,
        tls_ciphers=r.get("tls_ciphers", str, TLS_CIPHERS),
        tls_verify_peers=r.get("tls_verify_peers", bool, True),
        tls_ca_file=ca_file,
        tls_certs=tuple(certs),
    )
    r.finish()
    t = reader(path, "security.toll", toll_table)
    cc = t.get("country_code", str, "41")
    if not cc.isdigit() or not 1 <= len(cc) <= 3:
        raise t.fail("country_code", f"must be 1-3 digits, got {cc!r}")
    premium = _prefixes(t, "premium_prefixes", PREMIUM_PREFIXES)
    webhook = t.get("alert_webhook", str, "")
    if webhook and not re.match(r"^https?://[^\s/]+", webhook):
        raise t.fail("alert_webhook", f"must be an http:// or https:// URL, got {webhook!r}")
    mail = t.get("alert_mail", str, "")
    if mail and not re.match(r"^[^@\s,]+@[^@\s,]+$", mail):
        raise t.fail("alert_mail", f"must be one mail address, got {mail!r}")
    defaults = limits_from(t, TollLimits())
    tenants_table = t.get("tenants", dict, {})
    t.finish()
    tenants = []
    for name, sub in tenants_table.items():
        tr = reader(path, f"security.toll.tenants.{name}", sub)
        tenants.append((name, limits_from(tr, defaults)))
        tr.finish()
    return replace(sec, toll=TollSettings(country_code=cc, premium_prefixes=premium,
                                          defaults=defaults, tenants=tuple(tenants),
                                          alert_webhook=webhook, alert_mail=mail))
