"""What the admin methods may reach in the running server.

The admin layer never touches protocol state or SQL: app.py hands it this small context of
services and callables. Any field may be None while that part of the server does not exist
yet; a method that needs it then answers the JSON-RPC error "not available" naming it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from hpbx.settings import Settings


@dataclass(slots=True)
class AdminContext:
    settings: Settings
    # hpbx.pbx.provisioning service: tenant_create(...), user_list(...), export_tenant(...), ...
    provisioning: Any = None
    # (tenant or None, user or None) -> iterable (may be lazy) of binding dicts: user, tenant,
    # contact, source (host:port), transport, user_agent, behind_nat, expires_at (unix time);
    # the stored Binding.as_dict() shape (username, source_host, source_port) is accepted too
    list_registrations: Callable[[str | None, str | None], Any] | None = None
    # () -> iterable of call dicts (call_id, caller, called, state, started_at, ...)
    list_calls: Callable[[], Any] | None = None
    # (call_id) -> bool (False: no such call); may be a coroutine function
    hangup_call: Callable[[str], Any] | None = None
    # layer name -> () -> dict of counters and gauges (sip, registrar, media, store, ...)
    stats_sources: dict[str, Callable[[], dict]] = field(default_factory=dict)
    # () -> dict describing what changed; may be a coroutine function; raises ConfigError
    reload_config: Callable[[], dict | Awaitable[dict]] | None = None
    # hpbx.security.bans.BanService: ban_list/ban_add/ban_remove, trusted networks, counters
    security: Any = None
    # hpbx.security.toll.TollPolicy: get/set/reset a tenant's toll-fraud limits
    toll: Any = None
    # () -> {"reloaded": bool}: read the TLS certificate files again; raises ConfigError
    reload_tls: Callable[[], dict] | None = None
    # web face (hpbx/web): admin accounts (hpbx.admin.accounts.AccountService), the audit log
    # (AuditLog: every change made through the dispatch), phone records (hpbx.pbx.phones)
    accounts: Any = None
    audit: Any = None
    phones: Any = None
    # hpbx.cti.service.CtiService: online(username), sessions (None without a web face)
    cti: Any = None
    # hpbx.pbx.addressbook.AddressBooks: global and personal address books
    addressbooks: Any = None
    # hpbx.mail.spool.MailSpool: the outgoing mail spool (mail.queue, mail.retry, ...)
    mail: Any = None
    # hpbx.pbx.conference.Conferences: rooms, participants, scheduled conferences
    conferences: Any = None
    # hpbx.pbx.voicemail.Voicemail: user mailboxes (mailbox.list, mailbox.delete, ...)
    voicemail: Any = None
    # hpbx.pbx.followme.FollowMe and hpbx.pbx.callthrough.Callthrough (issue 12)
    followme: Any = None
    callthrough: Any = None
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
