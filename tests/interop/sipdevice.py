"""A SIP device on one plain UDP socket for the interop tests that need exact control:
SUBSCRIBE and INVITE (with Replaces) with digest, answers to NOTIFY and BYE, a PCMU tone."""
from __future__ import annotations

import math
import re
import socket
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ET

from harness import digest_authorization, header, reserved_port
from rtp_pcap import _ulaw

NS = "{urn:ietf:params:xml:ns:dialog-info}"


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
        # a final response to the request just sent (not a retransmitted 407 of the first one)
        final = lambda m: (m.startswith("SIP/2.0") and not re.match(r"SIP/2.0 1\d\d", m)  # noqa: E731
                           and re.search(rf"(?im)^CSeq:\s*{self.cseq}\s", m) is not None)
        self.request(method, uri, extra, body, call_id)
        resp = self.recv(want=final)
        if resp and resp.startswith("SIP/2.0 407"):
            auth = digest_authorization(header(resp, "Proxy-Authenticate")[0], self.user, self.pw,
                                        method, uri)
            self.request(method, uri, extra, body, call_id, auth=auth)
            resp = self.recv(want=final)
        assert resp is not None, f"no answer to {method}"
        return resp

    def subscribe(self, number, expires=600, expect="SIP/2.0 200") -> str:
        uri = f"sip:{number}@{self.rig.target}"
        resp = self.authed("SUBSCRIBE", uri, ["Event: dialog", "Accept: application/dialog-info+xml",
                                              f"Expires: {expires}"])
        assert resp.startswith(expect), resp
        if resp.startswith("SIP/2.0 200"):
            self.sub_uri, self.sub_to_tag = uri, re.search(r";tag=([^;\s]+)", header(resp, "To")[0]).group(1)
            self.sub_contact = header(resp, "Contact")[0].strip("<>")
        return resp

    def refresh(self, expires) -> str:
        """SUBSCRIBE inside the subscription's dialog (refresh, or Expires 0 to end it)."""
        self.request("SUBSCRIBE", self.sub_contact, ["Event: dialog", f"Expires: {expires}"],
                     to_tag=self.sub_to_tag)
        return self.recv(want=lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12])

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

    def invite_replacing(self, number, dialog: dict, ack_after: float = 0.0) -> str:
        """INVITE with Replaces; on 200 the ACK goes after ``ack_after`` s (the 200s seen
        meanwhile, and in the 2 s after the ACK, are counted in ``ok_before_ack`` and
        ``ok_after_ack``)."""
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
            is_ok = lambda m: m.startswith("SIP/2.0 200") and f"Call-ID: {call_id}" in m  # noqa: E731
            self.ok_before_ack = self._count(ack_after, is_ok)
            self._send(f"ACK {header(resp, 'Contact')[0].strip('<>')} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
                       f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@127.0.0.1>;tag={self.tag}\r\nTo: {to}\r\n"
                       f"Call-ID: {call_id}\r\nCSeq: {self.cseq} ACK\r\nContent-Length: 0\r\n\r\n")
            if ack_after:
                self.ok_after_ack = self._count(2.0, is_ok)
            body = resp.split("\r\n\r\n", 1)[1]
            self.media_to = (re.search(r"c=IN IP4 (\S+)", body).group(1),
                             int(re.search(r"m=audio (\d+)", body).group(1)))
        return resp

    def _count(self, seconds: float, want) -> int:
        n, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.recv(max(0.05, deadline - time.monotonic()), want=want) is not None:
                n += 1
        return n

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
