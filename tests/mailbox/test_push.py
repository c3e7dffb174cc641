"""Push webhooks (issue 11, FEATURES 4.8.14): a real HTTP server in the test receives the
signed JSON POSTs of a trunk call (SIPp) to a user with push_incoming and push_missed that
nobody answers: incoming_call, then missed_call; the first POST gets 503 and is retried with
the same delivery id; the HMAC-SHA256 signature of each body checks with the tenant's secret."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import have_sipp, reserved_port
from callrig import CallRig, number, trunk

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
HOOK = reserved_port()
SECRET = "s3cret-hook"
TENANT = (f'[tenant]\nname = "pushy"\npush_url = "http://127.0.0.1:{HOOK}/hpbx"\npush_secret = "{SECRET}"\n'
          + trunk("carrier", CARRIER)
          + '\n[[users]]\nusername = "pia"\nsip_password = "pia-pw"\ninternal_number = "41"\n'
          + '[users.flags]\npush_incoming = true\npush_missed = true\n'
          + '\n[[users]]\nusername = "quiet"\nsip_password = "quiet-pw"\ninternal_number = "42"\n'
          + number("044555800", (2, ["user:pia", "user:quiet"])))


class Hook(BaseHTTPRequestHandler):
    got: list = []
    refuse_first = [True]

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.got.append((dict(self.headers), body))
        status = 503 if Hook.refuse_first[0] else 204
        Hook.refuse_first[0] = False
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    srv = ThreadingHTTPServer(("127.0.0.1", HOOK), Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield Hook
    srv.shutdown()
    srv.server_close()


def test_signed_incoming_and_missed_pushes_retried_after_503(tmp_path, hook):
    with CallRig(tmp_path, TENANT) as rig:
        res = rig.call("call_uac_fail.xml", "044555800", port=CARRIER)
        assert res.successful == 1, res.describe() + rig.server.log()
        deadline = time.monotonic() + 10
        while len(hook.got) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        got = list(hook.got)
        assert len(got) == 3, got  # the incoming push twice (503, then 204), the missed push once
        docs = []
        for headers, body in got:
            sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Hpbx-Signature"] == sig
            assert headers["Content-Type"] == "application/json"
            docs.append(json.loads(body))
        # the two pushes go out at once: whichever arrived first got the 503 and came again
        again = [i for i, d in enumerate(docs) if i and d == docs[0]]
        assert len(again) == 1 and got[again[0]][0]["X-Hpbx-Delivery"] == got[0][0]["X-Hpbx-Delivery"]
        assert sorted(d["event"] for d in docs) == sorted(["incoming_call", "missed_call", docs[0]["event"]])
        assert all(d["user"] == "pia" and d["caller"] == "0311112222" and d["called"] == "044555800"
                   and d["tenant"] == "pushy" for d in docs)
        stats = rig.admin("stats.get", layer="voicemail")["voicemail"]
        assert stats["push_sent"] == 2 and stats["push_retried"] == 1, stats
