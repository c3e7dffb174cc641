"""The interop matrix (issue 18): each real client against hpbx, one test per client x feature.
Clients: baresip 1.0 (Debian baresip-core, ctrl_tcp), linphone-daemon 5.1 (Debian linphone-cli,
its unix socket), SIPp 3.6 (Debian sip-tester). Features: register over UDP, TCP and TLS; a call
to a baresip peer with audio checked both ways where the client can send a tone and report what
it received; hold and resume (re-INVITE sendonly/sendrecv, seen in the relay session's hold
state and media flowing again); DTMF (RFC 4733 events arriving at the peer in order).

A cell the client cannot do skips with "not supported by the client: ..."; the conftest writes
the table (pass / fail / not supported) to var/interop-matrix.md and prints it."""
from __future__ import annotations

import subprocess
import time

import pytest

from clients import Baresip, Linphone
from harness import REPO, HpbxServer, SippRun, have_sipp, reserved_port, run_sipp, sipp_port
from callrig import SCEN, user
from rtp_pcap import tone_pcap
from sipp_call import scenario
from test_default_config import wait_heard

CLIENTS = ("baresip", "linphone", "sipp")
FEATURES = ("register_udp", "register_tcp", "register_tls", "call_audio", "hold_resume", "dtmf")
TONE = {"baresip": 440, "linphone": 660, "sipp": 550}
REF_TONE = 1000
DIGITS = "159"


def _num(client: str, feature: str, base: int) -> str:
    return str(base + CLIENTS.index(client) * 10 + FEATURES.index(feature))


def uname(client: str, feature: str) -> str:
    return f"{client[:3]}{FEATURES.index(feature)}"


TENANT = '[tenant]\nname = "interop"\n' + "".join(
    user(uname(c, f), _num(c, f, 2000)) + user("ref" + uname(c, f), _num(c, f, 3000))
    for c in CLIENTS for f in FEATURES)


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
                             sip_port=reserved_port(), transport=transport, tone=TONE["baresip"])
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

    def close(self):
        self.phone.close()


CASES = {"baresip": BaresipCase, "linphone": LinphoneCase}


def reference_peer(server, tmp, client, feature) -> Baresip:
    name = "ref" + uname(client, feature)
    ref = Baresip(tmp / name, name, f"{name}-pw", server.sip_target, sip_port=reserved_port(),
                  tone=REF_TONE)
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
