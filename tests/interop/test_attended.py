"""Attended transfer (REFER with Replaces, RFC 5589 §7 / RFC 3891) with exact messages: the
transferor is a plain UDP SIP device in the test (baresip 1.0 cannot send Replaces, and
linphone's REFER cannot be aimed at a bad dialog); the two far parties are baresip phones whose
audio is checked both ways. Also the bad REFERs of issue 18: a foreign domain, a Replaces naming
no dialog, another user's dialog, or another tenant's dialog; nothing changes for any of them."""
from __future__ import annotations

import re
import threading
import time
import uuid
from urllib.parse import quote

import pytest

from clients import Baresip
from harness import header, reserved_pair
from callrig import CallRig, user
from sipdevice import Device
from test_default_config import wait_heard

NAMES = {"ada": "531", "bob": "532", "cal": "533", "dot": "534", "eli": "535"}
TENANT = '[tenant]\nname = "att"\n' + "".join(user(n, i) for n, i in NAMES.items())


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("att"), TENANT)
    r.start()
    yield r
    r.stop()


def phone(rig, tmp_path, name, tone):
    p = Baresip(tmp_path / name, name, f"{name}-pw", rig.target, sip_port=reserved_pair(), tone=tone)
    p.wait_event("REGISTER_OK")
    return p


SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


