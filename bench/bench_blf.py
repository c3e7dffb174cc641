"""BLF at scale (issue 18): SUBSCRIPTIONS dialog-event subscriptions on USERS users while calls
run at CPS calls/s; prints the NOTIFY latency (p50/p99 after the change, per state) and the CPU
cost per NOTIFY, from the same call load run twice: without and with the subscriptions.

    .venv/bin/python -m pytest -q -s bench/bench_blf.py
    BLF_USERS=1000 BLF_SUBSCRIPTIONS=10000 BLF_CPS=100 BLF_CALLS=3000 .venv/bin/python -m pytest -q -s bench/bench_blf.py

Watchers: one UDP socket in this process holds every subscription (SUBSCRIBERS = SUBSCRIPTIONS
/ 50 users, each supervising 50 users: hpbx allows 50 subscriptions per subscriber) and answers
every NOTIFY. Devices: one SIPp UAS to which every watched user is registered (180, 300 ms,
200; the caller hangs up 300 ms later). Latency of ``early``: NOTIFY arrival here minus the
UAS's 180 for that leg (its message trace); of ``confirmed``: minus the UAS's 200. No anchor:
Kamailio's presence + pua_dialoginfo needs a database-backed presence setup not configured
here, so hpbx's figures stand with the call rate it held at the same time (calls failed are
printed). Figures only; every step is bounded by SIPp's -m/-timeout and a hard kill.

Measured here (2 shared cores, 2026-12-02, the issue's size: BLF_USERS=1000
BLF_SUBSCRIPTIONS=10000 BLF_CPS=100 BLF_CALLS=3000): 3000/3000 calls answered at 96 cps in both
runs; server CPU 6.3 s without and 21.8 s with the subscriptions, 90,000 NOTIFYs: 172 µs per
NOTIFY; latency early p50 2.6 ms / p99 42 ms, confirmed p50 3.0 ms / p99 113 ms (target 200 ms).
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "blf"
IP = "127.0.0.1"
HPBX_PORT, UAS_PORT, CALLER_PORT, WATCH_PORT = 5580, 5581, 5582, 5583
USERS = int(os.environ.get("BLF_USERS", "200"))
SUBSCRIPTIONS = int(os.environ.get("BLF_SUBSCRIPTIONS", "2000"))
CPS = int(os.environ.get("BLF_CPS", "50"))
CALLS = int(os.environ.get("BLF_CALLS", "500"))
PER_SUBSCRIBER = 50
CLK = os.sysconf("SC_CLK_TCK")

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "sip"), str(ROOT)]
from bench_calls import cpu_ticks, wait_options  # noqa: E402
from callrig import user  # noqa: E402


def tenant() -> str:
    subscribers = max(1, SUBSCRIPTIONS // PER_SUBSCRIBER)
    text = '[tenant]\nname = "blf"\n' + user("caller", "9999")
    for i in range(USERS):
        text += user(f"u{i}", str(10000 + i))
    for s in range(subscribers):
        watched = [f"u{(s * PER_SUBSCRIBER + k) % USERS}" for k in range(PER_SUBSCRIBER)]
        text += user(f"boss{s}", str(50000 + s)) + "supervise = [" + ", ".join(
            f'"{w}"' for w in dict.fromkeys(watched)) + "]\n"
    return text


def start_server():
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in ("hpbx.sqlite3", "hpbx.sqlite3-wal", "hpbx.sqlite3-shm"):
        (OUT / stale).unlink(missing_ok=True)
    (OUT / "tenant.toml").write_text(tenant())
    (OUT / "hpbx.toml").write_text(f"""[sip]
