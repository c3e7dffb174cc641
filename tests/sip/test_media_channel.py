"""The media channel end to end (issue 10, "the one way media services are written"): a SIPp
caller is answered at hpbx by a service loaded through HPBX_SERVICE_MODULES; the caller's own
RTP socket hears the service's beep, its RFC 4733 digit (SIPp's pcap for "5", whose end packet
comes three times) reaches the service once, what it sends is recorded into a WAV, and the
service's BYE ends the call with a CDR that names the service. A caller hanging up mid-service,
a registered star code, and a usage nobody serves are covered too; after each call the relay's
port pool is full again."""
from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness import have_sipp, reserved_port
from callrig import CallRig, number, trunk, user

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from media_peer import Peer, decode, dominant, encode, power, read_pcap_udp, read_wav, sine  # noqa: E402

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

PCAP5 = "/usr/share/sip-tester/dtmf_2833_5.pcap"
CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "svc"\n' + trunk("carrier", CARRIER) + user("s1", internal="21")
          + number("044555100", usage="conference") + number("044555200", usage="fax"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    d = tmp_path_factory.mktemp("channel")
    env = {"HPBX_SERVICE_MODULES": "probe_service", "PROBE_DIR": str(d),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))}
    r = CallRig(d, TENANT, env=env)
    r.start()
    yield r
    r.stop()


