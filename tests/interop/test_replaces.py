"""INVITE with Replaces (RFC 3891): BLF pickup of a ringing phone (the dialog identifiers come
from the BLF NOTIFY, RFC 4235) and call move of an answered call to the same user's other
device (FEATURES 13.1, 13.2). baresip phones are caller and rung/desk phone; the picking or
taking-over device is a plain UDP SIP client in the test that sends a tone the caller must hear."""
from __future__ import annotations

import math
import re
import socket
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from clients import Baresip
from harness import digest_authorization, header, reserved_port
from callrig import CallRig, user
from rtp_pcap import _ulaw
from test_default_config import wait_heard

NAMES = {"pia": "521", "pat": "522", "pam": "523", "pol": "524"}
TENANT = '[tenant]\nname = "repl"\n' + "".join(user(n, i) for n, i in NAMES.items())
NS = "{urn:ietf:params:xml:ns:dialog-info}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("repl"), TENANT)
    r.start()
    yield r
    r.stop()


class Device:
    """A SIP device on one UDP socket: SUBSCRIBEs, INVITEs with digest, answers requests
    (200 to NOTIFY and BYE), and sends a PCMU tone from its RTP socket."""

    def __init__(self, rig, username):
        self.rig, self.user, self.pw = rig, username, f"{username}-pw"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", reserved_port()))
        self.port = self.sock.getsockname()[1]
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", reserved_port()))
        self.server = ("127.0.0.1", rig.server.port)
        self.call_id = uuid.uuid4().hex
        self.tag = uuid.uuid4().hex[:8]
        self.cseq = 0
        self.notifies: list[str] = []
        self.byes: list[str] = []
        self._stop = False

    def close(self):
        self._stop = True
        self.sock.close()
        self.rtp.close()

    def _send(self, text: str):
        self.sock.sendto(text.encode(), self.server)

    def _reply_ok(self, req: str):
        keep = [h for h in req.split("\r\n")[1:] if re.match(r"(?i)(via|from|to|call-id|cseq):", h)]
        self._send("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n")

    def recv(self, timeout=5.0, want=lambda m: True) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65535).decode(errors="replace")
            except (socket.timeout, TimeoutError):
                return None
            if data.startswith("NOTIFY "):
                self._reply_ok(data)
                self.notifies.append(data)
            elif data.startswith("BYE "):
                self._reply_ok(data)
                self.byes.append(data)
            if want(data):
                return data
        return None

    def request(self, method, uri, extra=(), body="", call_id=None, to_tag=None, auth=None):
        self.cseq += 1
        branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:{self.user}@127.0.0.1>;tag={self.tag}", f"To: {to}",
                 f"Call-ID: {call_id or self.call_id}", f"CSeq: {self.cseq} {method}",
                 f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>", *extra]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body)}", "", body]
        self._send("\r\n".join(lines))

    def authed(self, method, uri, extra=(), body="", call_id=None) -> str:
        """Send, answer a 407 with digest, and return the final response."""
        final = lambda m: m.startswith("SIP/2.0") and not re.match(r"SIP/2.0 1\d\d", m)  # noqa: E731
        self.request(method, uri, extra, body, call_id)
        resp = self.recv(want=final)
        if resp and resp.startswith("SIP/2.0 407"):
            auth = digest_authorization(header(resp, "Proxy-Authenticate")[0], self.user, self.pw,
                                        method, uri)
            self.request(method, uri, extra, body, call_id, auth=auth)
            resp = self.recv(want=final)
        assert resp is not None, f"no answer to {method}"
        return resp

    def subscribe(self, number):
        uri = f"sip:{number}@{self.rig.target}"
        resp = self.authed("SUBSCRIBE", uri, ["Event: dialog", "Accept: application/dialog-info+xml",
                                              "Expires: 600"])
        assert resp.startswith("SIP/2.0 200"), resp

    def dialog_state(self, state, timeout=5.0) -> dict:
        """The first dialog of the newest NOTIFY whose state is ``state``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in reversed(self.notifies):
                root = ET.fromstring(n.split("\r\n\r\n", 1)[1])
                for d in root.findall(f"{NS}dialog"):
                    if d.find(f"{NS}state").text == state and "local-tag" in d.attrib:
                        return d.attrib
            self.recv(0.2)
        raise AssertionError(f"no NOTIFY with {state}: {self.notifies}")

    def invite_replacing(self, number, dialog: dict) -> str:
        uri = f"sip:{number}@{self.rig.target}"
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {self.rtp.getsockname()[1]} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
        replaces = (f"Replaces: {dialog['call-id']};to-tag={dialog['remote-tag']};"
                    f"from-tag={dialog['local-tag']}")
        call_id = uuid.uuid4().hex
        resp = self.authed("INVITE", uri, [replaces, "Supported: replaces"], sdp, call_id)
        if resp.startswith("SIP/2.0 200"):
            to = header(resp, "To")[0]
            self.cseq_ack = self.cseq
            self._send(f"ACK {header(resp, 'Contact')[0].strip('<>')} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
                       f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@127.0.0.1>;tag={self.tag}\r\nTo: {to}\r\n"
                       f"Call-ID: {call_id}\r\nCSeq: {self.cseq} ACK\r\nContent-Length: 0\r\n\r\n")
            body = resp.split("\r\n\r\n", 1)[1]
            self.media_to = (re.search(r"c=IN IP4 (\S+)", body).group(1),
                             int(re.search(r"m=audio (\d+)", body).group(1)))
        return resp

    def send_tone(self, freq=900.0, seconds=3.0):
        def run():
            for n in range(int(seconds * 50)):
                if self._stop:
                    return
                payload = bytes(_ulaw(int(9000 * math.sin(2 * math.pi * freq * (n * 160 + i) / 8000)))
                                for i in range(160))
                try:
                    self.rtp.sendto(struct.pack("!BBHII", 0x80, 0, n, n * 160, 0xC0FFEE) + payload,
                                    self.media_to)
                except OSError:
                    return
                time.sleep(0.02)
        threading.Thread(target=run, daemon=True).start()


def phone(rig, tmp_path, name, answermode="auto", tone=440):
    p = Baresip(tmp_path / name, name, f"{name}-pw", rig.target, sip_port=reserved_port(),
                answermode=answermode, tone=tone)
    p.wait_event("REGISTER_OK")
    return p


def test_blf_pickup_with_replaces(rig, tmp_path):
    """pol watches pia (BLF) and may pick up her calls: pam calls pia, pia's phone rings, pol
    sends INVITE with Replaces naming the early dialog from the NOTIFY; pol is connected to
    pam (pam hears pol's tone), pia's phone stops ringing. pat, not allowed, gets 403."""
    rig.admin("user.update", username="pol", supervise=["pia"], pickup=["pia"])
    rig.admin("user.update", username="pat", supervise=["pia"])
    pol, pat = Device(rig, "pol"), Device(rig, "pat")
    try:
        with phone(rig, tmp_path, "pia", answermode="manual") as pia, phone(rig, tmp_path, "pam") as pam:
            pol.subscribe(NAMES["pia"])
            pat.subscribe(NAMES["pia"])
            pam.command("dial", f"sip:{NAMES['pia']}@{rig.target}")
            pia.wait_event("CALL_INCOMING")
            early = pol.dialog_state("early")
            refused = pat.invite_replacing(NAMES["pia"], pat.dialog_state("early"))
            assert refused.startswith("SIP/2.0 403"), refused
            bogus = dict(early, **{"call-id": "nope"})
            assert pol.invite_replacing(NAMES["pia"], bogus).startswith("SIP/2.0 481")
            ok = pol.invite_replacing(NAMES["pia"], early)
            assert ok.startswith("SIP/2.0 200"), ok
            pam.wait_event("CALL_ESTABLISHED")
            pia.wait_event("CALL_CLOSED")
            pol.send_tone(900)
            assert abs(wait_heard(pam, 900) - 900) <= 20
            pam.command("hangup")
            assert pol.recv(5, want=lambda m: m.startswith("BYE ")), "no BYE for the picker"
    finally:
        pol.close()
        pat.close()
        rig.admin("user.update", username="pol", supervise=[], pickup=[])
        rig.admin("user.update", username="pat", supervise=[])
    rig.wait_idle()


def test_call_move_to_the_same_users_other_device(rig, tmp_path):
    """pia answers pam's call on her desk phone; her second device (a SIP client registered to
    nothing, authenticating as pia) sends INVITE with Replaces naming that confirmed dialog:
    it takes the call over (pam hears its tone), the desk phone gets BYE; pat trying the same
    is refused with 403."""
    rig.admin("user.update", username="pia", supervise=["pia"])
    rig.admin("user.update", username="pat", supervise=["pia"])
    mobile, pat = Device(rig, "pia"), Device(rig, "pat")
    try:
        with phone(rig, tmp_path, "pia") as desk, phone(rig, tmp_path, "pam") as pam:
            mobile.subscribe(NAMES["pia"])
            pat.subscribe(NAMES["pia"])
            pam.command("dial", f"sip:{NAMES['pia']}@{rig.target}")
            pam.wait_event("CALL_ESTABLISHED")
            desk.wait_event("CALL_ESTABLISHED")
            confirmed = mobile.dialog_state("confirmed")
            refused = pat.invite_replacing(NAMES["pia"], pat.dialog_state("confirmed"))
            assert refused.startswith("SIP/2.0 403"), refused
            ok = mobile.invite_replacing(NAMES["pia"], confirmed)
            assert ok.startswith("SIP/2.0 200"), ok
            desk.wait_event("CALL_CLOSED")
            mobile.send_tone(900)
            assert abs(wait_heard(pam, 900) - 900) <= 20
            assert not [e for e in pam.drain() if e.get("type") == "CALL_CLOSED"]
            pam.command("hangup")
            assert mobile.recv(5, want=lambda m: m.startswith("BYE ")), "no BYE for the new device"
    finally:
        mobile.close()
        pat.close()
        rig.admin("user.update", username="pia", supervise=[])
        rig.admin("user.update", username="pat", supervise=[])
    rig.wait_idle()
