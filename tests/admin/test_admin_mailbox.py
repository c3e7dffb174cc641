"""The mailbox and recording admin methods (mailbox.*, call.record, recording.*) over the real
socket of a running server. A message is put into anna's mailbox folder in the store's own
format before the start; listing, counting, marking, downloading and deleting it, and the
errors (unknown user, message, call, recording; a bad state) are checked. The calls that make
messages and recordings: tests/mailbox."""
from __future__ import annotations

import base64
import json
import wave

import pytest

from harness import HpbxServer
from hpbx.admin.client import AdminClient
from hpbx.admin.protocol import RpcError

TENANT = '''[tenant]
name = "mbadmin"

[[users]]
username = "anna"
sip_password = "anna-pw"
internal_number = "21"
[users.mailbox]
enabled = true
'''


def test_mailbox_and_recording_methods(tmp_path):
    (tmp_path / "tenant.toml").write_text(TENANT)
    box = tmp_path / "srv" / "voicemail" / "mailboxes" / "anna"
    box.mkdir(parents=True)
    with wave.open(str(box / "m1.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(bytes(16000))
    (box / "m1.json").write_text(json.dumps({"id": "m1", "caller": "22", "caller_name": "Bob",
                                             "received_at": "2026-12-03T09:00:00+00:00",
                                             "duration_ms": 1000, "state": "new"}))
    with HpbxServer(tmp_path / "srv", provision_files=(tmp_path / "tenant.toml",)) as srv:
        with AdminClient(str(srv.dir / "hpbx.sock")) as c:
            assert [m["id"] for m in c.call("mailbox.list", {"user": "anna"})] == ["m1"]
            assert c.call("mailbox.counts", {"user": "anna"}) == {"username": "anna", "new": 1, "old": 0}
            got = c.call("mailbox.get", {"user": "anna", "id": "m1"})
            assert base64.b64decode(got["wav_base64"])[:4] == b"RIFF" and got["caller_name"] == "Bob"
            assert c.call("mailbox.mark", {"user": "anna", "id": "m1", "state": "old"})["state"] == "old"
            assert c.call("mailbox.counts", {"user": "anna"})["old"] == 1
            assert c.call("mailbox.delete", {"user": "anna", "id": "m1"})["deleted"] is True
            assert c.call("mailbox.list", {"user": "anna"}) == []
            assert c.call("recording.list") == []
            for method, params, data in (
                    ("mailbox.list", {"user": "nobody"}, {"kind": "user", "key": "nobody"}),
                    ("mailbox.delete", {"user": "anna", "id": "m1"}, {"kind": "message", "key": "m1"}),
                    ("call.record", {"call_id": "x", "user": "anna", "action": "start"}, {"kind": "call", "key": "x"}),
                    ("recording.get", {"id": "r9"}, {"kind": "recording", "key": "r9"})):
                with pytest.raises(RpcError) as err:
                    c.call(method, params)
                assert err.value.data == data, (method, err.value.data)
            with pytest.raises(RpcError) as err:
                c.call("mailbox.mark", {"user": "anna", "id": "m1", "state": "urgent"})
            assert err.value.data["field"] == "state"
            with pytest.raises(RpcError) as err:
                c.call("call.record", {"call_id": "x", "user": "anna", "action": "stop"})
            assert err.value.data["field"] == "call_id"
            # the mailbox settings and the tenant's issue-11 fields over user.update/tenant.update
            u = c.call("user.update", {"username": "anna", "mailbox": {"enabled": True, "pin": "4321",
                                                                       "timeout": 12, "keep": False}})
            assert (u["mailbox"]["pin"], u["mailbox"]["timeout"], u["mailbox"]["keep"]) == ("4321", 12, False)
            with pytest.raises(RpcError) as err:
                c.call("user.update", {"username": "anna", "mailbox": {"enabled": True, "pin": "12a"}})
            assert err.value.data["field"] == "mailbox.pin", err.value.data
            assert c.call("user.get", {"username": "anna"})["mailbox"]["pin"] == "4321"  # unchanged
            t = c.call("tenant.update", {"name": "mbadmin", "recording_notice": "prompt", "voicemail_format": "mp3",
                                         "push_url": "https://push.example/hook", "push_secret": "s3"})
            assert (t["recording_notice"], t["voicemail_format"], t["push_url"]) == (
                "prompt", "mp3", "https://push.example/hook")
            with pytest.raises(RpcError) as err:
                c.call("tenant.update", {"name": "mbadmin", "recording_notice": "announcement:0"})
            assert err.value.data["field"] == "recording_notice", err.value.data