class Transferor(Device):
    """Holds two calls (one taken, one made) and REFERs inside either of them."""

    def register(self):
        from harness import digest_authorization
        uri = f"sip:{self.rig.target}"
        self._register_with(uri, "")
        resp = self.recv(want=lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12])
        if resp and resp.startswith("SIP/2.0 401"):
            auth = digest_authorization(header(resp, "WWW-Authenticate")[0], self.user, self.pw,
                                        "REGISTER", uri)
            self._register_with(uri, f"Authorization: {auth}")
            resp = self.recv(want=lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12])
        assert resp and resp.startswith("SIP/2.0 200"), resp

    def _register_with(self, uri, auth):
        self.cseq += 1
        branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        self._send("\r\n".join([
            f"REGISTER {uri} SIP/2.0", f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
            "Max-Forwards: 70", f"From: <sip:{self.user}@127.0.0.1>;tag={self.tag}",
            f"To: <sip:{self.user}@127.0.0.1>", f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>", *([auth] if auth else []), "Expires: 300",
            "Content-Length: 0", "", ""]))

    def take_call(self, timeout=10.0) -> dict:
        """Answer the next INVITE with 200 + SDP; the dialog (we are its UAS)."""
        inv = self.recv(timeout, want=lambda m: m.startswith("INVITE "))
        assert inv is not None, "no INVITE reached the transferor"
        tag = uuid.uuid4().hex[:8]
        keep = [h for h in inv.split("\r\n\r\n")[0].split("\r\n")[1:]
                if re.match(r"(?i)(via|from|call-id|cseq):", h)]
        to = header(inv, "To")[0] + f";tag={tag}"
        body = SDP.format(port=self.rtp.getsockname()[1])
        self._send("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + f"\r\nTo: {to}\r\n"
                   f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>\r\nContent-Type: application/sdp\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}")
        self.recv(5, want=lambda m: m.startswith("ACK "))
        return {"call_id": header(inv, "Call-ID")[0], "local_tag": tag,
                "remote_tag": re.search(r";tag=([^;\s>]+)", header(inv, "From")[0]).group(1),
                "local": header(inv, "To")[0], "remote": header(inv, "From")[0],
                "target": header(inv, "Contact")[0].strip("<>"), "cseq": 100}

    def make_call(self, number) -> dict:
        uri = f"sip:{number}@{self.rig.target}"
        call_id = uuid.uuid4().hex
        resp = self.authed("INVITE", uri, [], SDP.format(port=self.rtp.getsockname()[1]), call_id)
        assert resp.startswith("SIP/2.0 200"), resp
        to = header(resp, "To")[0]
        target = header(resp, "Contact")[0].strip("<>")
        self._send(f"ACK {target} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@127.0.0.1>;tag={self.tag}\r\nTo: {to}\r\n"
                   f"Call-ID: {call_id}\r\nCSeq: {self.cseq} ACK\r\nContent-Length: 0\r\n\r\n")
        return {"call_id": call_id, "local_tag": self.tag,
                "remote_tag": re.search(r";tag=([^;\s>]+)", to).group(1),
                "local": f"<sip:{self.user}@127.0.0.1>", "remote": re.sub(r";tag=.*$", "", to),
                "target": target, "cseq": self.cseq + 100}

    def bye(self, dialog: dict) -> str:
        return self.in_dialog(dialog, "BYE", [])

    def refer(self, dialog: dict, refer_to: str) -> str:
        """REFER inside ``dialog``; the final response."""
        return self.in_dialog(dialog, "REFER", self._refer_headers(refer_to))

    def _refer_headers(self, refer_to: str) -> list:
        return [f"Refer-To: {refer_to}", f"Referred-By: <sip:{self.user}@127.0.0.1>"]

    def refer_and_bye(self, dialog: dict, refer_to: str, timeout: float = 5.0) -> tuple:
        """REFER, and BYE right behind it (a phone that hangs up the moment it has transferred,
        without waiting for the 202): both final responses, (REFER's, BYE's), matched by CSeq."""
        got = {self._send_in_dialog(dialog, "REFER", self._refer_headers(refer_to)): None,
               self._send_in_dialog(dialog, "BYE", []): None}
        deadline = time.monotonic() + timeout
        while None in got.values() and time.monotonic() < deadline:
            m = self.recv(timeout=deadline - time.monotonic(),
                          want=lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12]
                          and (header(m, "CSeq") or [""])[0] in got)
            if m is None:
                break
            got[header(m, "CSeq")[0]] = m
        return tuple(got.values())

    def in_dialog(self, dialog: dict, method: str, extra: list) -> str:
        cseq = self._send_in_dialog(dialog, method, extra)
        # this request's own final response: a re-sent answer of an earlier transaction (the 407
        # to our first INVITE, arriving late) must not pass for it
        return self.recv(want=lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12]
                         and header(m, "CSeq") == [cseq])

    def _send_in_dialog(self, dialog: dict, method: str, extra: list) -> str:
        """Send ``method`` inside ``dialog``; its CSeq header value."""
        dialog["cseq"] += 1
        branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        local = re.sub(r";tag=.*$", "", dialog["local"])
        remote = re.sub(r";tag=.*$", "", dialog["remote"])
        self._send("\r\n".join([
            f"{method} {dialog['target']} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport", "Max-Forwards: 70",
            f"From: {local};tag={dialog['local_tag']}", f"To: {remote};tag={dialog['remote_tag']}",
            f"Call-ID: {dialog['call_id']}", f"CSeq: {dialog['cseq']} {method}",
            f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>", *extra, "Content-Length: 0", "", ""]))
        return f"{dialog['cseq']} {method}"

    def sipfrags(self, call_id: str, want_final=True, timeout=10.0) -> list[str]:
        """The sipfrag bodies of the refer NOTIFYs in ``call_id``, until a terminated one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [n for n in self.notifies if header(n, "Call-ID") == [call_id]
                    and header(n, "Event") == ["refer"]]
            if mine and (not want_final or "terminated" in header(mine[-1], "Subscription-State")[0]):
                return [n.split("\r\n\r\n", 1)[1].strip() for n in mine]
            self.recv(0.2)
        raise AssertionError(f"no final refer NOTIFY in {call_id}: {self.notifies}")


def replaces_uri(number, rig, dialog: dict, *, swap=False) -> str:
    to_tag, from_tag = dialog["remote_tag"], dialog["local_tag"]
    if swap:
        to_tag, from_tag = from_tag, to_tag
    rep = quote(f"{dialog['call_id']};to-tag={to_tag};from-tag={from_tag}", safe="")
    return f"<sip:{number}@{rig.target}?Replaces={rep}>"


def wait_calls(rig, n, timeout=8.0):
    deadline = time.monotonic() + timeout
    while True:
        calls = rig.admin("call.list")
        if len(calls) == n or time.monotonic() > deadline:
            return calls
        time.sleep(0.1)


def users_in_calls(rig, want, timeout=5.0) -> int:
    """stats calls.users_in_calls (the answered-call counts of busy handling and presence)
    once it is ``want`` (or the last value seen)."""
    deadline = time.monotonic() + timeout
    while True:
        s = rig.call_stats()
        got = s.get("calls", s)["users_in_calls"]
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def cdr_of(rig, call_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in rig.admin("cdr.list", limit=50) if c["call_id"] == call_id]
        if found or time.monotonic() > deadline:
            assert found, call_id
            return found[0]
        time.sleep(0.1)


@pytest.mark.parametrize("refer_in", ["taken", "made"])
def test_attended_transfer_joins_the_far_parties(rig, tmp_path, refer_in):
    """ada calls bob; bob calls cal; bob REFERs (in the call he took, or in the one he made:
    then he is its caller) with Replaces naming the other call: ada and cal hear each other,
    bob gets NOTIFY sipfrag 100 then 200 and BYE on both dialogs, the kept call is answered
    by cal, and the two CDRs name each other."""
    bob = Transferor(rig, "bob")
    try:
        bob.register()
        with phone(rig, tmp_path, "ada", 660) as ada, phone(rig, tmp_path, "cal", 1000) as cal:
            ada.command("dial", f"sip:{NAMES['bob']}@{rig.target}")
            taken = bob.take_call()
            ada.wait_event("CALL_ESTABLISHED")
            made = bob.make_call(NAMES["cal"])
            cal.wait_event("CALL_ESTABLISHED")
            assert len(wait_calls(rig, 2)) == 2
            if refer_in == "taken":
                resp = bob.refer(taken, replaces_uri(NAMES["cal"], rig, made))
                refer_dialog = taken
            else:
                resp = bob.refer(made, replaces_uri(NAMES["ada"], rig, taken))
                refer_dialog = made
            assert resp.startswith("SIP/2.0 202"), resp
            frags = bob.sipfrags(refer_dialog["call_id"])
            assert frags[0] == "SIP/2.0 100 Trying" and frags[-1] == "SIP/2.0 200 OK", frags
            deadline = time.monotonic() + 5
            while len(bob.byes) < 2 and time.monotonic() < deadline:
                bob.recv(0.2)
            assert sorted(header(b, "Call-ID")[0] for b in bob.byes) == sorted(
                [taken["call_id"], made["call_id"]]), bob.byes
            calls = wait_calls(rig, 1)
            assert len(calls) == 1 and calls[0]["answered_by"] == "cal", calls
            assert calls[0]["caller"] == NAMES["ada"], calls
            assert abs(wait_heard(ada, 1000) - 1000) <= 20, ada.received_wavs()
            assert abs(wait_heard(cal, 660) - 660) <= 20, cal.received_wavs()
            kept = calls[0]["call_id"]
            ada.command("hangup")
            cal.wait_event("CALL_CLOSED")
    finally:
        bob.close()
    rig.wait_idle()
    host = cdr_of(rig, kept)
    other = cdr_of(rig, made["call_id"])
    assert host["answered_by"] == "cal" and host["linked_call"] == made["call_id"], host
    assert other["linked_call"] == kept and other["end_reason"] == "attended transfer by bob", other


def test_attended_transfer_of_two_callers(rig, tmp_path):
    """ada and cal both call bob; bob REFERs in ada's call naming cal's: cal's caller leg
    becomes the answered party of ada's call (re-INVITEd on its own dialog), the two hear each
    other, bob is released from both, cal's call ends linked to ada's, and a BYE from cal
    (now in ada's call) ends it for ada."""
    bob = Transferor(rig, "bob")
    try:
        bob.register()
        with phone(rig, tmp_path, "ada", 660) as ada, phone(rig, tmp_path, "cal", 1000) as cal:
            ada.command("dial", f"sip:{NAMES['bob']}@{rig.target}")
            first = bob.take_call()
            ada.wait_event("CALL_ESTABLISHED")
            cal.command("dial", f"sip:{NAMES['bob']}@{rig.target}")
            second = bob.take_call()
            cal.wait_event("CALL_ESTABLISHED")
            assert len(wait_calls(rig, 2)) == 2
            assert bob.refer(first, replaces_uri(NAMES["cal"], rig, second)).startswith("SIP/2.0 202")
            frags = bob.sipfrags(first["call_id"])
            assert frags[-1] == "SIP/2.0 200 OK", frags
            calls = wait_calls(rig, 1)
            assert len(calls) == 1 and calls[0]["caller"] == NAMES["ada"] and calls[0]["answered_by"] == "cal"
            assert abs(wait_heard(ada, 1000) - 1000) <= 20, ada.received_wavs()
            assert abs(wait_heard(cal, 660) - 660) <= 20, cal.received_wavs()
            kept = calls[0]["call_id"]
            cal.command("hangup")
            ada.wait_event("CALL_CLOSED")
    finally:
        bob.close()
    rig.wait_idle()
    host = cdr_of(rig, kept)
    other = cdr_of(rig, host["linked_call"])
    assert other["caller"] == NAMES["cal"] and other["linked_call"] == kept, other
    assert host["end_reason"] == "callee hung up", host


def test_bad_attended_refers_change_nothing(rig, tmp_path):
    """With bob in two calls: a REFER to a foreign domain is 403; a Replaces naming no dialog,
    a dialog of another user (dot's call with eli) or of another tenant gets 202 and a final
    NOTIFY "481"; the unparseable Replaces too. Both of bob's calls stay up and unchanged."""
    rig.admin("tenant.create", name="att2")
    rig.admin("user.create", tenant="att2", username="zed", sip_password="zed-pw", internal_number="531")
    rig.admin("user.create", tenant="att2", username="zoe", sip_password="zoe-pw", internal_number="532")
    bob, zed, zoe, dot = Transferor(rig, "bob"), Transferor(rig, "zed"), Transferor(rig, "zoe"), \
        Transferor(rig, "dot")
    try:
        for d in (bob, zed, zoe, dot):
            d.register()
        with phone(rig, tmp_path, "ada", 660) as ada, phone(rig, tmp_path, "cal", 1000) as cal, \
                phone(rig, tmp_path, "eli", 440) as eli:
            ada.command("dial", f"sip:{NAMES['bob']}@{rig.target}")
            taken = bob.take_call()
            ada.wait_event("CALL_ESTABLISHED")
            made = bob.make_call(NAMES["cal"])
            cal.wait_event("CALL_ESTABLISHED")
            answering = threading.Thread(target=zoe.take_call)  # zoe answers while zed calls her
            answering.start()
            foreign = zed.make_call("532")  # in tenant att2
            answering.join(10)
            dots = dot.make_call(NAMES["eli"])
            eli.wait_event("CALL_ESTABLISHED")
            before = sorted((c["call_id"], c["answered_by"]) for c in wait_calls(rig, 4))
            assert len(before) == 4, before

            resp = bob.refer(taken, f"<sip:{NAMES['cal']}@example.net?Replaces="
                                    + quote(f"{made['call_id']};to-tag={made['remote_tag']};"
                                            f"from-tag={made['local_tag']}", safe="") + ">")
            assert resp.startswith("SIP/2.0 403 Refer-To names a foreign domain example.net"), resp
            cases = {
                "no dialog": replaces_uri(NAMES["cal"], rig, dict(made, call_id="no-such-call")),
                "wrong tags": replaces_uri(NAMES["cal"], rig, dict(made, remote_tag="bogus")),
                "another user's": replaces_uri(NAMES["eli"], rig, dots),
                "another tenant's": replaces_uri(NAMES["cal"], rig, foreign),
                "unparseable": f"<sip:{NAMES['cal']}@{rig.target}?Replaces=just-a-call-id>",
            }
            for why, refer_to in cases.items():
                bob.notifies.clear()
                resp = bob.refer(taken, refer_to)
                assert resp.startswith("SIP/2.0 202"), (why, resp)
                assert bob.sipfrags(taken["call_id"]) == ["SIP/2.0 481 Call/Transaction Does Not Exist"], why
            assert sorted((c["call_id"], c["answered_by"]) for c in wait_calls(rig, 4)) == before
            assert not bob.byes and not zed.byes and not zoe.byes and not dot.byes
            assert zed.bye(foreign).startswith("SIP/2.0 200")
            ada.command("hangup")
            cal.command("hangup")
            eli.command("hangup")
            ada.wait_event("CALL_CLOSED")
            cal.wait_event("CALL_CLOSED")
            eli.wait_event("CALL_CLOSED")
    finally:
        for d in (bob, zed, zoe, dot):
            d.close()
    rig.wait_idle()


@pytest.mark.parametrize("refer_in", ["first", "second"])
def test_attended_transfer_of_two_called_parties(rig, tmp_path, refer_in):
    """bob calls ada, then cal, and REFERs (in either call) with Replaces naming the other:
    neither far party is a caller, so the far party of the other call takes bob's caller seat
    of the REFER's call. ada and cal hear each other, bob gets NOTIFY 100 then 200 and BYE on
    both dialogs, one call remains (the REFER's, still answered by its callee), a BYE from the
    party in bob's old seat ends it for the other, and the CDRs link the two calls."""
    bob = Transferor(rig, "bob")
    try:
        bob.register()
        with phone(rig, tmp_path, "ada", 660) as ada, phone(rig, tmp_path, "cal", 1000) as cal:
            first = bob.make_call(NAMES["ada"])
            ada.wait_event("CALL_ESTABLISHED")
            second = bob.make_call(NAMES["cal"])
            cal.wait_event("CALL_ESTABLISHED")
            assert len(wait_calls(rig, 2)) == 2
            if refer_in == "first":
                kept_dialog, other_dialog, stays, seated = first, second, "ada", cal
                resp = bob.refer(first, replaces_uri(NAMES["cal"], rig, second))
            else:
                kept_dialog, other_dialog, stays, seated = second, first, "cal", ada
                resp = bob.refer(second, replaces_uri(NAMES["ada"], rig, first))
            assert resp.startswith("SIP/2.0 202"), resp
            frags = bob.sipfrags(kept_dialog["call_id"])
            assert frags[0] == "SIP/2.0 100 Trying" and frags[-1] == "SIP/2.0 200 OK", frags
            deadline = time.monotonic() + 5
            while len(bob.byes) < 2 and time.monotonic() < deadline:
                bob.recv(0.2)
            assert sorted(header(b, "Call-ID")[0] for b in bob.byes) == sorted(
                [first["call_id"], second["call_id"]]), bob.byes
            calls = wait_calls(rig, 1)
            assert len(calls) == 1 and calls[0]["call_id"] == kept_dialog["call_id"], calls
            assert calls[0]["answered_by"] == stays, calls
            assert calls[0]["targets_tried"][-1] == f"caller:user:{'cal' if stays == 'ada' else 'ada'}", calls
            assert abs(wait_heard(ada, 1000) - 1000) <= 20, ada.received_wavs()
            assert abs(wait_heard(cal, 660) - 660) <= 20, cal.received_wavs()
            assert not calls[0]["media"]["hold"], calls
            assert users_in_calls(rig, 2) == 2  # ada and cal; bob counted off from both calls
            seated.command("hangup")  # the party in bob's old seat hangs up: the call ends
            (ada if seated is cal else cal).wait_event("CALL_CLOSED")
    finally:
        bob.close()
    rig.wait_idle()
    assert users_in_calls(rig, 0) == 0
    host = cdr_of(rig, kept_dialog["call_id"])
    other = cdr_of(rig, other_dialog["call_id"])
    assert host["linked_call"] == other_dialog["call_id"] and host["end_reason"] == "caller hung up", host
    assert other["linked_call"] == kept_dialog["call_id"], other
    assert other["end_reason"] == "attended transfer by bob", other


def test_blind_transfer_by_the_caller(rig, tmp_path):
    """bob calls ada and REFERs her (from the caller side) to cal: 202, NOTIFY 100 then 200,
    BYE to bob; cal is called on ada's behalf (From names ada) and takes bob's seat; ada and
    cal hear each other; ada's hang-up ends it for cal."""
    bob = Transferor(rig, "bob")
    try:
        bob.register()
        with phone(rig, tmp_path, "ada", 660) as ada, phone(rig, tmp_path, "cal", 1000) as cal:
            made = bob.make_call(NAMES["ada"])
            ada.wait_event("CALL_ESTABLISHED")
            resp = bob.refer(made, f"<sip:{NAMES['cal']}@{rig.target}>")
            assert resp.startswith("SIP/2.0 202"), resp
            frags = bob.sipfrags(made["call_id"])
            assert frags == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"], frags
            deadline = time.monotonic() + 5
            while not bob.byes and time.monotonic() < deadline:
                bob.recv(0.2)
            assert [header(b, "Call-ID")[0] for b in bob.byes] == [made["call_id"]], bob.byes
            est = cal.wait_event("CALL_ESTABLISHED")
            assert f"sip:{NAMES['ada']}@" in est.get("peeruri", ""), est  # called on ada's behalf
            calls = wait_calls(rig, 1)
            assert calls[0]["answered_by"] == "ada" and calls[0]["targets_tried"][-1] == "caller:user:cal", calls
            assert users_in_calls(rig, 2) == 2  # ada and cal; bob counted off
            assert abs(wait_heard(ada, 1000) - 1000) <= 20, ada.received_wavs()
            assert abs(wait_heard(cal, 660) - 660) <= 20, cal.received_wavs()
            ada.command("hangup")
            cal.wait_event("CALL_CLOSED")
    finally:
        bob.close()
    rig.wait_idle()
    assert users_in_calls(rig, 0) == 0
    cdr = cdr_of(rig, made["call_id"])
    assert cdr["caller"] == NAMES["bob"] and cdr["answered_by"] == "ada", cdr
    assert cdr["end_reason"] == "callee hung up", cdr


@pytest.mark.parametrize("bob_is", ["callee", "caller"])
def test_a_blind_transferor_may_leave_right_after_the_202(rig, tmp_path, bob_is):
    """bob REFERs ada to cal and sends BYE at once, before cal answers (RFC 5589 §6.1; many
    phones do): the BYE gets 200, the call waits for cal instead of ending, ada and cal hear
    each other, and hpbx sends bob nothing more (no final NOTIFY, no BYE)."""
    bob = Transferor(rig, "bob")
    try:
        bob.register()
        with phone(rig, tmp_path, "ada", 660) as ada, phone(rig, tmp_path, "cal", 1000) as cal:
            if bob_is == "callee":
                ada.command("dial", f"sip:{NAMES['bob']}@{rig.target}")
                dialog = bob.take_call()
            else:
                dialog = bob.make_call(NAMES["ada"])
            ada.wait_event("CALL_ESTABLISHED")
            # the BYE right behind the REFER: it reaches hpbx before cal can have answered (a
            # BYE sent after reading the 202 lost that race under load: cal answered first,
            # hpbx ended bob's dialog itself and the BYE got 481)
            refer, bye = bob.refer_and_bye(dialog, f"<sip:{NAMES['cal']}@{rig.target}>")
            assert refer is not None and refer.startswith("SIP/2.0 202"), refer
            assert bye is not None and bye.startswith("SIP/2.0 200"), bye
            cal.wait_event("CALL_ESTABLISHED", timeout=10)
            assert abs(wait_heard(ada, 1000) - 1000) <= 20, ada.received_wavs()
            assert abs(wait_heard(cal, 660) - 660) <= 20, cal.received_wavs()
            calls = wait_calls(rig, 1)
            assert len(calls) == 1 and calls[0]["state"] == "answered", calls
            bob.recv(1.0)
            assert not bob.byes, bob.byes
            assert not [n for n in bob.notifies if "SIP/2.0 200 OK" in n.split("\r\n\r\n", 1)[1]]
            assert not [e for e in ada.drain() if e.get("type") == "CALL_CLOSED"]
            ada.command("hangup")
            cal.wait_event("CALL_CLOSED")
    finally:
        bob.close()
    rig.wait_idle()
