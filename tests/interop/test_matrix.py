"""The interop matrix (issue 18): each real client against hpbx, one test per client x feature.
Clients: baresip 1.0 (Debian baresip-core, ctrl_tcp), linphone-daemon 5.1 (Debian linphone-cli,
its unix socket), SIPp 3.6 (Debian sip-tester). Features: register over UDP, TCP and TLS; a call
to a baresip peer with audio checked both ways where the client can send a tone and report what
it received; hold and resume (re-INVITE sendonly/sendrecv, seen in the relay session's hold
state and media flowing again); DTMF (RFC 4733 events arriving at the peer in order); blind
transfer (the client, called by a baresip peer, REFERs it to a second baresip phone, and the
two hear each other); BLF (the client watches a user's dialog state: early, confirmed,
terminated).

A cell the client cannot do skips with "not supported by the client: ..."; the conftest writes
the table (pass / fail / not supported) to var/interop-matrix.md and prints it."""
from __future__ import annotations

import subprocess
import time

import pytest

from clients import Baresip, Linphone
from harness import HpbxServer, REPO, SippRun, have_sipp, reserved_pair, reserved_port, run_sipp, sipp_port
from callrig import SCEN, user
from pathlib import Path

HERE_SCEN = Path(__file__).resolve().parent / "scenarios"
from rtp_pcap import tone_pcap
from sipp_call import scenario
from test_default_config import wait_heard

CLIENTS = ("baresip", "linphone", "sipp")
FEATURES = ("register_udp", "register_tcp", "register_tls", "call_audio", "hold_resume", "dtmf",
            "blind_transfer", "blf", "attended_transfer", "presence", "caller_transfer",
            "attended_caller")
TONE = {"baresip": 440, "linphone": 660, "sipp": 550}
REF_TONE = 1000
DIGITS = "159"


def _num(client: str, feature: str, base: int) -> str:
    return str(base + CLIENTS.index(client) * 20 + FEATURES.index(feature))


def uname(client: str, feature: str) -> str:
    return f"{client[:3]}{FEATURES.index(feature)}"


TENANT = '[tenant]\nname = "interop"\n' + "".join(
    user(uname(c, f), _num(c, f, 2000)) + user("ref" + uname(c, f), _num(c, f, 3000))
    + user("to" + uname(c, f), _num(c, f, 4000)) for c in CLIENTS for f in FEATURES)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("interop")
    key, crt = d / "key.pem", d / "cert.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr[-300:]!r}")
    (d / "tenant.toml").write_text(TENANT)
    srv = HpbxServer(d, sip_extra={"tls_cert": str(crt), "tls_key": str(key)})
    tls_port = reserved_port()
    text = srv.config.read_text().replace(
        f'"tcp:127.0.0.1:{srv.port}"]', f'"tcp:127.0.0.1:{srv.port}", "tls:127.0.0.1:{tls_port}"]')
    text = text.replace("files = []", f'files = ["{d / "tenant.toml"}"]')
    base = 10000 + (srv.port % 90) * 100
    srv.config.write_text(text + f'\n[rtp]\nports = "{base}-{base + 99}"\naddress = "127.0.0.1"\n')
    srv.tls_port = tls_port
    with srv:
        yield srv


def admin(server, method, **params):
    from hpbx.admin.client import AdminClient
    with AdminClient(str(server.dir / "hpbx.sock"), timeout=5) as client:
        return client.call(method, params or None)


