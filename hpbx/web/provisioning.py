"""Phone configuration files rendered from provisioning records with Jinja2 templates
(hpbx/web/templates): Snom XML (``<mac>.xml``), Yealink key=value (``<mac>.cfg``), and the
tenant's phonebook in each vendor's XML. Values come from validated records (no control
characters), and XML templates are autoescaped.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2

from hpbx.pbx.phones import Phone

TEMPLATES = Path(__file__).parent / "templates"
EXTENSION = {"snom": "xml", "yealink": "cfg"}
LANGUAGE_NAMES = {"en": "English", "de": "Deutsch", "fr": "Francais", "it": "Italiano"}
YEALINK_TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}
# Yealink DSS key types
YEALINK_KEY = {"blf": 16, "switch": 16, "pickup": 9, "speeddial": 13}


def _utc_offset(tz: str) -> str:
    off = datetime.now(timezone.utc).astimezone(ZoneInfo(tz)).utcoffset()
    hours = off.total_seconds() / 3600 if off else 0
    return f"{hours:+g}"



PHONEBOOK_MAX = 2000  # address-book entries in a phone's phonebook (FEATURES 16, 19)

class Renderer:
    def __init__(self, settings):
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=lambda name: bool(name) and ".xml" in name,
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
            trim_blocks=True, lstrip_blocks=True)
        self.configure(settings)

    def configure(self, settings) -> None:
        self.settings = settings

    def registrar(self, transport: str) -> tuple[str, int]:
        """Host and port phones register to over ``transport`` (the advertised address)."""
        sip = self.settings.sip
        listeners = [lst for lst in sip.listen if lst.transport == transport] or list(sip.listen)
        lst = listeners[0]
        host = sip.advertise or lst.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return (f"[{host}]" if ":" in host else host), lst.port

    def context(self, phone: Phone, directory, base_url: str) -> dict:
        tenant = directory.tenant(phone.tenant)
        tz = phone.timezone or (tenant.timezone if tenant else "Europe/Zurich")
        host, port = self.registrar(phone.transport)
        domain = (tenant.domain if tenant and tenant.domain else "") or self.settings.sip.domain or host
        accounts = []
        for i, name in enumerate(phone.accounts, 1):
            u = directory.user(name)
            if u is None or u.tenant != phone.tenant:
                continue
            accounts.append({"index": i, "username": u.username, "password": u.sip_password,
                             "display": u.details.full_name() or u.username,
                             "internal": u.internal_number})
        keys = []
        for i, k in enumerate(phone.keys, 1):
            label = k.label
            if k.type in ("blf", "pickup"):
                u = directory.user(k.value)
                label = label or (u.details.full_name() if u else "") or k.value
                uri = f"sip:{k.value}@{domain}"
            elif k.type == "switch":
                label = label or k.value
                uri = f"sip:switch-{k.value.replace(' ', '_')}@{domain}"
            else:
                uri = k.value
                label = label or k.value
            keys.append({"index": i, "type": k.type, "value": k.value, "label": label, "uri": uri,
                         "yealink_type": YEALINK_KEY[k.type]})
        phonebook = phone.phonebook_url or f"{base_url}/prov/phonebook/{phone.mac}.xml"
        return {"phone": phone, "accounts": accounts, "keys": keys, "registrar": host, "port": port,
                "domain": domain, "transport": phone.transport,
                "yealink_transport": YEALINK_TRANSPORT[phone.transport], "timezone": tz,
                "utc_offset": _utc_offset(tz), "language": LANGUAGE_NAMES[phone.language],
                "phonebook_url": phonebook, "tenant": phone.tenant}

    def config(self, phone: Phone, directory, base_url: str) -> str:
        return self.env.get_template(f"{phone.vendor}.{EXTENSION[phone.vendor]}.j2").render(
            self.context(phone, directory, base_url))

    def phonebook(self, phone: Phone, directory, books=None) -> str:
        """The tenant's directory of users (hidden users left out), then its global address book
        (``books``: hpbx.pbx.addressbook.AddressBooks; at most PHONEBOOK_MAX entries, phones hold
        no more), in the phone's vendor XML."""
        entries = []
        for u in sorted(directory.users_of(phone.tenant), key=lambda u: u.username):
            if u.flags.hide_user or not u.internal_number:
                continue
            entries.append({"name": u.details.full_name() or u.username, "number": u.internal_number,
                            "mobile": u.details.mobile, "company": u.details.company})
        if books is not None:
            for e in books.list(phone.tenant, limit=PHONEBOOK_MAX)["entries"]:
                number = e["office"] or e["private"] or e["mobile"]
                entries.append({"name": e["name"] or number, "number": number,
                                "mobile": e["mobile"] if e["mobile"] != number else "", "company": e["company"]})
        return self.env.get_template(f"phonebook-{phone.vendor}.xml.j2").render(
            entries=entries, tenant=phone.tenant)
