"""The outgoing mail spool: every message is on disk before ``submit`` returns, and leaves the
disk only when an SMTP server has accepted it.

One message is two files in ``[smtp] spool``: ``ID.eml`` (the RFC 5322 bytes, CRLF, with a
Message-ID that stays the same on every attempt) and ``ID.json`` (envelope and delivery state).
Both are written to a temporary name, fsync'd and renamed, the .eml first: a message exists
once its .json does, so a crash inside ``submit`` leaves at most an orphan .eml, removed at the
next start. After the server's 250 to DATA the .json goes first, then the .eml; a kill -9 in
between that window (two unlinks) sends the message again after the restart with the same
Message-ID (at-least-once, duplicates recognisable), never zero times.

Delivery (``aiosmtplib``): one connection per batch of due messages. Connection failures,
timeouts and 4xx answers defer the message with exponential backoff (``retry_min`` doubling up
to ``retry_max``) until ``give_up_after`` seconds after it was submitted; a 5xx answer bounces
it at once. Bounced and given-up messages stay in the spool (``mail.queue`` shows them with the
server's answer; ``mail.retry`` queues them again, ``mail.delete`` removes them) and a notice
goes to the message's ``bounce_to`` address (the tenant's admin; ``[smtp] bounce_to`` when the
caller gave none).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Iterable
from zoneinfo import ZoneInfo

import aiosmtplib

from hpbx.errors import HpbxError, NotFoundError, ValidationError
from hpbx.mail import valid_address

log = logging.getLogger("hpbx.mail")

QUEUED, BOUNCED, FAILED = "queued", "bounced", "failed"
STATES = (QUEUED, BOUNCED, FAILED)
BATCH = 50  # messages sent over one SMTP connection before it is closed and the queue re-read


class MailQuotaError(HpbxError):
    """The tenant's part of the spool is full: the message was not taken."""


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str  # "audio/wav", "application/pdf", ...
    data: bytes


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class MailSpool:
    """``submit`` (any thread) puts a message on disk; ``start``/``stop`` run the sender in
    the event loop. ``settings`` is the ``[smtp]`` section (hpbx.settings.SmtpSettings)."""

    def __init__(self, settings, directory: str | Path):
        self.settings = settings
        self.dir = Path(directory)
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.stats = {"submitted": 0, "sent": 0, "retried": 0, "bounced": 0, "failed": 0,
                      "refused_quota": 0}

    # ---- life
    def open(self) -> int:
        """Create the directory and load what an earlier run left; returns the messages found."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        metas = {p.stem for p in self.dir.glob("*.json")}
        for eml in self.dir.glob("*.eml"):
            if eml.stem not in metas:  # submit did not finish: the caller never got an id
                eml.unlink(missing_ok=True)
        for stem in sorted(metas):
            meta_path = self.dir / f"{stem}.json"
            if not (self.dir / f"{stem}.eml").exists():
                log.error("mail %s: message file missing, entry dropped", stem)
                meta_path.unlink(missing_ok=True)
                continue
            try:
                entry = json.loads(meta_path.read_bytes())
            except (OSError, ValueError) as exc:
                log.error("mail %s: unreadable state (%s), kept aside as .bad", stem, exc)
                meta_path.rename(meta_path.with_suffix(".bad"))
                continue
            self._entries[entry["id"]] = entry
        if self._entries:
            log.info("mail spool: %d messages picked up from %s", len(self._entries), self.dir)
        return len(self._entries)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._closing = False
        self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        """Ends the sender; a message in flight stays queued (sent again at the next start)."""
        self._closing = True
        if self._task is None:
            return
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 3.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def configure(self, settings) -> None:
        self.settings = settings
        self._kick()

    # ---- the API other services use
    def submit(self, *, to: Iterable[str] | str, subject: str, body: str,
               attachments: Iterable[Attachment] = (), tenant: str = "", kind: str = "mail",
               bounce_to: str = "", timezone_name: str = "", sender: str = "",
               reply_to: str = "") -> str:
        """Build the message, write it to the spool (fsync'd) and return its id. Raises
        ``ValidationError`` for a bad address and ``MailQuotaError`` when the tenant's spool
        quota is used up. Safe to call from any thread."""
        recipients = [to] if isinstance(to, str) else list(to)
        if not recipients:
            raise ValidationError("to", "needs at least one address")
        for addr in recipients:
            if not valid_address(addr):
                raise ValidationError("to", f"not an e-mail address: {addr!r}")
        if bounce_to and not valid_address(bounce_to):
            raise ValidationError("bounce_to", f"not an e-mail address: {bounce_to!r}")
        if reply_to and not valid_address(reply_to):
            raise ValidationError("reply_to", f"not an e-mail address: {reply_to!r}")
        sender = sender or self.settings.sender
        mail_id = f"{time.time_ns() // 1000:016d}-{secrets.token_hex(4)}"
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        if reply_to:
            msg["Reply-To"] = reply_to
        zone = timezone.utc
        if timezone_name:
            try:
                zone = ZoneInfo(timezone_name)
            except (ValueError, KeyError):
                zone = timezone.utc
        msg["Date"] = format_datetime(datetime.now(zone))
        msg["Message-ID"] = make_msgid(idstring=mail_id, domain=sender.rpartition("@")[2] or "hpbx")
        msg["X-Hpbx-Mail-Id"] = mail_id
        msg.set_content(body)
        for att in attachments:
            maintype, _, subtype = att.content_type.partition("/")
            msg.add_attachment(att.data, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=att.filename)
        data = msg.as_bytes(policy=policy.SMTP)
        now = time.time()
        entry = {"id": mail_id, "message_id": msg["Message-ID"], "tenant": tenant, "kind": kind,
                 "sender": sender, "to": recipients, "subject": subject,
                 "bounce_to": bounce_to or self.settings.bounce_to, "size": len(data),
                 "created_at": now, "next_at": now, "attempts": 0, "state": QUEUED,
                 "last_error": "", "last_code": 0}
        with self._lock:
            quota = self.settings.tenant_quota_mb << 20
            if tenant and quota and self._tenant_bytes(tenant) + len(data) > quota:
                self.stats["refused_quota"] += 1
                raise MailQuotaError(f"mail spool quota of tenant {tenant!r} "
                                     f"({self.settings.tenant_quota_mb} MB) is used up")
            self.dir.mkdir(parents=True, exist_ok=True)
            _fsync_write(self.dir / f"{mail_id}.eml", data)
            _fsync_write(self.dir / f"{mail_id}.json", json.dumps(entry).encode())
            self._fsync_dir()
            self._entries[mail_id] = entry
            self.stats["submitted"] += 1
        log.info("mail %s (%s) spooled for %s: %s", mail_id, kind, ", ".join(recipients), subject)
        self._kick()
        return mail_id

    # ---- what the admin methods read and do
    def queue(self, tenant: str | None = None, state: str | None = None) -> list[dict]:
        with self._lock:
            rows = [dict(e) for e in self._entries.values()
                    if (tenant is None or e["tenant"] == tenant) and (state is None or e["state"] == state)]
        rows.sort(key=lambda e: e["id"])
        for e in rows:
            e["to"] = ", ".join(e["to"])
            for key in ("created_at", "next_at"):
                e[key] = datetime.fromtimestamp(e[key], timezone.utc).isoformat(timespec="seconds")
        return rows

    def get(self, mail_id: str) -> dict:
        with self._lock:
            entry = self._entries.get(mail_id)
        if entry is None:
            raise NotFoundError("mail", mail_id)
        return entry

    def retry(self, mail_id: str | None = None, tenant: str | None = None) -> int:
        """Queue again for delivery now: one message, or every one (of a tenant)."""
        if mail_id is not None:
            self.get(mail_id)
        now, count = time.time(), 0
        with self._lock:
            for e in self._entries.values():
                if (mail_id is None or e["id"] == mail_id) and (tenant is None or e["tenant"] == tenant):
                    if e["state"] != QUEUED:
                        e["created_at"] = now  # a fresh give_up_after window
                    e["state"], e["next_at"] = QUEUED, now
                    self._save(e)
                    count += 1
        self._kick()
        return count

    def delete(self, mail_id: str) -> None:
        self.get(mail_id)
        with self._lock:
            self._remove(mail_id)

    def counts(self) -> dict:
        with self._lock:
            by_state = {s: 0 for s in STATES}
            size = 0
            for e in self._entries.values():
                by_state[e["state"]] += 1
                size += e["size"]
        return {**self.stats, **{f"spool_{s}": n for s, n in by_state.items()}, "spool_bytes": size}

    # ---- internals
    def _tenant_bytes(self, tenant: str) -> int:
        return sum(e["size"] for e in self._entries.values() if e["tenant"] == tenant)

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _save(self, entry: dict) -> None:
        _fsync_write(self.dir / f"{entry['id']}.json", json.dumps(entry).encode())

    def _remove(self, mail_id: str) -> None:
        self._entries.pop(mail_id, None)
        (self.dir / f"{mail_id}.json").unlink(missing_ok=True)
        (self.dir / f"{mail_id}.eml").unlink(missing_ok=True)
        self._fsync_dir()

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            now = time.time()
            with self._lock:
                waiting = [e for e in self._entries.values() if e["state"] == QUEUED]
            due = sorted((e for e in waiting if e["next_at"] <= now), key=lambda e: e["next_at"])
            if due:
                try:
                    await self._deliver(due[:BATCH])
                except Exception:
                    log.exception("mail: delivery round failed")
                    await asyncio.sleep(1.0)
                continue
            timeout = min((e["next_at"] for e in waiting), default=now + 3600) - now
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.01, timeout))
            except asyncio.TimeoutError:
                pass

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(hostname=s.host, port=s.port, timeout=s.timeout,
                               use_tls=s.tls == "tls", start_tls=True if s.tls == "starttls" else False,
                               validate_certs=s.verify_tls)

    async def _deliver(self, batch: list[dict]) -> None:
        client = self._client()
        try:
            await client.connect()
            if self.settings.username:
                await client.login(self.settings.username, self.settings.password)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            # the server, not the message: every message waits (a 5xx to the greeting or to AUTH
            # is a setting to fix, not a reason to bounce mail)
            reason = _describe(exc)
            log.warning("mail: SMTP %s:%d unusable (%s); %d messages deferred",
                        self.settings.host, self.settings.port, reason, len(batch))
            for e in batch:
                self._defer(e, reason, getattr(exc, "code", 0))
            client.close()
            return
        try:
            for i, e in enumerate(batch):
                if self._closing:
                    return
                with self._lock:
                    if self._entries.get(e["id"]) is not e or e["state"] != QUEUED:
                        continue  # deleted or changed over admin meanwhile
                try:
                    data = (self.dir / f"{e['id']}.eml").read_bytes()
                except OSError as exc:
                    log.error("mail %s: message file unreadable (%s)", e["id"], exc)
                    self._bounce(e, f"message file unreadable: {exc}", 0)
                    continue
                try:
                    refused, _ = await client.sendmail(e["sender"], e["to"], data)
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    codes = [r.code for r in exc.recipients]
                    reason = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
                    if all(500 <= c < 600 for c in codes):
                        self._bounce(e, reason, codes[0])
                    else:
                        self._defer(e, reason, codes[0] if codes else 0)
                except aiosmtplib.SMTPResponseException as exc:
                    if 500 <= exc.code < 600:
                        self._bounce(e, _describe(exc), exc.code)
                    else:
                        self._defer(e, _describe(exc), exc.code)
                    if isinstance(exc, aiosmtplib.SMTPServerDisconnected) or not client.is_connected:
                        for rest in batch[i + 1:]:
                            self._defer(rest, "connection closed by the server", 0)
                        return
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                    reason = _describe(exc)
                    for rest in batch[i:]:
                        self._defer(rest, reason, 0)
                    log.warning("mail: SMTP connection lost (%s); %d messages deferred",
                                reason, len(batch) - i)
                    return
                else:
                    self._sent(e, refused)
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                    client.close()

    def _sent(self, e: dict, refused: dict) -> None:
        with self._lock:
            self._remove(e["id"])
            self.stats["sent"] += 1
        if refused:
            reason = "; ".join(f"{addr}: {r.code} {r.message}" for addr, r in refused.items())
            log.warning("mail %s accepted for some recipients only: %s", e["id"], reason)
            self._notify_bounce(e, f"refused for some recipients: {reason}")
        log.info("mail %s sent to %s (attempt %d)", e["id"], ", ".join(e["to"]), e["attempts"] + 1)

    def _defer(self, e: dict, reason: str, code: int) -> None:
        s = self.settings
        now = time.time()
        with self._lock:
            if self._entries.get(e["id"]) is not e:
                return
            e["attempts"] += 1
            e["last_error"], e["last_code"] = reason, code
            if now - e["created_at"] >= s.give_up_after:
                e["state"] = FAILED
                self.stats["failed"] += 1
            else:
                e["next_at"] = now + min(s.retry_max, s.retry_min * 2 ** min(e["attempts"] - 1, 30))
                self.stats["retried"] += 1
            self._save(e)
        if e["state"] == FAILED:
            log.error("mail %s to %s given up after %d attempts: %s", e["id"], ", ".join(e["to"]),
                      e["attempts"], reason)
            self._notify_bounce(e, f"not delivered within {s.give_up_after} s: {reason}")

    def _bounce(self, e: dict, reason: str, code: int) -> None:
        with self._lock:
            if self._entries.get(e["id"]) is not e:
                return
            e["attempts"] += 1
            e["state"], e["last_error"], e["last_code"] = BOUNCED, reason, code
            self._save(e)
            self.stats["bounced"] += 1
        log.error("mail %s to %s bounced: %s", e["id"], ", ".join(e["to"]), reason)
        self._notify_bounce(e, reason)

    def _notify_bounce(self, e: dict, reason: str) -> None:
        target = e.get("bounce_to")
        if not target or e["kind"] == "bounce" or target in e["to"]:
            return
        body = (f"A message from hpbx could not be delivered.\n\n"
                f"Recipients: {', '.join(e['to'])}\nSubject: {e['subject']}\n"
                f"Kind: {e['kind']}\nTenant: {e['tenant']}\nSpool id: {e['id']}\n"
                f"Message-ID: {e['message_id']}\nReason: {reason}\n\n"
                f"It is kept in the spool: hpbxctl mail.queue, mail.retry id={e['id']}.\n")
        try:
            self.submit(to=[target], subject=f"Undeliverable: {e['subject']}", body=body,
                        tenant="", kind="bounce")
        except HpbxError as exc:
            log.error("mail %s: bounce notice to %s not spooled: %s", e["id"], target, exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