listen = ["udp:{IP}:{HPBX_PORT}"]
keepalive_interval = 0
max_devices = 1
[rtp]
ports = "20000-29999"
address = "{IP}"
[admin]
socket = "{OUT / 'hpbx.sock'}"
[store]
path = "{OUT / 'hpbx.sqlite3'}"
[log]
level = "warning"
[security]
trusted = ["127.0.0.0/8"]  # the bench's own load is no flood
[provision]
files = ["{OUT / 'tenant.toml'}"]
""")
    log = open(OUT / "hpbx.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hpbx", "serve", "--config", str(OUT / "hpbx.toml")],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if not wait_options(HPBX_PORT):
        proc.kill()
        raise RuntimeError(f"hpbx did not start, see {OUT / 'hpbx.log'}")
    return proc, log


def stats() -> dict:
    from hpbx.admin.client import AdminClient
    with AdminClient(str(OUT / "hpbx.sock"), timeout=10) as client:
        s = client.call("stats.get", layer="calls")
    return s.get("calls", s)


def sipp(scenario, port, *, inf=None, calls=1, rate=10, extra=(), trace=False, timeout=120):
    cmd = ["sipp", f"{IP}:{HPBX_PORT}", "-sf", str(scenario), "-i", IP, "-p", str(port), "-t", "u1",
           "-m", str(calls), "-r", str(rate), "-l", "100000", "-nostdin", "-timeout", f"{timeout}s",
           "-buff_size", "8388608", "-max_socket", "4000", "-mi", IP, "-mp", str(16000 + port % 1000 * 4)]
    if inf is not None:
        csv = OUT / f"inf-{port}.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(";".join(row) + ";\n" for row in inf))
        cmd += ["-inf", str(csv)]
    if trace:
        cmd += ["-trace_msg", "-message_file", str(OUT / f"msg-{port}.log")]
        (OUT / f"msg-{port}.log").unlink(missing_ok=True)
    return subprocess.Popen(cmd + list(extra), cwd=OUT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Watchers:
    """Every subscription on one socket; NOTIFYs answered, (arrival, call-id, state) kept."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((IP, WATCH_PORT))
        self.seen: list[tuple[float, str, str]] = []
        self.responses: dict[str, str] = {}
        self.notifies = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                data = self.sock.recv(65535)
            except (socket.timeout, TimeoutError):
                continue
            now = time.time()
            text = data.decode(errors="replace")
            if text.startswith("NOTIFY "):
                self.notifies += 1
                keep = [h for h in text.split("\r\n")[1:] if re.match(r"(?i)(via|from|to|call-id|cseq):", h)]
                self.sock.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n")
                                 .encode(), (IP, HPBX_PORT))
                for call_id, state in re.findall(r'call-id="([^"]+)"[^>]*>\s*<state>(\w+)</state>', text):
                    self.seen.append((now, call_id, state))
            elif text.startswith("SIP/2.0"):
                cid = re.search(r"(?im)^Call-ID:\s*(\S+)", text).group(1)
                if " 100 " not in text[:12]:
                    self.responses[cid] = text

    def _send(self, boss, number, call_id, cseq, auth=""):
        uri = f"sip:{number}@{IP}:{HPBX_PORT}"
        msg = (f"SUBSCRIBE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {IP}:{WATCH_PORT};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{boss}@{IP}>;tag={call_id[:8]}\r\nTo: <{uri}>\r\n"
               f"Call-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:{boss}@{IP}:{WATCH_PORT}>\r\n"
               f"Event: dialog\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n")
        self.sock.sendto(msg.encode(), (IP, HPBX_PORT))

    def subscribe_all(self, timeout=120) -> int:
        subscribers = max(1, SUBSCRIPTIONS // PER_SUBSCRIBER)
        todo = [(f"boss{s}", str(10000 + (s * PER_SUBSCRIBER + k) % USERS))
                for s in range(subscribers) for k in range(PER_SUBSCRIBER)]
        ok = 0
        deadline = time.monotonic() + timeout
        for start in range(0, len(todo), 200):  # windows of 200 outstanding
            window = {}
            for boss, number in todo[start:start + 200]:
                cid = uuid.uuid4().hex
                window[cid] = (boss, number)
                self._send(boss, number, cid, 1)
            while time.monotonic() < deadline and any(c not in self.responses for c in window):
                time.sleep(0.01)
            for cid, (boss, number) in window.items():
                challenge = re.search(r'nonce="([^"]+)"', self.responses.pop(cid, "") or "")
                if not challenge:
                    continue
                uri = f"sip:{number}@{IP}:{HPBX_PORT}"
                ha1 = hashlib.md5(f"{boss}:hpbx:{boss}-pw".encode()).hexdigest()
                ha2 = hashlib.md5(f"SUBSCRIBE:{uri}".encode()).hexdigest()
                resp = hashlib.md5(f"{ha1}:{challenge.group(1)}:00000001:c0ffee:auth:{ha2}".encode()).hexdigest()
                auth = (f'Proxy-Authorization: Digest username="{boss}", realm="hpbx", nonce="{challenge.group(1)}", '
                        f'uri="{uri}", response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"\r\n')
                self._send(boss, number, cid, 2, auth)
            while time.monotonic() < deadline and any(c not in self.responses for c in window):
                time.sleep(0.01)
            ok += sum(1 for c in window if self.responses.get(c, "").startswith("SIP/2.0 200"))
        return ok


def uas_times(path: Path) -> dict[tuple[str, str], float]:
    """(Call-ID, "180"|"200") -> time the UAS sent it, from its message trace."""
    out = {}
    text = path.read_text(errors="replace") if path.exists() else ""
    for block in re.split(r"(?m)^-{5,} ", text):
        m = re.match(r"(\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d)\.(\d+)", block)
        if not m or "message sent" not in block[:200]:
            continue
        status = re.search(r"\n\s*SIP/2.0 (180|200) ", block)
        cid = re.search(r"(?im)^\s*Call-ID:\s*(\S+)", block)
        if status and cid and "INVITE" in (re.search(r"(?im)^\s*CSeq:.*$", block).group(0)):
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + float("0." + m.group(2))
            out.setdefault((cid.group(1), status.group(1)), t)
    return out


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def call_phase(proc, label: str, trace: bool) -> dict:
    uas = sipp(ROOT / "tests" / "sip" / "scenarios" / "call_uas.xml", UAS_PORT, calls=CALLS, rate=CPS,
               extra=["-d", "300"], trace=trace)
    time.sleep(0.5)
    before_cpu, before = cpu_ticks([proc.pid]), stats()
    t0 = time.monotonic()
    caller = sipp(HERE / "sipp" / "blf_caller.xml", CALLER_PORT, calls=CALLS, rate=CPS,
                  inf=[(str(10000 + i % USERS),) for i in range(CALLS)],
                  extra=["-au", "caller", "-ap", "caller-pw", "-d", "300"])
    for p in (caller, uas):
        try:
            p.wait(CALLS / CPS + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    took = time.monotonic() - t0
    time.sleep(1.0)
    after_cpu, after = cpu_ticks([proc.pid]), stats()
    done = after["calls_answered"] - before["calls_answered"]
    return {"label": label, "cpu_s": (after_cpu - before_cpu) / CLK, "answered": done,
            "failed": after["calls_failed"] - before["calls_failed"], "cps": done / took,
            "notifies": after.get("blf_notify_sent", 0) - before.get("blf_notify_sent", 0)}


def test_blf_at_scale():
    if not os.path.exists("/usr/bin/sipp"):
        import pytest
        pytest.skip("sipp is not installed (sip-tester)")
    proc, log = start_server()
    watchers = None
    try:
        reg = sipp(ROOT / "tests" / "sip" / "scenarios" / "register_auth.xml", UAS_PORT, calls=USERS, rate=500,
                   inf=[(f"u{i}", f"u{i}-pw", f"u{i}", "3600") for i in range(USERS)])
        reg.wait(120)
        plain = call_phase(proc, "calls without subscriptions", trace=False)
        watchers = Watchers()
        subscribed = watchers.subscribe_all()
        time.sleep(1.0)
        watchers.seen.clear()
        loaded = call_phase(proc, f"calls with {subscribed} subscriptions", trace=True)
        time.sleep(1.0)
        sent = uas_times(OUT / f"msg-{UAS_PORT}.log")
        lat = {"early": [], "confirmed": []}
        firsts = {}
        for t, cid, state in watchers.seen:
            firsts.setdefault((cid, state), []).append(t)
        for (cid, state), times in firsts.items():
            ref = sent.get((cid, "180" if state == "early" else "200"))
            if state in lat and ref is not None:
                lat[state] += [t - ref for t in times]
        print(f"\nBLF bench: {USERS} users, {subscribed}/{SUBSCRIPTIONS} subscriptions, {CALLS} calls at {CPS} cps")
        for phase in (plain, loaded):
            print(f"  {phase['label']}: {phase['answered']} answered, {phase['failed']} failed, "
                  f"{phase['cps']:.0f} cps held, server CPU {phase['cpu_s']:.2f} s, NOTIFYs {phase['notifies']}")
        for state, values in lat.items():
            print(f"  NOTIFY {state} latency after the phone's {'180' if state == 'early' else '200'}: "
                  f"p50 {pct(values, 50) * 1000:.1f} ms, p99 {pct(values, 99) * 1000:.1f} ms "
                  f"({len(values)} NOTIFYs; target p99 < 200 ms)")
        extra_cpu = loaded["cpu_s"] - plain["cpu_s"]
        if loaded["notifies"]:
            print(f"  CPU per NOTIFY (difference of the two runs / NOTIFYs): "
                  f"{extra_cpu / loaded['notifies'] * 1e6:.0f} µs")
        print(f"  watcher received {watchers.notifies} NOTIFYs")
    finally:
        if watchers is not None:
            watchers.stop = True
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


if __name__ == "__main__":
    test_blf_at_scale()
