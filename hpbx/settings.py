"""Server settings: the TOML file, validated and compiled into frozen dataclasses.

Every error names the file, the key and what is wrong (``ConfigError``). Relative paths in
the file are taken relative to the working directory the server starts in.
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpbx.errors import ConfigError
from hpbx.security import config as security_config
from hpbx.security.config import SecuritySettings

TRANSPORTS = ("udp", "tcp", "tls")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Listener:
    transport: str
    host: str
    port: int

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_v6 else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SipSettings:
    listen: tuple[Listener, ...] = (Listener("udp", "127.0.0.1", 5060),)
    advertise: str = ""  # public address written in Via/Contact; "" = the listener's address
    domain: str = ""  # SIP domain of the digest realm; "" = the tenant's domain
    tls_cert: str = ""
    tls_key: str = ""
    t1_ms: int = 500
    t2_ms: int = 4000
    t4_ms: int = 5000
    max_devices: int = 3
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    nonce_ttl: int = 300
    keepalive_interval: int = 25
    keepalive_grace: int = 120
    user_agent: str = "hpbx"
    # enabled (accepted) digest algorithms; what a 401/407 offers depends on the user
    # (flags.sha256_digest: SHA-256 first, then MD5; else MD5 alone), see hpbx.sip.auth
    digest_algorithms: tuple[str, ...] = ("MD5", "SHA-256")


DIGEST_ALGORITHMS = ("MD5", "SHA-256")


@dataclass(frozen=True, slots=True)
class RtpSettings:
    port_min: int = 20000
    port_max: int = 29999
    address: str = "127.0.0.1"  # address the relay sockets bind to
    address6: str = ""  # IPv6 beside an IPv4 address: dual-stack relay ([::] sockets), both families
    advertise: str = ""  # address written into SDP; "" = address
    workers: int = 0  # 0 = one per core
    media_timeout: int = 60
    strict_latching: bool = False


@dataclass(frozen=True, slots=True)
class AdminSettings:
    socket: str = "var/hpbx.sock"
    allow_uids: tuple[int, ...] = (0,)
    max_line: int = 1 << 20


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: str = "var/hpbx.sqlite3"
    # where provisioning and CDRs live: the embedded SQLite file at ``path``, or PostgreSQL
    backend: str = "sqlite"
    dsn: str = ""  # libpq connection string of the PostgreSQL database (backend "postgres")
    # registrations (and the cluster's call ownership) in Redis when set, e.g.
    # "unix:///run/redis.sock" or "redis://127.0.0.1:6379/0"; else in the SQLite file at ``path``
    redis: str = ""
    node: str = ""  # this node's name in a cluster (unique per node); "" = the host name
    cdr_retention_days: int = 0  # CDRs of calls older than this are deleted hourly; 0 = kept


STORE_BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Outgoing mail (hpbx/mail/spool.py): the SMTP server, and the spool that keeps every
    message on disk until that server accepted it."""

    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "hpbx@localhost"
    tls: str = "none"  # "none", "starttls" (upgrade after EHLO) or "tls" (implicit, port 465)
    verify_tls: bool = True
    username: str = ""  # AUTH when set
    password: str = ""
    timeout: int = 30  # seconds for connect and each command
    spool: str = ""  # spool directory; "" = "mail-spool" beside the store file
    retry_min: int = 30  # first retry after a 4xx or a server that is down, doubling ...
    retry_max: int = 3600  # ... up to this
    give_up_after: int = 5 * 86400  # seconds after submission a deferred message is given up
    bounce_to: str = ""  # where bounce notices go when the sender named no tenant admin
    tenant_quota_mb: int = 500  # spool space one tenant's waiting mail may take; 0 = no limit