def wait_call(rig, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = rig.admin("call.list")
        if calls and calls[0].get("state") == "answered" and calls[0].get("media"):
            return calls[0]
        time.sleep(0.05)
    raise AssertionError(f"no answered service call: {rig.admin('call.list')}")


def test_service_beeps_hears_a_pcap_digit_records_and_hangs_up(rig):
    peer = Peer()
    try:
        caller = rig.sipp("call_uac_service.xml", service="044555100", port=CARRIER, timeout=20,
                          extra=["-key", "rtp_port", str(peer.port)], name="svc")
        call = wait_call(rig)
        assert call["service"] == "probe" and call["answered_by"] == "service:probe", call
        port = call["media"]["a"]["port"]
        beep = peer.recv(n=10, timeout=3)
        assert len(beep) == 10 and all(p.pt == 8 for p in beep), beep
        pcm = np.concatenate([decode("PCMA", p.payload) for p in beep[2:]])
        assert dominant(pcm, (425, 1000, 1400)) == 1000 and power(pcm, 1000) > 1e5
        assert len({p.ssrc for p in beep}) == 1
        assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in zip(beep, beep[1:]))
        # RFC 4733 "5" as SIPp sends it (re-stamped onto our own SSRC and sequence)
        pkts = [data for _, data in read_pcap_udp(PCAP5)]
        for i, data in enumerate(pkts):
            peer.send(data, port)
            time.sleep(0.02)
        time.sleep(0.1)
        # then one second of 600 Hz for the recorder
        ts, seq = 80000, 5000
        for i in range(60):
            frame = encode("PCMA", sine(600, 20, 6000, phase=2 * np.pi * 600 * i * 0.02))
            peer.send(bytes([0x80, 8]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big")
                      + (0x1234).to_bytes(4, "big") + frame, port)
            seq, ts = seq + 1, ts + 160
            time.sleep(0.02)
        res = caller.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        peer.close()
    cdr = [c for c in rig.cdrs(count=1) if c.get("service") == "probe"][-1]
    assert cdr["answered_by"] == "service:probe" and cdr["answer"], cdr
    assert cdr["service_result"] == "digit=5 record=max:1000", cdr
    rate, audio = read_wav(str(rig.dir / "probe.wav"))
    assert rate == 8000 and len(audio) == 8000, (rate, len(audio))
    assert power(audio, 600) > 100 * power(audio, 1000), "the recording holds the caller's tone"
    rig.assert_idle()


def test_caller_hanging_up_ends_the_service_and_frees_its_ports(rig):
    res = rig.call("call_uac.xml", "044555100", port=CARRIER, pause_ms=800)
    assert res.successful == 1, res.describe() + rig.server.log()
    cdr = rig.cdrs(count=2)[-1]
    assert cdr["service"] == "probe" and cdr["end_reason"] == "caller hung up", cdr
    assert cdr["service_result"] == "answered", cdr  # it was still waiting for its digit
    rig.assert_idle()


def test_registered_star_code_answers_a_user_with_its_argument(rig):
    port = reserved_port()
    res = rig.sipp("call_uac_auth_bye.xml", service="*77712%23", port=port, timeout=10,
                   extra=["-au", "s1", "-ap", "s1-pw"], name="star").finish()
    assert res.successful == 1, res.describe() + rig.server.log()
    cdr = [c for c in rig.cdrs(count=3) if c.get("service") == "probe-star"][-1]
    assert cdr["service_result"] == "code=*777 arg=12 user=s1", cdr
    rig.assert_idle()


def test_usage_without_a_service_is_still_refused(rig):
    res = rig.call("call_uac_fail.xml", "044555200", port=CARRIER)
    assert res.successful == 1, res.describe()
    assert res.received("SIP/2.0 480"), res.describe()
    rig.assert_idle()


def test_200_is_resent_until_the_ack_and_a_caller_that_never_acks_gets_bye(rig):
    """RFC 3261 §13.3.1.4: hpbx re-sends its 200 at T1, 2·T1 … T2 (the rig: 100/400 ms) and, with
    no ACK after 64·T1 (6.4 s), ends the call with a BYE; the caller here is a bare UDP socket
    that never acknowledges."""
    import socket
    import uuid

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", CARRIER))  # from the carrier trunk: no challenge
    s.settimeout(0.5)
    peer = Peer()
    try:
        host, port = rig.target.rsplit(":", 1)
        cid = uuid.uuid4().hex
        sdp = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {peer.port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")
        invite = (f"INVITE sip:044555100@{host}:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{CARRIER};branch=z9hG4bK{cid[:10]};rport\r\n"
                  f"Max-Forwards: 70\r\nFrom: <sip:0311112222@127.0.0.1:{CARRIER}>;tag=noack\r\n"
                  f"To: <sip:044555100@{host}:{port}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:0311112222@127.0.0.1:{CARRIER}>\r\nContent-Type: application/sdp\r\n"
                  f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")
        s.sendto(invite.encode(), (host, int(port)))
        oks, bye, t0 = [], None, time.monotonic()
        while time.monotonic() - t0 < 12 and bye is None:
            try:
                data = s.recv(65535).decode("latin-1")
            except socket.timeout:
                continue
            if data.startswith("SIP/2.0 200"):
                oks.append(time.monotonic() - t0)
            elif data.startswith("BYE "):
                bye = time.monotonic() - t0
                via = next(l for l in data.split("\r\n") if l.lower().startswith("via:"))
                head = {l.split(":", 1)[0].lower(): l for l in data.split("\r\n") if ":" in l}
                s.sendto((f"SIP/2.0 200 OK\r\n{via}\r\n{head['from']}\r\n{head['to']}\r\n"
                          f"{head['call-id']}\r\n{head['cseq']}\r\nContent-Length: 0\r\n\r\n").encode(),
                         (host, int(port)))
    finally:
        s.close()
        peer.close()
    assert len(oks) >= 10, oks  # the first 200 and its re-sends
    gaps = [b - a for a, b in zip(oks, oks[1:])]
    assert 0.05 < gaps[0] < 0.3 and max(gaps) < 0.7, gaps  # T1 first, never beyond T2 (+ slack)
    assert bye is not None and 6.0 < bye < 9.0, (bye, oks)
    deadline, cdr = time.monotonic() + 3, []
    while not cdr and time.monotonic() < deadline:  # CDRs are written in batches
        cdr = [c for c in rig.cdrs() if c["call_id"] == cid]
        time.sleep(0.1)
    assert cdr and cdr[-1]["end_reason"] == "no ACK from caller", cdr
    rig.assert_idle()
