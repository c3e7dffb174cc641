"""The mail spool against a real SMTP server (aiosmtpd in its own process): delivered once,
4xx and a server that is down retried with backoff, 5xx bounced and kept, what a stopped spool
left picked up by the next one."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from hpbx.errors import ValidationError
from hpbx.mail.spool import Attachment, MailQuotaError, MailSpool
from hpbx.settings import SmtpSettings


def settings(sink, **kw) -> SmtpSettings:
    base = dict(host="127.0.0.1", port=sink.port, sender="pbx@example.com", timeout=5,
                retry_min=1, retry_max=1)
    base.update(kw)
    return SmtpSettings(**base)


async def until(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached within {timeout}s")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_delivered_once_with_attachment_and_removed(tmp_path, smtp_sink):
    smtp_sink.start()
    wav = bytes(range(256)) * 40

    async def go():
        spool = MailSpool(settings(smtp_sink), tmp_path / "spool")
        spool.open()
        await spool.start()
        mail_id = spool.submit(to=["anna@example.com"], subject="Voice message from 0441234567",
                               body="Caller: 0441234567\n", tenant="acme", kind="voicemail",
                               attachments=[Attachment("message.wav", "audio/wav", wav)])
        await until(lambda: spool.counts()["sent"] == 1)
        await spool.stop()
        return spool, mail_id

    spool, mail_id = run(go())
    [msg] = smtp_sink.wait_count(1)
    assert msg["X-Envelope-To"] == "anna@example.com"
    assert msg["Subject"] == "Voice message from 0441234567"
    assert mail_id in msg["Message-ID"]
    [part] = [p for p in msg.iter_attachments()]
    assert part.get_filename() == "message.wav" and part.get_content_type() == "audio/wav"
    assert part.get_content() == wav
    assert list((tmp_path / "spool").iterdir()) == []
    c = spool.counts()
    assert (c["submitted"], c["sent"], c["retried"], c["spool_queued"]) == (1, 1, 0, 0)


def test_4xx_is_retried_with_backoff_then_delivered_once(tmp_path, smtp_sink):
    smtp_sink.start("--answer", "451 4.3.0 try again later", "--answer-count", "2")

    async def go():
        spool = MailSpool(settings(smtp_sink), tmp_path / "spool")
        spool.open()
        await spool.start()
        spool.submit(to=["anna@example.com"], subject="s", body="b")
        await until(lambda: spool.queue() and spool.queue()[0]["last_code"] == 451)
        row = spool.queue()[0]
        assert row["state"] == "queued" and "try again later" in row["last_error"]
        await until(lambda: spool.counts()["sent"] == 1)
        await spool.stop()
        return spool.counts()

    t0 = time.monotonic()
    counts = run(go())
    assert counts["retried"] == 2 and counts["bounced"] == 0
    assert time.monotonic() - t0 >= 2.0  # two backoff waits of retry_min
    assert len(smtp_sink.wait_count(1)) == 1
    time.sleep(0.3)
    assert len(smtp_sink.messages()) == 1


def test_5xx_bounces_keeps_the_message_and_notifies(tmp_path, smtp_sink):
    smtp_sink.start("--refuse", "nobody@example.com")

    async def go():
        spool = MailSpool(settings(smtp_sink), tmp_path / "spool")
        spool.open()
        await spool.start()
        mail_id = spool.submit(to=["nobody@example.com"], subject="Voice message", body="b",
                               tenant="acme", bounce_to="admin@example.com")
        await until(lambda: spool.counts()["bounced"] == 1 and spool.counts()["sent"] == 1)
        [row] = spool.queue(state="bounced")
        assert row["id"] == mail_id and row["last_code"] == 550
        assert "no such user" in row["last_error"]
        # kept: visible, and tried again on request (and bounced again)
        assert spool.retry(mail_id) == 1
        await until(lambda: spool.counts()["bounced"] == 2)
        assert spool.queue()[0]["attempts"] == 2
        spool.delete(mail_id)
        assert spool.queue() == []
        await spool.stop()

    run(go())
    notices = smtp_sink.wait_count(1)
    time.sleep(0.3)
    notices = smtp_sink.messages()
    # the second bounce sends a second notice: one per failed attempt the admin asked for
    assert [m["X-Envelope-To"] for m in notices] == ["admin@example.com", "admin@example.com"]
    assert notices[0]["Subject"] == "Undeliverable: Voice message"
    assert "550" in notices[0].get_content() and "nobody@example.com" in notices[0].get_content()


def test_server_down_then_up_and_restart_picks_up(tmp_path, smtp_sink):
    """No SMTP server: deferred with the reason; the spool stops (restart) and a new one on the
    same directory sends it once the server is there."""
    spool_dir = tmp_path / "spool"

    async def first():
        spool = MailSpool(settings(smtp_sink), spool_dir)
        spool.open()
        await spool.start()
        ids = [spool.submit(to=[f"u{i}@example.com"], subject=f"m{i}", body="b") for i in range(3)]
        await until(lambda: spool.counts()["retried"] >= 3)
        rows = spool.queue()
        assert [r["id"] for r in rows] == ids
        assert all(r["state"] == "queued" and r["attempts"] >= 1 and r["last_error"] for r in rows)
        await spool.stop()
        return ids

    ids = run(first())
    (spool_dir / "9999-orphan.eml").write_bytes(b"half a submit")  # a crash inside submit
    smtp_sink.start()

    async def second():
        spool = MailSpool(settings(smtp_sink), spool_dir)
        assert spool.open() == 3
        assert not (spool_dir / "9999-orphan.eml").exists()
        await spool.start()
        await until(lambda: spool.counts()["sent"] == 3)
        await spool.stop()

    run(second())
    got = smtp_sink.wait_count(3)
    time.sleep(0.3)
    got = smtp_sink.messages()
    assert sorted(m["Subject"] for m in got) == ["m0", "m1", "m2"]
    assert sorted(m["X-Hpbx-Mail-Id"] for m in got) == sorted(ids)
    assert list(spool_dir.iterdir()) == []


def test_gives_up_after_the_window_and_notifies(tmp_path, smtp_sink):
    smtp_sink.start("--answer", "421 4.7.0 go away", "--answer-count", "1000")

    async def go():
        spool = MailSpool(settings(smtp_sink, give_up_after=2, bounce_to="ops@example.com"),
                          tmp_path / "spool")
        spool.open()
        await spool.start()
        spool.submit(to=["anna@example.com"], subject="s", body="b")
        await until(lambda: spool.counts()["failed"] == 1)
        [row] = spool.queue(state="failed")
        assert row["attempts"] >= 2 and row["last_code"] == 421
        await spool.stop()

    run(go())
    state = [json.loads(p.read_text()) for p in (tmp_path / "spool").glob("*.json")]
    assert [s["to"] for s in state if s["kind"] == "mail"] == [["anna@example.com"]]


def test_bad_input_refused_and_tenant_quota(tmp_path, smtp_sink):
    spool = MailSpool(settings(smtp_sink, tenant_quota_mb=1), tmp_path / "spool")
    spool.open()
    with pytest.raises(ValidationError, match=r"to: not an e-mail address: 'not-an-address'"):
        spool.submit(to=["not-an-address"], subject="s", body="b")
    with pytest.raises(ValidationError, match="bounce_to"):
        spool.submit(to=["a@example.com"], subject="s", body="b", bounce_to="x y@z")
    big = Attachment("a.wav", "audio/wav", b"\0" * 600_000)
    spool.submit(to=["a@example.com"], subject="s", body="b", tenant="acme", attachments=[big])
    with pytest.raises(MailQuotaError, match="acme"):
        spool.submit(to=["a@example.com"], subject="s", body="b", tenant="acme", attachments=[big])
    # another tenant has its own quota
    spool.submit(to=["a@example.com"], subject="s", body="b", tenant="other", attachments=[big])
    assert spool.counts()["refused_quota"] == 1 and spool.counts()["spool_queued"] == 2


def test_settings_section_is_validated():
    from hpbx.errors import ConfigError
    from hpbx.settings import from_dict

    s = from_dict({"smtp": {"host": "127.0.0.1", "port": 587, "tls": "starttls", "username": "u",
                            "password": "p", "sender": "pbx@example.com"}})
    assert (s.smtp.tls, s.smtp.username, s.smtp.port) == ("starttls", "u", 587)
    with pytest.raises(ConfigError, match=r"smtp.tls: must be one of none, starttls, tls"):
        from_dict({"smtp": {"tls": "ssl"}})
    with pytest.raises(ConfigError, match=r"smtp.bounce_to: not an e-mail address"):
        from_dict({"smtp": {"bounce_to": "nope"}})
    with pytest.raises(ConfigError, match=r"smtp.retry_max: must not be below retry_min"):
        from_dict({"smtp": {"retry_min": 60, "retry_max": 10}})
    assert dataclasses.asdict(from_dict({}).smtp)["give_up_after"] >= 86400