@dataclass(frozen=True, slots=True)
class HttpListener:
    scheme: str  # "http" or "https"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The web face (hpbx/web): admin page, /rpc, phone provisioning, /metrics. Off when
    ``listen`` is empty."""

    listen: tuple[HttpListener, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    session_ttl: int = 8 * 3600  # seconds a login session lives without use
    login_failures: int = 5  # failed logins per source within login_window before lockout
    login_window: int = 300
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # /metrics without a login
    media_dir: str = ""  # announcement audio (hpbx/web/media.py); "" = "media" beside the store file


@dataclass(frozen=True, slots=True)
class HepSettings:
    """HEP v3 mirroring of SIP (hpbx/sip/hep.py): off when ``collector`` is empty."""

    collector: str = ""  # "udp:HOST:PORT" of a Homer / heplify-server
    capture_id: int = 2001
    password: str = ""


DEBIAN_MOH = "/usr/share/asterisk/moh"  # asterisk-moh-opsound-wav


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Prompts, music on hold and announcements (hpbx/media/prompts.py, README "System
    prompts"). Empty paths take the defaults the methods give."""

    dir: str = ""  # announcements (converted WAV); "" = "media" beside the store file
    prompts: str = ""  # built prompt sets <lang>/<name>.wav; "" = the project's build/prompts
    custom_prompts: str = ""  # operator drop-in <lang>/<name>.wav, moh/<class>/; "" = <dir>/prompts
    moh: str = DEBIAN_MOH  # the music class "default"

    def media_dir(self, store_path: str) -> str:
        return self.dir or str(Path(store_path).resolve().parent / "media")

    def prompts_dir(self) -> str:
        return self.prompts or str(Path(__file__).resolve().parent.parent / "build" / "prompts")

    def custom_dir(self, store_path: str) -> str:
        return self.custom_prompts or str(Path(self.media_dir(store_path)) / "prompts")


def parse_http_listener(text: str) -> HttpListener:
    """``http:127.0.0.1:8080``, ``https:[::1]:8443``."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https in {text!r}")
    probe = parse_listener("tcp:" + rest)
    return HttpListener(scheme, probe.host, probe.port)


@dataclass(frozen=True, slots=True)
class ConferenceSettings:
    """Conference rooms (hpbx/pbx/conference.py)."""

    max_participants: int = 50  # per room, unless the number sets its own
    max_rooms: int = 20  # open rooms per tenant
    pin_attempts: int = 3  # wrong PINs before the call is released
    pin_timeout: int = 6  # seconds to type a PIN (and between its digits)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: signalling processes (hpbx/cluster/workers.py, README "Signalling on every
    core")."""
    workers: int = 1  # SIP worker processes sharing the UDP listeners; 0 = one per core
    spread: str = "source"  # how the kernel picks a worker: "source" (its hash) or "random" (BPF)


