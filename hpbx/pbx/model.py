"""The provisioned PBX: tenants, users, groups, trunks, public numbers with ten dial-plan slots,
special switches, announcements and call records, as frozen slotted dataclasses.

Every class converts from and to plain JSON-able dicts (``from_dict`` / ``to_dict``), which is
the shape the admin layer, the store and the tenant TOML files use. ``from_dict`` validates one
object on its own and raises ``ValidationError(field, reason)`` with a dotted field path
(list indices are 0-based: ``slots[10]`` is an eleventh slot). Checks that need the other
objects of the tenant (references, unique internal numbers, LINK loops) live in
``check_references``.

Keys: a tenant is identified by its name, a user by its username (unique server-wide), a group,
trunk or switch by (tenant, name), a public number by its digits (unique server-wide), an
announcement by (tenant, id). Slot *numbers* as people say them are 1..10 (``use_slot``, CDR
``slot``); field paths use list indices.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hpbx.errors import ValidationError
from hpbx.pbx.snapshot import SharedDict

SLOT_COUNT = 10
RESERVED_INTERNAL = frozenset(["700", *map(str, range(701, 721)), "801", "900", "901", "902"])
RESERVED_TEXT = "reserved (700-720, 801, 900-902)"
ALLUSERS = "ALLUSERS"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
USAGES = ("telephone", "fax", "conference", "followme")
SLOT_MODES = ("weekday", "date")
ROW_MODE_RING = 1
ROW_MODES = (ROW_MODE_RING,)  # an integer enum so further row modes can be added (FEATURES 3.7)
ROW_DURATION_MAX = 600
TARGET_KINDS = ("user", "group", "external", "link")
TRANSPORTS = ("udp", "tcp", "tls")
DIVERSION_POLICIES = ("displayed", "original_caller", "dialled")
CALLER_ID_FALLBACKS = ("default_number", "withheld")
ANNOUNCEMENT_KINDS = ("announcement", "music")
VOICEMAIL_FORMATS = ("wav", "mp3")
MAX_LINK_HOPS = 5

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_OBJNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")
_INTERNAL_RE = re.compile(r"[1-9][0-9]{1,5}")
_PUBLIC_RE = re.compile(r"\+?[0-9]{3,20}")
_EXTERNAL_RE = re.compile(r"\+?[0-9*#]{2,32}")
_HOST_RE = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
_TIME_RE = re.compile(r"([0-9]{2}):([0-9]{2})")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*")


# ---------------------------------------------------------------- field reading


class _Reader:
    """Reads one dict, remembering used keys so that unknown keys are rejected by name."""

    __slots__ = ("data", "path", "used")

    def __init__(self, data: Any, path: str):
        if not isinstance(data, Mapping):
            raise ValidationError(path or "<root>", f"must be an object, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, reason: str) -> ValidationError:
        return ValidationError(self.name(key), reason)

    def get(self, key: str, kind: type | tuple, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _REQUIRED:
                raise self.fail(key, "is required")
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool):
            raise self.fail(key, "must be an integer, not a boolean")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {_KIND_WORDS.get(want, want)}, got {value!r}")
        return value

    def text(self, key: str, default: Any = "", pattern: re.Pattern | None = None,
             what: str = "", max_len: int = 256) -> str:
        value = self.get(key, str, default)
        if default is _REQUIRED and not value:
            raise self.fail(key, "must not be empty")
        if len(value) > max_len:
            raise self.fail(key, f"longer than {max_len} characters")
        if any(ord(c) < 32 for c in value):
            raise self.fail(key, "contains control characters")
        if value and pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value!r} is not a valid {what or key}")
        return value

    def choice(self, key: str, options: tuple, default: Any) -> Any:
        value = self.get(key, type(options[0]), default)
        if value not in options:
            raise self.fail(key, f"{value!r} is not one of {', '.join(map(str, options))}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        return self.get(key, bool, default)

    def integer(self, key: str, default: Any, lo: int, hi: int) -> int:
        value = self.get(key, int, default)
        if not lo <= value <= hi:
            raise self.fail(key, f"{value} is outside {lo}-{hi}")
        return value

    def strings(self, key: str, pattern: re.Pattern | None = None, what: str = "") -> tuple[str, ...]:
        items = self.get(key, (list, tuple), [])
        out = []
        for i, item in enumerate(items):
            name = f"{self.name(key)}[{i}]"
            if not isinstance(item, str):
                raise ValidationError(name, f"must be a string, got {item!r}")
            if pattern is not None and not pattern.fullmatch(item):
                raise ValidationError(name, f"{item!r} is not a valid {what or key}")
            if item in out:
                raise ValidationError(name, f"{item!r} is listed twice")
            out.append(item)
        return tuple(out)

    def finish(self) -> None:
        unknown = sorted(k for k in self.data if k not in self.used)
        if unknown:
            raise self.fail(str(unknown[0]), "unknown field")


_REQUIRED = object()
_KIND_WORDS = {"str": "a string", "int": "an integer", "bool": "true or false",
               "list or tuple": "a list", "dict": "an object"}


def parse_hhmm(text: str) -> int:
    """``"08:30"`` → 510 (minutes since midnight); ``ValueError`` when not a valid time."""
    m = _TIME_RE.fullmatch(text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f"{text} is not a valid time (HH:MM, 00:00-23:59)")
    return int(m.group(1)) * 60 + int(m.group(2))


def _time(r: _Reader, key: str, default: str) -> str:
    value = r.get(key, str, default)
    try:
        parse_hhmm(value)
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None
    return value


def _date(r: _Reader, key: str) -> str:
    value = r.get(key, str, "")
    if value:
        try:
            if date.fromisoformat(value).isoformat() != value:
                raise ValueError
        except ValueError:
            raise r.fail(key, f"{value} is not a valid date (YYYY-MM-DD)") from None
    return value


def _instant(r: _Reader, key: str) -> str:
    """An aware ISO 8601 timestamp, or ""."""
    value = r.get(key, str, "")
    if value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise r.fail(key, f"{value} is not an ISO 8601 timestamp") from None
        if parsed.tzinfo is None:
            raise r.fail(key, f"{value} needs a UTC offset")
    return value


def _email(r: _Reader, key: str) -> str:
    return r.text(key, "", _EMAIL_RE, "e-mail address")


def _email_list(r: _Reader, key: str) -> str:
    """Comma-separated e-mail addresses (fax numbers), normalised to "a@x, b@y"."""
    value = r.text(key, "", max_len=1024)
    parts = [p.strip() for p in value.split(",") if p.strip()]
    for p in parts:
        if not _EMAIL_RE.fullmatch(p):
            raise r.fail(key, f"{p!r} is not a valid e-mail address")
    return ", ".join(parts)


def _compact(d: dict, defaults: dict) -> dict:
    """Drops keys whose value equals the default: keeps exported TOML short and stable."""
    return {k: v for k, v in d.items() if defaults.get(k, _REQUIRED) != v}


def check_internal_number(value: str, name: str = "internal_number") -> None:
    if not _INTERNAL_RE.fullmatch(value):
        raise ValidationError(name, f"{value!r} is not a valid internal number (2-6 digits, not starting with 0)")
    if value in RESERVED_INTERNAL:
        raise ValidationError(name, f"{value} is {RESERVED_TEXT}")


def check_username(value: str, name: str = "username") -> None:
    if not _USERNAME_RE.fullmatch(value):
        raise ValidationError(name, f"{value!r} is not a valid username (letters, digits, _.+-; max 64)")


def check_tenant_name(value: str, name: str = "name") -> None:
    if not _NAME_RE.fullmatch(value):
        raise ValidationError(name, f"{value!r} is not a valid tenant name (a-z, 0-9, _.-; max 63)")


def check_public_number(value: str, name: str = "number") -> None:
    if not _PUBLIC_RE.fullmatch(value):
        raise ValidationError(name, f"{value!r} is not a valid public number (3-20 digits, optional leading +)")


def number_keys(number: str, country: str = "41") -> tuple[str, ...]:
    """The spellings one public number is found under: national ``0441234567``,
    E.164 ``+41441234567`` and ``0041441234567`` (country code of the PBX, Switzerland)."""
    if number.startswith("+"):
        national = "0" + number[1 + len(country):] if number[1:].startswith(country) else ""
        e164 = number
    elif number.startswith("00"):
        e164 = "+" + number[2:]
        national = "0" + number[2 + len(country):] if number[2:].startswith(country) else ""
    elif number.startswith("0"):
        national = number
        e164 = "+" + country + number[1:]
    else:
        return (number,)
    keys = [number]
    for k in (national, e164, "00" + e164[1:]):
        if k and k not in keys:
            keys.append(k)
    return tuple(keys)


# ---------------------------------------------------------------- tenant, users, groups, trunks


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    domain: str = ""
    timezone: str = "Europe/Zurich"
    trunk: str = ""  # name of the tenant's trunk for external numbers; "" = none
    # caller ID towards the network of a user with no displayed number (never an internal one):
    # "default_number" presents ``default_number`` (withheld while it is ""), "withheld" sends
    # From anonymous with P-Asserted-Identity (the default number) and Privacy: id (RFC 3325)
    default_number: str = ""  # one of the tenant's public numbers; "" = none
    caller_id_fallback: str = "default_number"
    # push notifications (hpbx.pbx.push): JSON POSTs signed with HMAC-SHA256 of the body
    push_url: str = ""  # "" = none
    push_secret: str = ""
    voicemail_format: str = "wav"  # attachment of voice messages: "wav" or "mp3" (hpbx.pbx.voicemail)
    # media services (hpbx/media/prompts.py): the prompt folder callers hear, and the music on
    # hold: a music class ("default" ships) or "announcement:<id>" of an announcement of kind music
    language: str = "de"
    music_on_hold: str = "default"
    # call recording (hpbx.pbx.recording): played to both parties when a recording starts:
    # "" none, "prompt" (system prompt call-recorded), "announcement:<id>"
    recording_notice: str = ""

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> "Tenant":
        r = _Reader(data, path)
        name = r.get("name", str, _REQUIRED)
        check_tenant_name(name, r.name("name"))
        tz = r.text("timezone", "Europe/Zurich")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise r.fail("timezone", f"{tz!r} is not a known time zone") from None
        default_number = r.text("default_number")
        if default_number:
            check_public_number(default_number, r.name("default_number"))
        obj = cls(name=name, domain=r.text("domain", "", _HOST_RE, "domain"), timezone=tz,
                  trunk=r.text("trunk", "", _OBJNAME_RE, "trunk name"), default_number=default_number,
                  caller_id_fallback=r.choice("caller_id_fallback", CALLER_ID_FALLBACKS,
                                              "default_number"),
                  push_url=r.text("push_url", "", _URL_RE, "http(s) URL", max_len=1024),
                  push_secret=r.text("push_secret", "", max_len=256),
                  voicemail_format=r.choice("voicemail_format", VOICEMAIL_FORMATS, "wav"),
                  language=r.text("language", "de", _LANGUAGE_RE, "language (en, de, fr_CH ...)"),
                  music_on_hold=r.text("music_on_hold", "default", _MOH_RE,
                                       "music class name or announcement:<id>"),
                  recording_notice=r.text("recording_notice", "", _NOTICE_RE,
                                          '"", "prompt" or announcement:<id>'))
        r.finish()
        return obj

    def to_dict(self, compact: bool = False) -> dict:
        d = {"name": self.name, "domain": self.domain, "timezone": self.timezone, "trunk": self.trunk,
             "default_number": self.default_number, "caller_id_fallback": self.caller_id_fallback,
             "push_url": self.push_url, "push_secret": self.push_secret,
             "voicemail_format": self.voicemail_format,
             "language": self.language, "music_on_hold": self.music_on_hold,
             "recording_notice": self.recording_notice}
        return _compact(d, _TENANT_DEFAULTS) if compact else d


_TENANT_DEFAULTS = {"domain": "", "timezone": "Europe/Zurich", "trunk": "", "default_number": "",
                    "caller_id_fallback": "default_number", "push_url": "", "push_secret": "",
                    "voicemail_format": "wav",
                    "language": "de",
                    "music_on_hold": "default", "recording_notice": ""}
_NOTICE_RE = re.compile(r"prompt|announcement:[1-9][0-9]{0,5}")
_LANGUAGE_RE = re.compile(r"[a-z]{2}(_[A-Z]{2})?")
_MOH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}|announcement:[1-9][0-9]{0,5}")


@dataclass(frozen=True, slots=True)
class UserDetails:
    first_name: str = ""
    name: str = ""
    company: str = ""
    mobile: str = ""
    nickname: str = ""
    email: str = ""

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "UserDetails":
        r = _Reader(data, path)
        obj = cls(first_name=r.text("first_name"), name=r.text("name"), company=r.text("company"),
                  mobile=r.text("mobile", "", _EXTERNAL_RE, "phone number"),
                  nickname=r.text("nickname"), email=_email(r, "email"))
        r.finish()
        return obj

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def full_name(self) -> str:
        return " ".join(p for p in (self.first_name, self.name) if p)


@dataclass(frozen=True, slots=True)
class UserFlags:
    """The settings-tab flags (FEATURES 4.8); each defaults to off."""

    busy_on_active_call: bool = False
    busy_while_ringing: bool = False
    show_internal_number_internally: bool = False
    not_in_allusers: bool = False
    hide_user: bool = False
    behind_nat: bool = False
    may_record: bool = False
    cti_access: bool = False
    may_manage_announcements: bool = False
    may_manage_public_addressbook: bool = False
    extended_call_info: bool = False
    missed_call_mail: bool = False
    push_incoming: bool = False
    push_missed: bool = False
    parallel_softphone_sessions: bool = False
    no_tls: bool = False
    # the user's phones answer SHA-256 digest challenges (RFC 8760): theirs offer SHA-256 first;
    # others get MD5 alone, since phones such as baresip 1.0 give up on a 401 with two challenges
    sha256_digest: bool = False
    dnd: bool = False  # do not disturb: calls to the user fail with 486 (star codes *78/*79)
    personal_conference_room: bool = False  # FEATURES 4.8.5 / 10.2: a room on the personal dial-in

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "UserFlags":
        r = _Reader(data, path)
        obj = cls(**{f.name: r.flag(f.name) for f in fields(cls)})
        r.finish()
        return obj

    def to_dict(self, compact: bool = False) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not compact or getattr(self, f.name)}


FORWARD_KINDS = ("unconditional", "busy", "no_answer", "unavailable")


def _usernames(r: "_Reader", key: str) -> tuple[str, ...]:
    names = r.get(key, list, [])
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValidationError(f"{r.name(key)}[{i}]", "must be a username")
        check_username(name, f"{r.name(key)}[{i}]")
    return tuple(dict.fromkeys(names))


def check_forward_target(value: str, name: str) -> None:
    """An internal number (2-6 digits) or an external number (0... or +...)."""
    if not re.fullmatch(r"\+?[0-9]{2,20}", value):
        raise ValidationError(name, f"{value!r} is not an internal or external number")


@dataclass(frozen=True, slots=True)
class UserForwarding:
    """Forwarding rules (FEATURES 13.3) for calls addressed to the user directly (internal
    calls), not for dial-plan rows. Each target is an internal or an external number; "" = off."""

    unconditional: str = ""
    busy: str = ""
    no_answer: str = ""
    no_answer_after: int = 20  # seconds the user rings before ``no_answer`` takes over
    unavailable: str = ""  # no device registered
    # optional time window per rule: (kind, window) pairs; a window is a weekday slot's days and
    # time_start/time_end (same semantics: inclusive, wraps midnight); outside it the rule is off
    windows: tuple[tuple[str, "DialPlan"], ...] = ()

    def window(self, kind: str) -> "DialPlan | None":
        for k, w in self.windows:
            if k == kind:
                return w
        return None

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "UserForwarding":
        r = _Reader(data, path)
        values = {}
        for kind in FORWARD_KINDS:
            values[kind] = r.text(kind)
            if values[kind]:
                check_forward_target(values[kind], r.name(kind))
        windows = []
        raw = r.get("windows", Mapping, {})
        for kind, spec in raw.items():
            where = f"{r.name('windows')}.{kind}"
            if kind not in FORWARD_KINDS:
                raise ValidationError(where, f"is not one of {', '.join(FORWARD_KINDS)}")
            if not isinstance(spec, Mapping) or set(spec) - {"days", "time_start", "time_end"}:
                raise ValidationError(where, "must be an object of days, time_start, time_end")
            windows.append((kind, DialPlan.from_dict({"active": True, "mode": "weekday", **spec}, where)))
        obj = cls(**values, no_answer_after=r.integer("no_answer_after", 20, 1, 600),
                  windows=tuple(windows))
        r.finish()
        return obj

    def to_dict(self, compact: bool = False) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["windows"] = {k: {"days": list(w.days), "time_start": w.time_start, "time_end": w.time_end}
                        for k, w in self.windows}
        if not compact:
            return d
        default = UserForwarding().to_dict()
        return {k: v for k, v in d.items() if v != default[k]}


_PIN_RE = re.compile(r"[0-9]{4,12}")


@dataclass(frozen=True, slots=True)
class UserMailbox:
    """The user's mailbox tab (FEATURES 8.2; hpbx.pbx.voicemail): messages left when an
    internal call is not answered within ``timeout`` s (or the user is busy or unreachable)."""

    enabled: bool = False
    email: str = ""  # messages are mailed here ("" = the user's details.email, else not mailed)
    greeting: int = 0  # announcement id; 0 = the default prompt with the user's name or number
    timeout: int = 20  # seconds an internal call rings before the mailbox answers
    pin: str = ""  # 4-12 digits for access from another phone ("" = only from the user's own)
    keep: bool = True  # keep messages on the server (False: only mail them)
    mwi_unsolicited: bool = False  # NOTIFY message-summary to registered phones without SUBSCRIBE

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "UserMailbox":
        r = _Reader(data, path)
        obj = cls(enabled=r.flag("enabled"), email=_email(r, "email"),
                  greeting=r.integer("greeting", 0, 0, 999_999), timeout=r.integer("timeout", 20, 1, 600),
                  pin=r.text("pin", "", _PIN_RE, "PIN (4-12 digits)"), keep=r.flag("keep", True),
                  mwi_unsolicited=r.flag("mwi_unsolicited"))
        r.finish()
        return obj

    def to_dict(self, compact: bool = False) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if compact:
            default = UserMailbox().to_dict()
            d = {k: v for k, v in d.items() if v != default[k]}
        return d


@dataclass(frozen=True, slots=True)
class User:
    tenant: str
    username: str  # SIP digest user, unique server-wide; also the user's id
    sip_password: str
    internal_number: str = ""
    displayed_number: str = ""  # one of the tenant's public numbers; "" = none
    displayed_number_diversion: str = "displayed"  # caller ID on legs created on the user's behalf
    cti_password: str = ""
    details: UserDetails = field(default_factory=UserDetails)
    flags: UserFlags = field(default_factory=UserFlags)
    max_calls: int = 0  # "signal busy if more than N calls" (FEATURES 15.2); 0 = call waiting
    forward: UserForwarding = field(default_factory=UserForwarding)
    pickup: tuple[str, ...] = ()  # users whose ringing calls this user may pick up (FEATURES 13.1)
    supervise: tuple[str, ...] = ()  # users whose dialog state (BLF) this user may watch (14.2)
    presence_groups: tuple[str, ...] = ()  # presence is seen inside a shared group (14.3); () = the default group
    conference_pin: str = ""  # digits: picks the user's personal room on the dial-in number (10.2)
    mailbox: UserMailbox = field(default_factory=UserMailbox)  # FEATURES 8.2
    cti_groups: tuple[str, ...] = ()  # CTI groups: the sections of the CTI colleague list (14.3)

    @property
    def id(self) -> str:
        return self.username

    @classmethod
    def from_dict(cls, data: Any, path: str = "", tenant: str | None = None) -> "User":
        r = _Reader(data, path)
        tenant = _tenant_of(r, data, tenant)
        username = r.get("username", str, _REQUIRED)
        check_username(username, r.name("username"))
        password = r.get("sip_password", str, _REQUIRED)
        if not 4 <= len(password) <= 128 or any(ord(c) < 32 or c in '"\\' for c in password):
            raise r.fail("sip_password", "must be 4-128 printable characters without quotes or backslashes")
        internal = r.text("internal_number")
        if internal:
            check_internal_number(internal, r.name("internal_number"))
        displayed = r.text("displayed_number")
        if displayed:
            check_public_number(displayed, r.name("displayed_number"))
        obj = cls(
            tenant=tenant, username=username, sip_password=password, internal_number=internal,
            displayed_number=displayed,
            displayed_number_diversion=r.choice("displayed_number_diversion", DIVERSION_POLICIES, "displayed"),
            cti_password=r.text("cti_password", "", max_len=128),
            details=UserDetails.from_dict(r.get("details", Mapping, {}), r.name("details")),
            flags=UserFlags.from_dict(r.get("flags", Mapping, {}), r.name("flags")),
            max_calls=r.integer("max_calls", 0, 0, 100),
            forward=UserForwarding.from_dict(r.get("forward", Mapping, {}), r.name("forward")),
            pickup=_usernames(r, "pickup"),
            supervise=_usernames(r, "supervise"),
            presence_groups=_usernames(r, "presence_groups"),
            conference_pin=_pin(r, "conference_pin"),
            mailbox=UserMailbox.from_dict(r.get("mailbox", Mapping, {}), r.name("mailbox")),
            cti_groups=tuple(r.strings("cti_groups", _OBJNAME_RE, "group name")),
        )
        r.finish()
        return obj

    def to_dict(self, compact: bool = False, with_tenant: bool = True) -> dict:
        d = {"tenant": self.tenant, "username": self.username, "sip_password": self.sip_password,
             "internal_number": self.internal_number, "displayed_number": self.displayed_number,
             "displayed_number_diversion": self.displayed_number_diversion,
             "cti_password": self.cti_password, "details": self.details.to_dict(),
             "flags": self.flags.to_dict(compact), "max_calls": self.max_calls,
             "forward": self.forward.to_dict(compact), "pickup": list(self.pickup),
             "supervise": list(self.supervise), "presence_groups": list(self.presence_groups),
             "conference_pin": self.conference_pin,
             "mailbox": self.mailbox.to_dict(compact), "cti_groups": list(self.cti_groups)}
        if not with_tenant:
            del d["tenant"]
        if compact:
            d = _compact(d, _USER_DEFAULTS)
            details = _compact(d.get("details", {}), UserDetails().to_dict())
            if details:
                d["details"] = details
            else:
                d.pop("details", None)
            if not d.get("flags"):
                d.pop("flags", None)
            if not d.get("forward"):
                d.pop("forward", None)
            for key in ("pickup", "supervise", "presence_groups", "mailbox", "cti_groups"):
                if not d.get(key):
                    d.pop(key, None)
        return d


_USER_DEFAULTS = {"internal_number": "", "displayed_number": "", "displayed_number_diversion": "displayed",
                  "cti_password": "", "max_calls": 0, "conference_pin": ""}

_PIN_RE = re.compile(r"[0-9]{1,16}")


def _pin(r: "_Reader", key: str) -> str:
    """A PIN typed on a keypad: 1-16 digits, or "" for none."""
    pin = r.text(key, "", max_len=16)
    if pin and not _PIN_RE.fullmatch(pin):
        raise r.fail(key, "must be 1-16 digits")
    return pin


@dataclass(frozen=True, slots=True)
class Group:
    tenant: str
    name: str
    internal_number: str = ""
    members: tuple[str, ...] = ()  # usernames, in ring order
    logged_out: tuple[str, ...] = ()  # members who logged themselves out: skipped when expanded

    @classmethod
    def from_dict(cls, data: Any, path: str = "", tenant: str | None = None) -> "Group":
        r = _Reader(data, path)
        tenant = _tenant_of(r, data, tenant)
        name = r.text("name", _REQUIRED, _OBJNAME_RE, "group name", 64)
        if name.upper() == ALLUSERS:
            raise r.fail("name", f"{ALLUSERS} is the built-in group of every user and cannot be created")
        internal = r.text("internal_number")
        if internal:
            check_internal_number(internal, r.name("internal_number"))
        members = r.strings("members", _USERNAME_RE, "username")
        logged_out = r.strings("logged_out", _USERNAME_RE, "username")
        for i, u in enumerate(logged_out):
            if u not in members:
                raise ValidationError(f"{r.name('logged_out')}[{i}]", f"{u!r} is not a member of the group")
        r.finish()
        return cls(tenant, name, internal, members, logged_out)

    def to_dict(self, compact: bool = False, with_tenant: bool = True) -> dict:
        d = {"tenant": self.tenant, "name": self.name, "internal_number": self.internal_number,
             "members": list(self.members), "logged_out": list(self.logged_out)}
        if not with_tenant:
            del d["tenant"]
        return _compact(d, {"internal_number": "", "logged_out": []}) if compact else d


def _tenant_of(r: _Reader, data: Mapping, tenant: str | None) -> str:
    if tenant is None:
        tenant = r.get("tenant", str, _REQUIRED)
    else:
        r.used.add("tenant")
        if data.get("tenant", tenant) != tenant:
            raise r.fail("tenant", f"does not match tenant {tenant!r}")
    return tenant


@dataclass(frozen=True, slots=True)
class Trunk:
    tenant: str
    name: str
    host: str
    port: int = 5060
    transport: str = "udp"
    username: str = ""  # digest credentials, when the gateway challenges
    password: str = ""
    from_domain: str = ""  # host part of From on outgoing INVITEs; "" = the gateway host

    @classmethod
    def from_dict(cls, data: Any, path: str = "", tenant: str | None = None) -> "Trunk":
        r = _Reader(data, path)
        tenant = _tenant_of(r, data, tenant)
        obj = cls(
            tenant=tenant,
            name=r.text("name", _REQUIRED, _OBJNAME_RE, "trunk name", 64),
            host=r.text("host", _REQUIRED, _HOST_RE, "host"),
            port=r.integer("port", 5060, 1, 65535),
            transport=r.choice("transport", TRANSPORTS, "udp"),
            username=r.text("username", "", max_len=128),
            password=r.text("password", "", max_len=128),
            from_domain=r.text("from_domain", "", _HOST_RE, "domain"),
        )
        if obj.password and not obj.username:
            raise r.fail("username", "a trunk password needs a username")
        r.finish()
        return obj

    def to_dict(self, compact: bool = False, with_tenant: bool = True) -> dict:
        d = {"tenant": self.tenant, "name": self.name, "host": self.host, "port": self.port,
             "transport": self.transport, "username": self.username, "password": self.password,
             "from_domain": self.from_domain}
        if not with_tenant:
            del d["tenant"]
        return _compact(d, {"port": 5060, "transport": "udp", "username": "", "password": "",
                            "from_domain": ""}) if compact else d


# ---------------------------------------------------------------- numbers and dial plans


@dataclass(frozen=True, slots=True)
class Target:
    """One participant of a row, written ``kind:value`` (``user:anna``, ``group:sales``,
    ``external:0791234567``, ``link:0441234568``)."""

    kind: str
    value: str

    @classmethod
    def parse(cls, text: Any, name: str) -> "Target":
        if not isinstance(text, str):
            raise ValidationError(name, f"must be a string 'kind:value', got {text!r}")
        kind, sep, value = text.partition(":")
        if not sep or kind not in TARGET_KINDS:
            raise ValidationError(name, f"{text!r} is not kind:value with kind one of {', '.join(TARGET_KINDS)}")
        if kind == "user":
            check_username(value, name)
        elif kind == "group":
            if not (_OBJNAME_RE.fullmatch(value) or value == ALLUSERS):
                raise ValidationError(name, f"{value!r} is not a valid group name")
        elif kind == "external":
            if not _EXTERNAL_RE.fullmatch(value):
                raise ValidationError(name, f"{value!r} is not a valid external number")
        else:
            check_public_number(value, name)
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True)
class DialStep:
    """A row: its targets ring in parallel for ``duration`` seconds."""

    mode: int = ROW_MODE_RING
    duration: int = 20
    targets: tuple[Target, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "DialStep":
        r = _Reader(data, path)
        mode = r.get("mode", int, ROW_MODE_RING)
        if mode not in ROW_MODES:
            raise r.fail("mode", f"unknown row mode {mode} (known: {', '.join(map(str, ROW_MODES))})")
        duration = r.integer("duration", 20, 1, ROW_DURATION_MAX)
        raw = r.get("targets", (list, tuple), _REQUIRED)
        if not raw:
            raise r.fail("targets", "a row needs at least one target")
        targets = []
        for i, t in enumerate(raw):
            target = Target.parse(t, f"{r.name('targets')}[{i}]")
            if target in targets:
                raise ValidationError(f"{r.name('targets')}[{i}]", f"{t!r} is listed twice")
            targets.append(target)
        r.finish()
        return cls(mode, duration, tuple(targets))

    def to_dict(self) -> dict:
        return {"mode": self.mode, "duration": self.duration, "targets": [str(t) for t in self.targets]}


@dataclass(frozen=True, slots=True)
class DialPlan:
    """One of the ten slots of a number."""

    active: bool = False
    name: str = ""
    mode: str = "weekday"
    days: tuple[str, ...] = ()  # subset of DAYS, in week order
    date_from: str = ""  # YYYY-MM-DD, date mode
    date_to: str = ""  # inclusive; = date_from for a single date
    time_start: str = "00:00"  # HH:MM, inclusive
    time_end: str = "23:59"  # HH:MM, inclusive; start > end wraps midnight
    announcement_before: int = 0  # announcement id; 0 = none
    announcement_after: int = 0
    voice2mail: str = ""  # e-mail address
    rows: tuple[DialStep, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> "DialPlan":
        r = _Reader(data, path)
        mode = r.choice("mode", SLOT_MODES, "weekday")
        days_raw = r.strings("days")
        for i, d in enumerate(days_raw):
            if d not in DAYS:
                raise ValidationError(f"{r.name('days')}[{i}]", f"{d!r} is not one of {', '.join(DAYS)}")
        days = tuple(d for d in DAYS if d in days_raw)
        date_from, date_to = _date(r, "date_from"), _date(r, "date_to")
        active = r.flag("active")
        if mode == "date":
            if active and not date_from:
                raise r.fail("date_from", "a date slot needs a date")
            if date_to and not date_from:
                raise r.fail("date_from", "date_to needs date_from")
            date_to = date_to or date_from
            if date_to < date_from:
                raise r.fail("date_to", f"{date_to} is before date_from {date_from}")
        elif active and not days:
            raise r.fail("days", "an active weekday slot needs at least one day")
        rows_raw = r.get("rows", (list, tuple), [])
        rows = tuple(DialStep.from_dict(row, f"{r.name('rows')}[{i}]") for i, row in enumerate(rows_raw))
        obj = cls(
            active=active, name=r.text("name", "", max_len=64), mode=mode, days=days,
            date_from=date_from, date_to=date_to,
            time_start=_time(r, "time_start", "00:00"), time_end=_time(r, "time_end", "23:59"),
            announcement_before=r.integer("announcement_before", 0, 0, 999_999),
            announcement_after=r.integer("announcement_after", 0, 0, 999_999),
            voice2mail=_email(r, "voice2mail"), rows=rows,
        )
        r.finish()
        return obj

    def is_empty(self) -> bool:
        """Nothing configured that a call could use (FEATURES 2.1 "find unused numbers")."""
        return not (self.rows or self.announcement_before or self.announcement_after or self.voice2mail)

    def to_dict(self, compact: bool = False) -> dict:
        d = {"active": self.active, "name": self.name, "mode": self.mode, "days": list(self.days),
             "date_from": self.date_from, "date_to": self.date_to, "time_start": self.time_start,
             "time_end": self.time_end, "announcement_before": self.announcement_before,
             "announcement_after": self.announcement_after, "voice2mail": self.voice2mail,
             "rows": [row.to_dict() for row in self.rows]}
        return _compact(d, _PLAN_DEFAULTS) if compact else d


_PLAN_DEFAULTS = DialPlan().to_dict()
EMPTY_PLAN = DialPlan()


def slots_from_list(raw: Any, path: str = "slots") -> tuple[DialPlan, ...]:
    """Up to ten slot dicts (missing trailing slots are empty) → exactly ten DialPlans."""
    if not isinstance(raw, (list, tuple)):
        raise ValidationError(path, f"must be a list of at most {SLOT_COUNT} slots")
    if len(raw) > SLOT_COUNT:
        raise ValidationError(f"{path}[{SLOT_COUNT}]",
                              f"a number has exactly {SLOT_COUNT} dial-plan slots; an eleventh is rejected")
    plans = [DialPlan.from_dict(s, f"{path}[{i}]") for i, s in enumerate(raw)]
    plans += [EMPTY_PLAN] * (SLOT_COUNT - len(plans))
    return tuple(plans)


def slots_to_list(slots: Iterable[DialPlan], compact: bool = False) -> list[dict]:
    out = [s.to_dict(compact) for s in slots]
    if compact:
        while out and not out[-1]:
            out.pop()
    return out


@dataclass(frozen=True, slots=True)
class PublicNumber:
    tenant: str
    number: str  # as provisioned: national (0441234567) or E.164 (+41441234567)
    usage: str = "telephone"
    name: str = ""
    alert_info: str = ""  # Alert-Info header value sent to the rung devices
    slots: tuple[DialPlan, ...] = (EMPTY_PLAN,) * SLOT_COUNT
    pin: str = ""  # conference room: the PIN callers enter (FEATURES 10.1); "" = none
    personal_rooms: bool = False  # conference: the dial-in of every user's personal room (10.2)
    max_participants: int = 0  # conference: per room; 0 = the [conference] default
    fax_mail: str = ""  # usage fax: where received faxes are mailed (comma-separated addresses)

    @classmethod
    def from_dict(cls, data: Any, path: str = "", tenant: str | None = None) -> "PublicNumber":
        r = _Reader(data, path)
        tenant = _tenant_of(r, data, tenant)
        number = r.get("number", str, _REQUIRED)
        check_public_number(number, r.name("number"))
        obj = cls(tenant=tenant, number=number, usage=r.choice("usage", USAGES, "telephone"),
                  name=r.text("name", "", max_len=64),
                  alert_info=r.text("alert_info", "", max_len=512),
                  slots=slots_from_list(r.get("slots", (list, tuple), []), r.name("slots")),
                  pin=_pin(r, "pin"), personal_rooms=r.flag("personal_rooms"),
                  max_participants=r.integer("max_participants", 0, 0, 10000),
                  fax_mail=_email_list(r, "fax_mail"))
        r.finish()
        if obj.personal_rooms and obj.pin:
            raise r.fail("pin", "a dial-in for personal rooms has no PIN of its own: the users' PINs pick the room")
        if obj.usage != "conference" and (obj.personal_rooms or obj.max_participants):
            raise r.fail("usage", "personal_rooms and max_participants belong to a conference number")
        return obj

    def to_dict(self, compact: bool = False, with_tenant: bool = True) -> dict:
        d = {"tenant": self.tenant, "number": self.number, "usage": self.usage, "name": self.name,
             "alert_info": self.alert_info, "slots": slots_to_list(self.slots, compact),
             "pin": self.pin, "personal_rooms": self.personal_rooms,
             "max_participants": self.max_participants, "fax_mail": self.fax_mail}
        if not with_tenant:
            del d["tenant"]
        return _compact(d, {"usage": "telephone", "name": "", "alert_info": "", "slots": [], "pin": "",
                            "personal_rooms": False, "max_participants": 0, "fax_mail": ""}) if compact else d


@dataclass(frozen=True, slots=True)
class SpecialSwitch:
    """Overrides the slots of the numbers it affects while it is on (FEATURES 6)."""

    tenant: str
    name: str
    on: bool = False
    switched_on_at: str = ""  # aware ISO timestamp of the last switch-on: the latest wins
    auto_off_at: str = ""  # aware ISO timestamp after which the switch counts as off; "" = never
    numbers: tuple[str, ...] = ()
    use_slot: int = 0  # 1..10: use that slot of each number; 0: use ``plan``
    plan: DialPlan = EMPTY_PLAN

    @classmethod
    def from_dict(cls, data: Any, path: str = "", tenant: str | None = None) -> "SpecialSwitch":
        r = _Reader(data, path)
        tenant = _tenant_of(r, data, tenant)
        obj = cls(
            tenant=tenant, name=r.text("name", _REQUIRED, _OBJNAME_RE, "switch name", 64),
            on=r.flag("on"), switched_on_at=_instant(r, "switched_on_at"),
            auto_off_at=_instant(r, "auto_off_at"),
            numbers=r.strings("numbers", _PUBLIC_RE, "public number"),
            use_slot=r.integer("use_slot", 0, 0, SLOT_COUNT),
            plan=DialPlan.from_dict(r.get("plan", Mapping, {}), r.name("plan")),
        )
        r.finish()
        return obj

    def to_dict(self, compact: bool = False, with_tenant: bool = True) -> dict:
        d = {"tenant": self.tenant, "name": self.name, "on": self.on, "switched_on_at": self.switched_on_at,
             "auto_off_at": self.auto_off_at, "numbers": list(self.numbers), "use_slot": self.use_slot,
             "plan": self.plan.to_dict(compact)}
        if not with_tenant:
            del d["tenant"]
        return _compact(d, {"on": False, "switched_on_at": "", "auto_off_at": "", "use_slot": 0,
                            "plan": {}}) if compact else d

    def active_at(self, now: datetime) -> bool:
        if not self.on:
            return False
        return not (self.auto_off_at and now >= datetime.fromisoformat(self.auto_off_at))


@dataclass(frozen=True, slots=True)
class Announcement:
    tenant: str
    id: int
    name: str = ""
    file: str = ""  # audio file path, relative to the server's media directory
    kind: str = "announcement"
    duration_ms: int = 0

    @classmethod
    def from_dict(cls, data: Any, path: str = "", tenant: str | None = None) -> "Announcement":
        r = _Reader(data, path)
        tenant = _tenant_of(r, data, tenant)
        file = r.text("file", "", max_len=1024)
        if file.startswith("/") or ".." in file.split("/"):
            raise r.fail("file", f"{file!r} must be a relative path inside the media directory")
        obj = cls(tenant=tenant, id=r.integer("id", _REQUIRED, 1, 999_999),
                  name=r.text("name", "", max_len=128), file=file,
                  kind=r.choice("kind", ANNOUNCEMENT_KINDS, "announcement"),
                  duration_ms=r.integer("duration_ms", 0, 0, 3_600_000))
        r.finish()
        return obj

    def to_dict(self, compact: bool = False, with_tenant: bool = True) -> dict:
        d = {"tenant": self.tenant, "id": self.id, "name": self.name, "file": self.file,
             "kind": self.kind, "duration_ms": self.duration_ms}
        if not with_tenant:
            del d["tenant"]
        return _compact(d, {"name": "", "file": "", "kind": "announcement", "duration_ms": 0}) if compact else d


@dataclass(frozen=True, slots=True)
class Cdr:
    """One call record. Times are aware ISO timestamps ("" when the call never got there)."""

    tenant: str
    call_id: str = ""
    caller: str = ""
    called: str = ""
    slot: int = 0  # slot number 1..10 that handled the call; 0 = none or a switch's own plan
    switch: str = ""  # name of the special switch that handled the call
    targets_tried: tuple[str, ...] = ()
    answered_by: str = ""
    start: str = ""
    answer: str = ""
    end: str = ""
    end_reason: str = ""
    linked_call: str = ""  # Call-IDs of calls joined with this one by attended transfer
    service: str = ""  # the media service that answered (hpbx.pbx.media_channel), if any
    service_result: str = ""  # what that service reports (a digit, a recording, a fax)
    id: int = 0  # assigned by the store

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> "Cdr":
        r = _Reader(data, path)
        tenant = r.get("tenant", str, _REQUIRED)
        targets = r.get("targets_tried", (list, tuple), [])
        if not all(isinstance(t, str) for t in targets):
            raise r.fail("targets_tried", "must be a list of strings")
        obj = cls(tenant=tenant, call_id=r.text("call_id", "", max_len=512), caller=r.text("caller"),
                  called=r.text("called"), slot=r.integer("slot", 0, 0, SLOT_COUNT),
                  switch=r.text("switch"), targets_tried=tuple(targets),
                  answered_by=r.text("answered_by"), start=_instant(r, "start"),
                  answer=_instant(r, "answer"), end=_instant(r, "end"),
                  end_reason=r.text("end_reason"), linked_call=r.text("linked_call", "", max_len=2048),
                  service=r.text("service"), service_result=r.text("service_result", "", max_len=2048),
                  id=r.integer("id", 0, 0, 2**62))
        r.finish()
        return obj

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["targets_tried"] = list(self.targets_tried)
        return d


# ---------------------------------------------------------------- references inside a tenant


class TenantObjects:
    """Every object of one tenant, by key: what reference checks and exports read.

    ``Directory`` keeps one per tenant (treated as immutable once there); provisioning copies
    it, applies a change to the copy, and checks the changed objects against the copy before
    anything is written. ``internal_lookup``, when set, answers "who uses this internal
    number" from an existing index instead of scanning every user.
    """

    __slots__ = ("tenant", "users", "groups", "trunks", "numbers", "switches", "announcements",
                 "internal_lookup", "_internal")

    def __init__(self, tenant: Tenant, users=None, groups=None, trunks=None, numbers=None,
                 switches=None, announcements=None):
        self.tenant = tenant
        # users: a SharedDict, so that copying a tenant of 100,000 users stays cheap
        self.users: dict[str, User] = users if users is not None else SharedDict()
        self.groups: dict[str, Group] = groups if groups is not None else {}
        self.trunks: dict[str, Trunk] = trunks if trunks is not None else {}
        self.numbers: dict[str, PublicNumber] = numbers if numbers is not None else {}
        self.switches: dict[str, SpecialSwitch] = switches if switches is not None else {}
        self.announcements: dict[int, Announcement] = announcements if announcements is not None else {}
        self.internal_lookup = None
        self._internal: dict[str, list] | None = None

    def copy(self, *mutable: str) -> "TenantObjects":
        """A copy whose ``mutable`` dicts (e.g. "numbers") are new; the others are shared,
        so they must not be changed. No names: every dict is copied."""
        names = mutable or ("users", "groups", "trunks", "numbers", "switches", "announcements")
        parts = {a: (getattr(self, a).copy() if a in names else getattr(self, a))
                 for a in ("users", "groups", "trunks", "numbers", "switches", "announcements")}
        return TenantObjects(self.tenant, **parts)

    def drop_indexes(self) -> None:
        """Forget the lookup helpers used for checking (before the object joins a Directory)."""
        self.internal_lookup = None
        self._internal = None

    def internal_owner(self, number: str, skip: object = None) -> str:
        """Who else uses an internal number ("user anna", "group sales"), "" when free."""
        if self.internal_lookup is not None:
            owners = self.internal_lookup(number)
        else:
            if self._internal is None:
                index: dict[str, list] = {}
                for o in (*self.users.values(), *self.groups.values()):
                    if o.internal_number:
                        index.setdefault(o.internal_number, []).append(o)
                self._internal = index
            owners = self._internal.get(number, ())
        for o in owners:
            if not _same_object(o, skip):
                return f"user {o.username}" if isinstance(o, User) else f"group {o.name}"
        return ""


def _same_object(a: object, b: object) -> bool:
    if isinstance(a, User) and isinstance(b, User):
        return a.username == b.username
    if isinstance(a, Group) and isinstance(b, Group):
        return (a.tenant, a.name) == (b.tenant, b.name)
    return False


def _check_plan_refs(plan: DialPlan, objs: TenantObjects, path: str, origin: str) -> None:
    for a_key in ("announcement_before", "announcement_after"):
        a_id = getattr(plan, a_key)
        if a_id and a_id not in objs.announcements:
            raise ValidationError(f"{path}.{a_key}", f"announcement {a_id} does not exist")
    for ri, row in enumerate(plan.rows):
        for ti, t in enumerate(row.targets):
            name = f"{path}.rows[{ri}].targets[{ti}]"
            if t.kind == "user" and t.value not in objs.users:
                raise ValidationError(name, f"user {t.value!r} does not exist in tenant {objs.tenant.name!r}")
            if t.kind == "group" and t.value != ALLUSERS and t.value not in objs.groups:
                raise ValidationError(name, f"group {t.value!r} does not exist in tenant {objs.tenant.name!r}")
            if t.kind == "link":
                if t.value not in objs.numbers:
                    raise ValidationError(name, f"LINK target {t.value} is not a public number of this tenant")
                loop = link_loop(origin, t.value, objs.numbers) if origin else None
                if loop:
                    raise ValidationError(name, f"LINK loop {'->'.join(loop)}")


def link_loop(origin: str, first: str, numbers: Mapping[str, PublicNumber]) -> list[str] | None:
    """The first cycle reachable from ``origin`` through its LINK ``first`` (any slot), or None."""
    path = [origin]

    def walk(current: str) -> list[str] | None:
        if current in path:
            return path[path.index(current):] + [current]
        if len(path) > 64:
            return None
        number = numbers.get(current)
        if number is None:
            return None
        path.append(current)
        for nxt in _links_of(number):
            found = walk(nxt)
            if found:
                return found
        path.pop()
        return None

    return walk(first)


def _links_of(number: PublicNumber) -> list[str]:
    return [t.value for plan in number.slots for row in plan.rows for t in row.targets if t.kind == "link"]


def check_references(obj: object, objs: TenantObjects) -> None:
    """Checks one object against the (candidate) state of its tenant, which already contains it."""
    if isinstance(obj, Tenant):
        if obj.trunk and obj.trunk not in objs.trunks:
            raise ValidationError("trunk", f"trunk {obj.trunk!r} does not exist in tenant {obj.name!r}")
        if obj.default_number and obj.default_number not in objs.numbers:
            raise ValidationError("default_number",
                                  f"{obj.default_number} is not one of the tenant's public numbers")
    elif isinstance(obj, User):
        if obj.internal_number:
            owner = objs.internal_owner(obj.internal_number, skip=obj)
            if owner:
                raise ValidationError("internal_number", f"{obj.internal_number} is already used by {owner}")
        if obj.displayed_number and obj.displayed_number not in objs.numbers:
            raise ValidationError("displayed_number",
                                  f"{obj.displayed_number} is not one of the tenant's public numbers")
        for key in ("pickup", "supervise"):
            for i, name in enumerate(getattr(obj, key)):
                if name not in objs.users:
                    raise ValidationError(f"{key}[{i}]", f"user {name!r} does not exist in tenant {obj.tenant!r}")
    elif isinstance(obj, Group):
        if obj.internal_number:
            owner = objs.internal_owner(obj.internal_number, skip=obj)
            if owner:
                raise ValidationError("internal_number", f"{obj.internal_number} is already used by {owner}")
        for i, m in enumerate(obj.members):
            if m not in objs.users:
                raise ValidationError(f"members[{i}]", f"user {m!r} does not exist in tenant {obj.tenant!r}")
    elif isinstance(obj, PublicNumber):
        for i, plan in enumerate(obj.slots):
            _check_plan_refs(plan, objs, f"slots[{i}]", obj.number)
    elif isinstance(obj, SpecialSwitch):
        for i, n in enumerate(obj.numbers):
            if n not in objs.numbers:
                raise ValidationError(f"numbers[{i}]", f"{n} is not one of the tenant's public numbers")
        _check_plan_refs(obj.plan, objs, "plan", "")


def references_to(kind: str, key: object, objs: TenantObjects) -> list[str]:
    """Where an object is referenced inside its tenant (why it cannot be deleted)."""
    found = []

    def scan_plan(plan: DialPlan, where: str) -> None:
        if kind == "announcement" and key in (plan.announcement_before, plan.announcement_after):
            found.append(where)
        for ri, row in enumerate(plan.rows):
            for t in row.targets:
                if (t.kind, t.value) == (kind if kind != "number" else "link", key):
                    found.append(f"{where} row {ri + 1}")

    for n in objs.numbers.values():
        for i, plan in enumerate(n.slots):
            scan_plan(plan, f"number {n.number} slot {i + 1}")
    for s in objs.switches.values():
        scan_plan(s.plan, f"switch {s.name}")
        if kind == "number" and key in s.numbers:
            found.append(f"switch {s.name}")
    if kind == "user":
        found += [f"group {g.name}" for g in objs.groups.values() if key in g.members]
        found += [f"user {u.username} (pickup)" for u in objs.users.values() if key in u.pickup]
        found += [f"user {u.username} (supervise)" for u in objs.users.values() if key in u.supervise]
    if kind == "number":
        found += [f"user {u.username} (displayed number)" for u in objs.users.values()
                  if u.displayed_number == key]
        if objs.tenant.default_number == key:
            found.append(f"tenant {objs.tenant.name} (default number)")
    if kind == "announcement" and objs.tenant.music_on_hold == f"announcement:{key}":
        found.append(f"tenant {objs.tenant.name} (music on hold)")
    if kind == "announcement" and objs.tenant.recording_notice == f"announcement:{key}":
        found.append(f"tenant {objs.tenant.name} (recording notice)")
    if kind == "trunk" and objs.tenant.trunk == key:
        found.append(f"tenant {objs.tenant.name}")
    return found
