"""The mail spool's admin methods (mail.*) over the real socket on a real spool directory.
The spool's sender is not started here (no SMTP server): what is spooled stays queued, which is
what these methods list, retry and delete. Delivery itself: tests/mail."""
from __future__ import annotations

import pytest

from adminrig import make_settings
from hpbx.admin.context import AdminContext
from hpbx.admin.protocol import RpcError as RpcClientError
from hpbx.mail.spool import MailSpool


@pytest.fixture
def mail(start_admin, tmp_path):
    ctx = AdminContext(settings=make_settings(tmp_path))
    ctx.mail = MailSpool(ctx.settings.smtp, tmp_path / "spool")
    ctx.mail.open()
    ctx.stats_sources["mail"] = ctx.mail.counts
    return start_admin(ctx), ctx


def test_send_queue_retry_delete(mail, tmp_path):
    st, ctx = mail
    with st.client() as c:
        first = c.call("mail.send", to="anna@example.com", subject="hello", tenant="acme")["id"]
        second = c.call("mail.send", to="bob@example.com")["id"]
        rows = c.call("mail.queue")
        assert [r["id"] for r in rows] == [first, second]
        assert rows[0]["to"] == "anna@example.com" and rows[0]["subject"] == "hello"
        assert rows[1]["subject"] == "hpbx test mail" and rows[1]["state"] == "queued"
        assert [r["id"] for r in c.call("mail.queue", tenant="acme")] == [first]
        assert c.call("mail.queue", state="bounced") == []
        assert c.call("mail.retry", id=first) == {"queued": 1}
        assert c.call("mail.retry") == {"queued": 2}
        assert c.call("mail.delete", id=first) == {"id": first, "deleted": True}
        assert [r["id"] for r in c.call("mail.queue")] == [second]
        assert c.call("stats.get", layer="mail")["mail"]["spool_queued"] == 1
        for method, params, field in (("mail.send", {"to": "x"}, "to"),
                                      ("mail.queue", {"state": "lost"}, "state")):
            with pytest.raises(RpcClientError) as info:
                c.call(method, **params)
            assert info.value.data["field"] == field
        with pytest.raises(RpcClientError) as info:
            c.call("mail.delete", id=first)
        assert info.value.data == {"kind": "mail", "key": first}
    assert sorted(p.suffix for p in (tmp_path / "spool").iterdir()) == [".eml", ".json"]