@dataclass(frozen=True, slots=True)
class Settings:
    path: str = ""
    sip: SipSettings = field(default_factory=SipSettings)
    rtp: RtpSettings = field(default_factory=RtpSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    log_level: str = "info"
    provision: tuple[str, ...] = ()  # tenant TOML files imported when the store is empty
    http: HttpSettings = field(default_factory=HttpSettings)
    hep: HepSettings = field(default_factory=HepSettings)
    conference: ConferenceSettings = field(default_factory=ConferenceSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    server: ServerSettings = field(default_factory=ServerSettings)


class _Reader:
    """Reads one table of the file, remembering which keys were used."""

    def __init__(self, path: str, section: str, table: Any):
        self.path = path
        self.section = section
        if table is None:
            table = {}
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        self.table = table
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.section}.{key}: {problem}")

    def get(self, key: str, kind: type | tuple, default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if kind is int and isinstance(value, bool):
            raise self.fail(key, "must be an integer, not a boolean")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {names}, got {type(value).__name__} {value!r}")
        return value

    def int_in(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(key, int, default)
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def address(self, key: str, default: str, allow_empty: bool = False) -> str:
        value = self.get(key, str, default)
        if value == "" and allow_empty:
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise self.fail(key, f"not an IP address: {value!r}") from None
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def parse_listener(text: str) -> Listener:
    """``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``, ``tls:0.0.0.0:5061``."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)} in {text!r}")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6]:port in {text!r}")
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r} in {text!r}") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535 in {text!r}")
    return Listener(transport, host, int(port))


def parse_port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ValueError(f"expected LOW-HIGH, got {text!r}")
    low, high = int(lo), int(hi)
    if not 1024 <= low < high <= 65535:
        raise ValueError(f"range must lie within 1024-65535 with LOW < HIGH, got {text!r}")
    if high - low < 3:
        raise ValueError(f"range must hold at least two port pairs, got {text!r}")
    return low, high


def load(path: str | Path) -> Settings:
    """Read and validate the settings file; raise ``ConfigError`` naming file, key and problem."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_dict(data, path)


def from_dict(data: dict, path: str = "<settings>") -> Settings:
    known = {"sip", "rtp", "admin", "store", "smtp", "log", "provision", "security", "http",
             "hep", "conference", "media", "server"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: {key}: unknown section")

    r = _Reader(path, "sip", data.get("sip"))
    listen_raw = r.get("listen", list, ["udp:127.0.0.1:5060"])
    if not listen_raw:
        raise r.fail("listen", "needs at least one listener")
    listeners = []
    for item in listen_raw:
        if not isinstance(item, str):
            raise r.fail("listen", f"entries must be strings, got {item!r}")
        try:
            listeners.append(parse_listener(item))
        except ValueError as exc:
            raise r.fail("listen", str(exc)) from None
    tls_cert = r.get("tls_cert", str, "")
    tls_key = r.get("tls_key", str, "")
    if any(lst.transport == "tls" for lst in listeners):
        if not tls_cert:
            raise r.fail("tls_cert", "a tls: listener needs a certificate path")
        if not Path(tls_cert).is_file():
            raise r.fail("tls_cert", f"file not found: {tls_cert}")
        if tls_key and not Path(tls_key).is_file():
            raise r.fail("tls_key", f"file not found: {tls_key}")
    t1 = r.int_in("t1_ms", 500, 10, 10_000)
    algorithms = r.get("digest_algorithms", list, list(DIGEST_ALGORITHMS))
    if not algorithms or any(a not in DIGEST_ALGORITHMS for a in algorithms):
        raise r.fail("digest_algorithms",
                     f"must be a non-empty list of {', '.join(DIGEST_ALGORITHMS)}, got {algorithms!r}")
    sip = SipSettings(
        listen=tuple(listeners),
        advertise=r.address("advertise", "", allow_empty=True),
        domain=r.get("domain", str, ""),
        tls_cert=tls_cert,
        tls_key=tls_key,
        t1_ms=t1,
        t2_ms=r.int_in("t2_ms", 4000, t1, 60_000),
        t4_ms=r.int_in("t4_ms", 5000, 0, 60_000),
        max_devices=r.int_in("max_devices", 3, 1, 100),
        min_expires=r.int_in("min_expires", 60, 1, 86400),
        max_expires=r.int_in("max_expires", 3600, 1, 86400 * 7),
        default_expires=r.int_in("default_expires", 3600, 1, 86400 * 7),
        nonce_ttl=r.int_in("nonce_ttl", 300, 1, 86400),
        keepalive_interval=r.int_in("keepalive_interval", 25, 0, 3600),
        keepalive_grace=r.int_in("keepalive_grace", 120, 0, 86400),
        user_agent=r.get("user_agent", str, "hpbx"),
        digest_algorithms=tuple(algorithms),
    )
    if sip.min_expires > sip.max_expires:
        raise r.fail("min_expires", f"must not exceed max_expires ({sip.max_expires})")
    r.finish()

    r = _Reader(path, "rtp", data.get("rtp"))
    try:
        port_min, port_max = parse_port_range(r.get("ports", str, "20000-29999"))
    except ValueError as exc:
        raise r.fail("ports", str(exc)) from None
    rtp = RtpSettings(
        port_min=port_min,
        port_max=port_max,
        address=r.address("address", "127.0.0.1"),
        address6=r.address("address6", "", allow_empty=True),
        advertise=r.address("advertise", "", allow_empty=True),
        workers=r.int_in("workers", 0, 0, 64),
        media_timeout=r.int_in("media_timeout", 60, 0, 86400),
        strict_latching=r.get("strict_latching", bool, False),
    )
    r.finish()

    if rtp.address6 and (":" not in rtp.address6 or ":" in rtp.address):
        raise ConfigError(f"{path}: rtp.address6: must be an IPv6 address beside an IPv4 "
                          f"rtp.address, got {rtp.address6!r} beside {rtp.address!r}")

    r = _Reader(path, "admin", data.get("admin"))
    uids = r.get("allow_uids", list, [0])
    if not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in uids):
        raise r.fail("allow_uids", f"must be a list of non-negative integers, got {uids!r}")
    admin = AdminSettings(
        socket=r.get("socket", str, "var/hpbx.sock"),
        allow_uids=tuple(uids),
        max_line=r.int_in("max_line", 1 << 20, 1024, 1 << 26),
    )
    r.finish()

    r = _Reader(path, "store", data.get("store"))
    store = StoreSettings(path=r.get("path", str, "var/hpbx.sqlite3"),
                          backend=r.get("backend", str, "sqlite"), dsn=r.get("dsn", str, ""),
                          redis=r.get("redis", str, ""), node=r.get("node", str, ""),
                          cdr_retention_days=r.int_in("cdr_retention_days", 0, 0, 100_000))
    if not store.path:
        raise r.fail("path", "must not be empty")
    if store.backend not in STORE_BACKENDS:
        raise r.fail("backend", f"must be one of {', '.join(STORE_BACKENDS)}, got {store.backend!r}")
    if store.backend == "postgres" and not store.dsn:
        raise r.fail("dsn", 'is required with backend = "postgres"')
    if store.redis and not store.redis.startswith(("redis://", "rediss://", "unix://")):
        raise r.fail("redis", f"must be a redis://, rediss:// or unix:// URL, got {store.redis!r}")
    r.finish()

    r = _Reader(path, "smtp", data.get("smtp"))
    smtp = _smtp_settings(r)
    r.finish()

    r = _Reader(path, "log", data.get("log"))
    level = r.get("level", str, "info").lower()
    if level not in LOG_LEVELS:
        raise r.fail("level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    r.finish()

    r = _Reader(path, "provision", data.get("provision"))
    files = r.get("files", list, [])
    if not all(isinstance(f, str) for f in files):
        raise r.fail("files", "must be a list of paths")
    r.finish()

    security = security_config.from_dict(_Reader, path, data.get("security"))
    http = _http_settings(path, data.get("http"))
    hep = _hep_settings(path, data.get("hep"))
    r = _Reader(path, "conference", data.get("conference"))
    conference = ConferenceSettings(max_participants=r.int_in("max_participants", 50, 2, 10000),
                                    max_rooms=r.int_in("max_rooms", 20, 1, 100000),
                                    pin_attempts=r.int_in("pin_attempts", 3, 1, 10),
                                    pin_timeout=r.int_in("pin_timeout", 6, 2, 60))
    r.finish()
    r = _Reader(path, "media", data.get("media"))
    media = MediaSettings(dir=r.get("dir", str, ""), prompts=r.get("prompts", str, ""),
                          custom_prompts=r.get("custom_prompts", str, ""),
                          moh=r.get("moh", str, DEBIAN_MOH))
    r.finish()

    from hpbx.cluster.workers import server_settings
    server = server_settings(_Reader(path, "server", data.get("server")), sip, rtp)

    return Settings(path=path, sip=sip, rtp=rtp, admin=admin, store=store, smtp=smtp,
                    log_level=level, provision=tuple(files), security=security, http=http,
                    hep=hep, conference=conference, media=media, server=server)


SMTP_TLS = ("none", "starttls", "tls")


def _smtp_settings(r: _Reader) -> SmtpSettings:
    from hpbx.mail import valid_address

    smtp = SmtpSettings(
        host=r.get("host", str, "127.0.0.1"),
        port=r.int_in("port", 25, 1, 65535),
        sender=r.get("sender", str, "hpbx@localhost"),
        tls=r.get("tls", str, "none"),
        verify_tls=r.get("verify_tls", bool, True),
        username=r.get("username", str, ""),
        password=r.get("password", str, ""),
        timeout=r.int_in("timeout", 30, 1, 600),
        spool=r.get("spool", str, ""),
        retry_min=r.int_in("retry_min", 30, 1, 86400),
        retry_max=r.int_in("retry_max", 3600, 1, 86400),
        give_up_after=r.int_in("give_up_after", 5 * 86400, 1, 365 * 86400),
        bounce_to=r.get("bounce_to", str, ""),
        tenant_quota_mb=r.int_in("tenant_quota_mb", 500, 0, 1 << 20),
    )
    if smtp.tls not in SMTP_TLS:
        raise r.fail("tls", f"must be one of {', '.join(SMTP_TLS)}, got {smtp.tls!r}")
    if smtp.retry_max < smtp.retry_min:
        raise r.fail("retry_max", f"must not be below retry_min ({smtp.retry_min})")
    for key in ("sender", "bounce_to"):
        value = getattr(smtp, key)
        if value and not valid_address(value) and not value.endswith("@localhost"):
            raise r.fail(key, f"not an e-mail address: {value!r}")
    return smtp


def _hep_settings(path: str, table: Any) -> HepSettings:
    from hpbx.sip.hep import parse_collector

    r = _Reader(path, "hep", table)
    hep = HepSettings(collector=r.get("collector", str, ""),
                      capture_id=r.int_in("capture_id", 2001, 0, 0xFFFFFFFF),
                      password=r.get("password", str, ""))
    if hep.collector:
        try:
            parse_collector(hep.collector)
        except ValueError as exc:
            raise r.fail("collector", str(exc)) from None
    r.finish()
    return hep


def _http_settings(path: str, table: Any) -> HttpSettings:
    r = _Reader(path, "http", table)
    listeners = []
    for item in r.get("listen", list, []):
        if not isinstance(item, str):
            raise r.fail("listen", f"entries must be strings, got {item!r}")
        try:
            listeners.append(parse_http_listener(item))
        except ValueError as exc:
            raise r.fail("listen", str(exc)) from None
    tls_cert, tls_key = r.get("tls_cert", str, ""), r.get("tls_key", str, "")
    if any(lst.scheme == "https" for lst in listeners):
        if not tls_cert:
            raise r.fail("tls_cert", "an https: listener needs a certificate path")
        if not Path(tls_cert).is_file():
            raise r.fail("tls_cert", f"file not found: {tls_cert}")
        if tls_key and not Path(tls_key).is_file():
            raise r.fail("tls_key", f"file not found: {tls_key}")
    allow = r.get("metrics_allow", list, ["127.0.0.0/8", "::1/128"])
    for net in allow:
        try:
            ipaddress.ip_network(net, strict=False)
        except (TypeError, ValueError):
            raise r.fail("metrics_allow", f"not a network: {net!r}") from None
    http = HttpSettings(
        listen=tuple(listeners), tls_cert=tls_cert, tls_key=tls_key,
        session_ttl=r.int_in("session_ttl", 8 * 3600, 60, 30 * 86400),
        login_failures=r.int_in("login_failures", 5, 1, 1000),
        login_window=r.int_in("login_window", 300, 1, 86400),
        metrics_allow=tuple(allow),
        media_dir=r.get("media_dir", str, ""),
    )
    r.finish()
    return http