def the_call(server, timeout=5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        calls = [c for c in admin(server, "call.list") if c.get("media")]
        if calls or time.monotonic() > deadline:
            assert len(calls) == 1, calls
            return calls[0]
        time.sleep(0.1)


def wait_hold(server, hold: bool, timeout=5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        call = the_call(server)
        if call["media"]["hold"] is hold or time.monotonic() > deadline:
            assert call["media"]["hold"] is hold, call
            return call
        time.sleep(0.1)


def packets_from_caller_grow(server, wait=1.5) -> bool:
    before = the_call(server)["media"]["a"]["packets"]
    time.sleep(wait)
    return the_call(server)["media"]["a"]["packets"] > before + 20


# ---------------------------------------------------------------- the clients under test
class BaresipCase:
    def __init__(self, server, tmp, name, transport="udp"):
        port = server.tls_port if transport == "tls" else server.port
        self.server = server
        self.phone = Baresip(tmp / name, name, f"{name}-pw", f"127.0.0.1:{port}",
                             sip_port=reserved_pair(), transport=transport, tone=TONE["baresip"])
        self.phone.wait_event("REGISTER_OK", timeout=15)

    def call(self, number):
        self.phone.command("dial", f"sip:{number}@{self.server.sip_target}")
        self.phone.wait_event("CALL_ESTABLISHED")

    def received_audio(self) -> bool:
        return abs(wait_heard(self.phone, REF_TONE) - REF_TONE) <= 20

    def hold(self):
        self.phone.command("hold")

    def resume(self):
        self.phone.command("resume")

    def dtmf(self, digits):
        for d in digits:
            self.phone.command("sndcode", d)
            time.sleep(0.4)

    def answered(self):
        self.phone.wait_event("CALL_ESTABLISHED")

    def transfer(self, number):
        self.phone.command("transfer", f"sip:{number}@{self.server.sip_target}")

    def close(self):
        self.phone.close()


class LinphoneCase:
    def __init__(self, server, tmp, name, transport="udp"):
        port = server.tls_port if transport == "tls" else server.port
        self.server = server
        self.phone = Linphone(tmp / name, name, f"{name}-pw", f"127.0.0.1:{port}",
                              sip_port=reserved_port(), transport=transport, tone=TONE["linphone"])
        self.phone.wait_registered(timeout=15)
        self.id = None

    def call(self, number):
        self.id = self.phone.ok(f"call sip:{number}@{self.server.sip_target}")["Id"]
        self.phone.wait_call_state("StreamsRunning")
        self.phone.ok(f"incall-player-start {self.phone.tone_file} {self.id}")

    def received_audio(self) -> bool:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if self.phone.download_kbps() > 40:  # G.711 at 50 packets/s is 64 kbit/s of payload
                return True
            time.sleep(0.5)
        return False

    def hold(self):
        self.phone.ok(f"call-pause {self.id}")

    def resume(self):
        self.phone.ok(f"call-resume {self.id}")
        self.phone.poll(lambda a: "StreamsRunning" in a["_text"], "resumed", 10,
                        command=f"call-status {self.id}")
        self.phone.ok(f"incall-player-start {self.phone.tone_file} {self.id}")

    def dtmf(self, digits):
        for d in digits:
            self.phone.ok(f"dtmf {d}")
            time.sleep(0.4)

    def answered(self):
        self.phone.wait_call_state("StreamsRunning")
        self.id = "1"  # linphone-daemon numbers a process's calls from 1; this is its first

    def transfer(self, number):
        self.phone.ok(f"call-transfer {self.id} sip:{number}@{self.server.sip_target}")

    def close(self):
        self.phone.close()


CASES = {"baresip": BaresipCase, "linphone": LinphoneCase}


def reference_peer(server, tmp, client, feature, prefix="ref", tone=REF_TONE) -> Baresip:
    name = prefix + uname(client, feature)
    ref = Baresip(tmp / name, name, f"{name}-pw", server.sip_target, sip_port=reserved_pair(),
                  tone=tone)
    ref.wait_event("REGISTER_OK")
    return ref


def dtmf_digits(ref: Baresip, count: int, timeout=6.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = [e.get("param") for e in ref.drain() if e.get("type") == "CALL_DTMF_START"]
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


# ---------------------------------------------------------------- SIPp
def sipp_register(server, tmp, name, transport):
    if transport == "tls":
        pytest.skip("not supported by the client: Debian's SIPp is built without TLS")
    res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp, transport={"udp": "u1", "tcp": "t1"}[transport],
                   inf=[(name, f"{name}-pw", name, 60)], name=f"reg-{name}")
    assert res.returncode == 0 and res.successful == 1, res.describe()
    ok = res.received("SIP/2.0 200")[0]
    assert f"sip:{name}@127.0.0.1" in ok, ok


def sipp_call(server, tmp, client, feature, *, hold=False, digits=""):
    name = uname(client, feature)
    pcap = tone_pcap(tmp / "tone.pcap", TONE["sipp"])
    scen = scenario(tmp / "caller.xml", pcap, hold=hold, digits=digits)
    run = SippRun(scen, server.sip_target, tmp, inf=[(name,)], name="caller", timeout=30,
                  extra=["-s", _num(client, feature, 3000), "-au", name, "-ap", f"{name}-pw",
                         "-mi", "127.0.0.1", "-mp", str(sipp_port())])
    return run


# ---------------------------------------------------------------- the matrix
@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("client", CLIENTS)
def test_interop(server, tmp_path, client, feature):
    if client == "sipp" and not have_sipp():
        pytest.skip("sipp is not installed (sip-tester)")
    name = uname(client, feature)
    if feature.startswith("register_"):
        transport = feature.split("_")[1]
        if client == "sipp":
            sipp_register(server, tmp_path, name, transport)
        else:
            case = CASES[client](server, tmp_path, name, transport)
            try:
                rows = admin(server, "registration.list", user=name)
                assert [r["transport"] for r in rows] == [transport], rows
            finally:
                case.close()
        return
    if feature == "blind_transfer":
        return blind_transfer(server, tmp_path, client)
    if feature == "caller_transfer":
        return caller_transfer(server, tmp_path, client)
    if feature == "blf":
        return blf(server, tmp_path, client)
    if feature in ("attended_transfer", "attended_caller"):
        return attended_transfer(server, tmp_path, client, by_caller=feature == "attended_caller")
    if feature == "presence":
        return presence(server, tmp_path, client)
    ref = reference_peer(server, tmp_path, client, feature)
    target = _num(client, feature, 3000)
    try:
        if client == "sipp":
            run = sipp_call(server, tmp_path, client, feature, hold=feature == "hold_resume",
                            digits=DIGITS if feature == "dtmf" else "").start()
            seen_hold = []
            try:
                ref.wait_event("CALL_ESTABLISHED", timeout=10)
                if feature == "call_audio":
                    # SIPp sends a tone; what it receives it cannot report (it has no recorder)
                    assert abs(wait_heard(ref, TONE["sipp"]) - TONE["sipp"]) <= 20
                elif feature == "hold_resume":
                    deadline = time.monotonic() + 12
                    while time.monotonic() < deadline and run.proc.poll() is None:
                        calls = [c for c in admin(server, "call.list") if c.get("media")]
                        if calls and (not seen_hold or seen_hold[-1] != calls[0]["media"]["hold"]):
                            seen_hold.append(calls[0]["media"]["hold"])
                        time.sleep(0.1)
                    assert seen_hold[:3] == [False, True, False], seen_hold
                else:
                    assert dtmf_digits(ref, len(DIGITS)) == list(DIGITS)
            finally:
                res = run.wait()
            assert res.returncode == 0 and res.successful == 1, res.describe()
            return
        case = CASES[client](server, tmp_path, name)
        try:
            case.call(target)
            ref.wait_event("CALL_ESTABLISHED")
            if feature == "call_audio":
                assert abs(wait_heard(ref, TONE[client]) - TONE[client]) <= 20, ref.received_wavs()
                assert case.received_audio()
            elif feature == "hold_resume":
                wait_hold(server, False)
                case.hold()
                wait_hold(server, True)
                case.resume()
                wait_hold(server, False)
                assert packets_from_caller_grow(server)
            else:
                case.dtmf(DIGITS)
                assert dtmf_digits(ref, len(DIGITS)) == list(DIGITS)
        finally:
            case.close()
    finally:
        ref.close()


TRANSFER_TONE = 1200


def blind_transfer(server, tmp, client):
    """A baresip peer calls the client; the client transfers it (REFER) to a second baresip
    phone; peer and target hear each other."""
    feature = "blind_transfer"
    name = uname(client, feature)
    ref = reference_peer(server, tmp, client, feature)
    to = reference_peer(server, tmp, client, feature, prefix="to", tone=TRANSFER_TONE)
    try:
        if client == "sipp":
            scen = HERE_SCEN / "uas_refer.xml"
            port = sipp_port()
            res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp, local_port=port,
                           inf=[(name, f"{name}-pw", name, 300)], name=f"reg-{name}")
            assert res.successful == 1, res.describe()
            run = SippRun(scen, server.sip_target, tmp, local_port=port, name="transferor", timeout=30,
                          extra=["-key", "refer_to", _num(client, feature, 4000),
                                 "-mi", "127.0.0.1", "-mp", str(sipp_port())]).start()
            from harness import wait_bound
            assert wait_bound(port)
            ref.command("dial", f"sip:{_num(client, feature, 2000)}@{server.sip_target}")
            to.wait_event("CALL_ESTABLISHED", timeout=15)
            res = run.wait()
            assert res.returncode == 0 and res.successful == 1, res.describe()
        else:
            case = CASES[client](server, tmp, name)
            try:
                ref.command("dial", f"sip:{_num(client, feature, 2000)}@{server.sip_target}")
                ref.wait_event("CALL_ESTABLISHED")
                case.answered()
                case.transfer(_num(client, feature, 4000))
                to.wait_event("CALL_ESTABLISHED", timeout=15)
            finally:
                case.close()
        assert abs(wait_heard(ref, TRANSFER_TONE) - TRANSFER_TONE) <= 20, ref.received_wavs()
        assert abs(wait_heard(to, REF_TONE) - REF_TONE) <= 20, to.received_wavs()
        ref.command("hangup")
    finally:
        ref.close()
        to.close()


def caller_transfer(server, tmp, client):
    """The client calls a baresip peer and transfers it blind (REFER from the caller side) to
    a second baresip phone: the peer stays, the target takes the client's place, and the two
    hear each other; the client gets hpbx's BYE (SIPp also checks the NOTIFYs)."""
    feature = "caller_transfer"
    name = uname(client, feature)
    ref = reference_peer(server, tmp, client, feature)
    to = reference_peer(server, tmp, client, feature, prefix="to", tone=TRANSFER_TONE)
    try:
        if client == "sipp":
            pcap = tone_pcap(tmp / "tone.pcap", TONE["sipp"])
            scen = scenario(tmp / "caller.xml", pcap, refer_to=_num(client, feature, 4000))
            run = SippRun(scen, server.sip_target, tmp, inf=[(name,)], name="caller", timeout=30,
                          extra=["-s", _num(client, feature, 3000), "-au", name, "-ap", f"{name}-pw",
                                 "-mi", "127.0.0.1", "-mp", str(sipp_port())]).start()
            try:
                ref.wait_event("CALL_ESTABLISHED", timeout=10)
                to.wait_event("CALL_ESTABLISHED", timeout=15)
            finally:
                res = run.wait()
            assert res.returncode == 0 and res.successful == 1, res.describe()
        else:
            case = CASES[client](server, tmp, name)
            try:
                case.call(_num(client, feature, 3000))
                ref.wait_event("CALL_ESTABLISHED")
                case.transfer(_num(client, feature, 4000))
                to.wait_event("CALL_ESTABLISHED", timeout=15)
            finally:
                case.close()
        calls = admin(server, "call.list")
        assert len(calls) == 1 and calls[0]["answered_by"] == "ref" + name, calls
        assert calls[0]["targets_tried"][-1] == "caller:user:to" + name, calls
        assert abs(wait_heard(ref, TRANSFER_TONE) - TRANSFER_TONE) <= 20, ref.received_wavs()
        assert abs(wait_heard(to, REF_TONE) - REF_TONE) <= 20, to.received_wavs()
        ref.command("hangup")
        to.wait_event("CALL_CLOSED")
    finally:
        ref.close()
        to.close()


def attended_transfer(server, tmp, client, by_caller=False):
    """A baresip peer calls the client (``by_caller``: the client calls it); the client puts it
    on hold, calls a second baresip phone, and transfers the first call onto the second (REFER
    with Replaces, RFC 5589): peer and target hear each other, the client's two calls end, one
    call remains, and the CDRs link the calls. With ``by_caller`` the client called both far
    parties: the target takes the client's caller seat of the first call."""
    if client == "baresip":
        pytest.skip("not supported by the client: baresip 1.0.0 has no attended transfer "
                    "(atransferstart/Replaces first appear in v2.0.0)")
    if client == "sipp":
        if by_caller:
            pytest.skip("not written for SIPp: one scenario cannot place two calls "
                        "(tests/interop/test_attended.py covers it with a raw SIP device)")
        return sipp_attended(server, tmp)
    feature = "attended_caller" if by_caller else "attended_transfer"
    name = uname(client, feature)
    ref = reference_peer(server, tmp, client, feature)
    to = reference_peer(server, tmp, client, feature, prefix="to", tone=TRANSFER_TONE)
    case = CASES[client](server, tmp, name)
    try:
        if by_caller:
            case.call(_num(client, feature, 3000))
            ref.wait_event("CALL_ESTABLISHED")
        else:
            ref.command("dial", f"sip:{_num(client, feature, 2000)}@{server.sip_target}")
            ref.wait_event("CALL_ESTABLISHED")
            case.answered()
        first = case.id
        second = case.phone.ok(f"call sip:{_num(client, feature, 4000)}@{server.sip_target}")["Id"]
        to.wait_event("CALL_ESTABLISHED", timeout=15)
        case.phone.poll(lambda a: "StreamsRunning" in a["_text"], "second call running", 10,
                        command=f"call-status {second}")
        case.phone.ok(f"call-transfer {first} {second}")
        deadline = time.monotonic() + 10
        # kept: the call whose far party is its caller (the peer's); by_caller: the REFER's call
        # (the first, answered by the peer), the target in the client's caller seat
        stays = "ref" + name if by_caller else "to" + name
        while time.monotonic() < deadline:
            calls = admin(server, "call.list")
            if len(calls) == 1 and calls[0]["answered_by"] == stays:
                break
            time.sleep(0.2)
        assert len(calls) == 1 and calls[0]["answered_by"] == stays, calls
        if by_caller:
            assert calls[0]["targets_tried"][-1] == "caller:user:to" + name, calls
        assert abs(wait_heard(to, REF_TONE) - REF_TONE) <= 20, to.received_wavs()
        # the other way: the target's RTP reaches the kept call's relay port (baresip 1.0, once
        # put on hold by the far end, stops decoding for good, even after a plain resume, so
        # the transferee's recording cannot show it; README "Transfers")
        kept = calls[0]["call_id"]
        target_leg = "a" if by_caller else "b"  # the relay leg facing the target
        before = calls[0]["media"][target_leg]["packets"]
        time.sleep(1.0)
        now = [c for c in admin(server, "call.list") if c["call_id"] == kept][0]["media"]
        other_leg = "b" if by_caller else "a"
        assert now[target_leg]["packets"] > before + 30 and now[other_leg]["packets"] > 30, now
        assert not now["hold"], now
        ref.command("hangup")
        to.wait_event("CALL_CLOSED")
    finally:
        case.close()
        ref.close()
        to.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cdrs = {c["call_id"]: c for c in admin(server, "cdr.list", limit=20)}
        if kept in cdrs and cdrs[kept].get("linked_call"):
            break
        time.sleep(0.2)
    host = cdrs[kept]
    assert host["answered_by"] == stays and host["linked_call"], host
    other = cdrs[host["linked_call"]]
    assert other["linked_call"] == kept and other["end_reason"].startswith("attended transfer"), other


def sipp_attended(server, tmp):
    """SIPp takes two calls, from a baresip peer and then from a second baresip phone, and
    REFERs in the second with Replaces naming the first (its Call-ID and tags kept in SIPp
    global variables); it checks 202, NOTIFY sipfrag 100 and 200, and BYE on both dialogs.
    Both callers: the second call is kept and the peer moves into it; peer and second phone
    hear each other."""
    from harness import wait_bound
    client, feature = "sipp", "attended_transfer"
    name = uname(client, feature)
    ref = reference_peer(server, tmp, client, feature)
    to = reference_peer(server, tmp, client, feature, prefix="to", tone=TRANSFER_TONE)
    try:
        port = sipp_port()
        res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp, local_port=port,
                       inf=[(name, f"{name}-pw", name, 300)], name=f"reg-{name}")
        assert res.successful == 1, res.describe()
        run = SippRun(HERE_SCEN / "uas_attended.xml", server.sip_target, tmp, local_port=port,
                      calls=2, name="transferor", timeout=30,
                      extra=["-key", "refer_to", _num(client, feature, 3000),
                             "-mi", "127.0.0.1", "-mp", str(sipp_port())]).start()
        assert wait_bound(port)
        ref.command("dial", f"sip:{_num(client, feature, 2000)}@{server.sip_target}")
        ref.wait_event("CALL_ESTABLISHED")
        time.sleep(0.5)
        to.command("dial", f"sip:{_num(client, feature, 2000)}@{server.sip_target}")
        to.wait_event("CALL_ESTABLISHED")
        res = run.wait()
        assert res.returncode == 0 and res.successful == 2, res.describe()
        calls = admin(server, "call.list")
        assert len(calls) == 1 and calls[0]["answered_by"] == "ref" + name, calls
        assert calls[0]["caller"] == _num(client, feature, 4000), calls
        assert abs(wait_heard(ref, TRANSFER_TONE) - TRANSFER_TONE) <= 20, ref.received_wavs()
        assert abs(wait_heard(to, REF_TONE) - REF_TONE) <= 20, to.received_wavs()
        to.command("hangup")
        ref.wait_event("CALL_CLOSED")
    finally:
        ref.close()
        to.close()


