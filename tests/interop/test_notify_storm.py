"""A NOTIFY storm (issue 18, "Bad input"): hpbx subscribes to nothing and terminates every
REFER itself, so no NOTIFY it receives can belong to a subscription of its own: each is
answered 481 (RFC 6665 §4.1.3), from a party of a live call inside that call's dialog or from
anyone else with forged identifiers, and nothing changes: the call stays up with its audio,
nothing reaches its other party, the server keeps answering. (Banning the flooding source is
the ban engine's, tested in tests/security; the test config here bans nothing.)"""
from __future__ import annotations

import re
import socket
import time
import uuid

import pytest

from clients import Baresip
from harness import reserved_pair
from callrig import CallRig, user
from test_attended import NAMES, Transferor, wait_calls

TENANT = '[tenant]\nname = "storm"\n' + "".join(user(n, i) for n, i in NAMES.items())
BURST, BATCH = 1000, 50  # NOTIFYs from the outsider, sent in batches with their answers read


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("storm"), TENANT)
    r.start()
    yield r
    r.stop()


def _notify(port: int, call_id: str, n: int, to_tag: str) -> bytes:
    body = "SIP/2.0 200 OK\r\n"
    return ("\r\n".join([
        f"NOTIFY sip:{NAMES['ada']}@127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
        "Max-Forwards: 70", f"From: <sip:intruder@127.0.0.2>;tag=i{n}", f"To: <sip:hpbx@127.0.0.1>;tag={to_tag}",
        f"Call-ID: {call_id}", f"CSeq: {n + 1} NOTIFY", "Event: refer", "Subscription-State: active;expires=60",
        "Content-Type: message/sipfrag;version=2.0", f"Content-Length: {len(body)}", "", body])).encode()


def test_a_notify_storm_gets_481_and_changes_nothing(rig, tmp_path):
    """bob (raw) is in a call with ada (baresip): 30 NOTIFYs inside that very dialog get 481
    each; then an outsider sends 1,000 NOTIFYs, half naming the live call's Call-ID: 1,000
    times 481. The call is still the same and up, ada's audio still flows through the relay,
    ada got nothing (no transfer, no hang-up), and hpbx still answers (OPTIONS lists NOTIFY)."""
    bob = Transferor(rig, "bob")
    storm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    storm.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    storm.bind(("127.0.0.2", 0))
    port = storm.getsockname()[1]
    try:
        bob.register()
        with Baresip(tmp_path / "ada", "ada", "ada-pw", rig.target, sip_port=reserved_pair(), tone=660) as ada:
            ada.wait_event("REGISTER_OK")
            made = bob.make_call(NAMES["ada"])
            ada.wait_event("CALL_ESTABLISHED")
            before = sorted((c["call_id"], c["answered_by"], c["state"]) for c in wait_calls(rig, 1))
            # inside the call's own dialog, from its party
            for _ in range(30):
                resp = bob.in_dialog(made, "NOTIFY", ["Event: refer", "Subscription-State: active;expires=60"])
                assert resp is not None and resp.startswith("SIP/2.0 481"), resp
            # an outsider's storm, half of it naming the live call
            statuses = []
            target = ("127.0.0.1", rig.server.port)
            for start in range(0, BURST, BATCH):
                for n in range(start, start + BATCH):
                    cid = made["call_id"] if n % 2 else uuid.uuid4().hex
                    storm.sendto(_notify(port, cid, n, made["local_tag"] if n % 4 == 1 else "x"), target)
                deadline = time.monotonic() + 3
                while len(statuses) < start + BATCH and time.monotonic() < deadline:
                    storm.settimeout(max(0.05, deadline - time.monotonic()))
                    try:
                        data = storm.recv(65535).decode(errors="replace")
                    except (socket.timeout, TimeoutError):
                        break
                    statuses.append(data.split(" ", 2)[1])
            assert len(statuses) == BURST and set(statuses) == {"481"}, (len(statuses), set(statuses))
            after = sorted((c["call_id"], c["answered_by"], c["state"]) for c in wait_calls(rig, 1))
            assert after == before, (before, after)
            calls = rig.admin("call.list")
            media = calls[0]["media"]
            time.sleep(1.0)
            again = rig.admin("call.list")[0]["media"]
            assert again["b"]["packets"] > media["b"]["packets"] + 30, (media, again)  # ada still talks
            assert not [e for e in ada.drain() if e.get("type") in ("CALL_CLOSED", "CALL_TRANSFER")]
            opt = bob.authed("OPTIONS", f"sip:{rig.target}")
            assert opt.startswith("SIP/2.0 200") and re.search(r"(?im)^Allow:.*\bNOTIFY\b", opt), opt
            assert bob.bye(made).startswith("SIP/2.0 200")
            ada.wait_event("CALL_CLOSED")
    finally:
        storm.close()
        bob.close()
    rig.wait_idle()
