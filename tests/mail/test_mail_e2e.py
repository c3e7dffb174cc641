"""The spool in the running server: mail.send over the admin socket, the SMTP server killed
mid-queue, hpbx killed with SIGKILL, both started again: every message arrives exactly once."""
from __future__ import annotations

import time

from harness import HpbxServer
from hpbx.admin.client import AdminClient


def smtp_toml(port: int, **extra) -> str:
    lines = ["[smtp]", 'host = "127.0.0.1"', f"port = {port}", 'sender = "pbx@example.com"',
             "timeout = 5", "retry_min = 1", "retry_max = 2"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_smtp_killed_mid_queue_and_hpbx_killed_mail_arrives_exactly_once(tmp_path, smtp_sink):
    n = 20
    smtp_sink.start("--die-before", "8")  # crashes when the 8th DATA arrives
    srv = HpbxServer(tmp_path / "hpbx", extra_toml=smtp_toml(smtp_sink.port))
    srv.start()
    try:
        with AdminClient(str(srv.dir / "hpbx.sock")) as admin:
            ids = [admin.call("mail.send", to=f"user{i}@example.com", subject=f"message {i}",
                              tenant="acme")["id"] for i in range(n)]
            wait_until(lambda: not smtp_sink.alive(), what="SMTP server crash")
            # what waits, and why, is visible over admin
            rows = wait_until(lambda: [r for r in admin.call("mail.queue") if r["last_error"]],
                              what="a deferred message")
            assert all(r["state"] == "queued" for r in rows)
            waiting = admin.call("mail.queue", tenant="acme")
            assert len(waiting) == n - 7
            stats = admin.call("stats.get", layer="mail")["mail"]
            assert stats["sent"] == 7 and stats["retried"] >= 1 and stats["spool_queued"] == n - 7
    finally:
        srv.kill()  # SIGKILL: nothing is flushed on the way out
    assert len(smtp_sink.messages()) == 7
    smtp_sink.start()
    srv.start()
    try:
        got = smtp_sink.wait_count(n)
        with AdminClient(str(srv.dir / "hpbx.sock")) as admin:
            wait_until(lambda: admin.call("mail.queue") == [], what="an empty spool")
            time.sleep(1.5)  # a duplicate would come within one retry interval
        got = smtp_sink.messages()
        assert sorted(m["X-Hpbx-Mail-Id"] for m in got) == sorted(ids)
        assert len({m["Message-ID"] for m in got}) == n
        assert sorted(m["X-Envelope-To"] for m in got) == sorted(f"user{i}@example.com" for i in range(n))
    finally:
        srv.stop()


def test_mail_methods_errors_name_the_field(tmp_path, smtp_sink):
    import pytest
    from hpbx.admin.protocol import RpcError

    smtp_sink.start("--refuse", "gone@example.com")
    with HpbxServer(tmp_path / "hpbx", extra_toml=smtp_toml(smtp_sink.port)) as srv:
        with AdminClient(str(srv.dir / "hpbx.sock")) as admin:
            with pytest.raises(RpcError) as err:
                admin.call("mail.send", to="not an address")
            assert err.value.data["field"] == "to" and "not an e-mail address" in err.value.message
            with pytest.raises(RpcError) as err:
                admin.call("mail.delete", id="nope")
            assert err.value.data == {"kind": "mail", "key": "nope"}
            mail_id = admin.call("mail.send", to="gone@example.com", subject="x")["id"]
            [row] = wait_until(lambda: admin.call("mail.queue", state="bounced"), what="a bounce")
            assert row["id"] == mail_id and row["last_code"] == 550
            assert admin.call("stats.get", layer="mail")["mail"]["bounced"] == 1
            assert admin.call("mail.delete", id=mail_id) == {"id": mail_id, "deleted": True}
            assert admin.call("mail.queue") == []