def presence(server, tmp, client):
    """The client watches a registered baresip user's presence (RFC 3856) while a second
    baresip phone calls it: Available, Ringing (SIPp), On the phone / Busy, Available."""
    if client == "linphone":
        pytest.skip("not supported by the client: linphone-daemon 5.1 has no friend or presence "
                    "command (--dump-commands-help)")
    feature = "presence"
    name = uname(client, feature)
    watched_uri = f"sip:{_num(client, feature, 4000)}@{server.sip_target}"
    watched = Baresip(tmp / "watched", "to" + name, f"to{name}-pw", server.sip_target,
                      sip_port=reserved_pair(), answermode="manual")
    ref = reference_peer(server, tmp, client, feature)
    run = watcher = None
    try:
        watched.wait_event("REGISTER_OK")
        if client == "sipp":
            inf = tmp / "watcher.csv"
            inf.write_text(f"SEQUENTIAL\n{name};\n")
            run = SippRun(HERE_SCEN / "presence_watch.xml", server.sip_target, tmp, name="watcher",
                          timeout=30, extra=["-s", _num(client, feature, 4000), "-au", name,
                                             "-ap", f"{name}-pw", "-inf", str(inf)]).start()
            shows = None
        else:
            watcher = Baresip(tmp / name, name, f"{name}-pw", server.sip_target,
                              sip_port=reserved_pair(), presence_of=(watched_uri,))
            watcher.wait_event("REGISTER_OK")

            def shows(word, timeout=8.0):
                import re
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    data = re.sub(r"\x1b\[[0-9;]*m", "", watcher.command("contacts").get("data", ""))
                    line = [ln for ln in data.splitlines() if _num(client, feature, 4000) in ln]
                    if line and word in line[0]:
                        return
                    time.sleep(0.3)
                raise AssertionError(f"baresip never showed {word}: {data!r}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            stats = admin(server, "stats.get", layer="calls")
            if stats.get("calls", stats).get("presence_subscriptions", 0) >= 1:
                break
            time.sleep(0.1)
        if shows:
            shows("Online")
        time.sleep(1.0)
        ref.command("dial", watched_uri)
        watched.wait_event("CALL_INCOMING")
        time.sleep(1.0)
        watched.command("accept")
        watched.wait_event("CALL_ESTABLISHED")
        if shows:
            shows("Busy")
        time.sleep(1.0)
        ref.command("hangup")
        watched.wait_event("CALL_CLOSED")
        if shows:
            shows("Online")
        else:
            res = run.wait()
            assert res.returncode == 0 and res.successful == 1, res.describe()
    finally:
        if watcher is not None:
            watcher.close()
        watched.close()
        ref.close()


def blf(server, tmp, client):
    if client in ("baresip", "linphone"):
        pytest.skip(f"not supported by the client: {client} has no dialog event package (RFC 4235)")
    feature = "blf"
    name = uname(client, feature)
    admin(server, "user.update", username=name, supervise=["to" + name])
    inf = tmp / "watcher.csv"
    inf.write_text(f"SEQUENTIAL\n{name};\n")
    run = SippRun(HERE_SCEN / "blf_watch.xml", server.sip_target, tmp, name="watcher", timeout=30,
                  extra=["-s", _num(client, feature, 4000), "-au", name, "-ap", f"{name}-pw",
                         "-inf", str(inf)]).start()
    ref = reference_peer(server, tmp, client, feature)
    watched = Baresip(tmp / "watched", "to" + name, f"to{name}-pw", server.sip_target,
                      sip_port=reserved_pair(), answermode="manual")
    try:
        watched.wait_event("REGISTER_OK")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            stats = admin(server, "stats.get", layer="calls")
            if stats.get("calls", stats).get("blf_subscriptions", 0) >= 1:
                break
            time.sleep(0.1)
        ref.command("dial", f"sip:{_num(client, feature, 4000)}@{server.sip_target}")
        watched.wait_event("CALL_INCOMING")
        time.sleep(0.3)
        watched.command("accept")
        watched.wait_event("CALL_ESTABLISHED")
        time.sleep(0.3)
        ref.command("hangup")
        watched.wait_event("CALL_CLOSED")
        res = run.wait()
        assert res.returncode == 0 and res.successful == 1, res.describe()
    finally:
        watched.close()
        ref.close()
