"""The ban engine's cost, in one run:

1. the check per datagram in the UDP receive path: ``DatagramIO.recv()`` of full 64-datagram
   batches without a guard, with the guard passing the source, and with the source banned
   (the datagram is dropped before it becomes bytes);
2. CPU per dropped flood packet: a SIPp REGISTER flood from one source at a fixed rate
   against hpbx and against Kamailio 5.6 with its stock anti-flood (pike 16 per 2 s + htable
   ban 300 s, bench/kamailio_antiflood.cfg), server CPU divided by packets dropped, and in the
   same seconds a legitimate phone from another source registering with digest (PHONE_RATE,
   2 a second): its success in % at each server;
3. REGISTER with digest at a fixed rate, ban engine on (every datagram checked) vs off:
   server CPU per REGISTER and answered rate, alternated on/off three times (medians);
4. the anchor driver's step-up (highest clean REGISTER rate, as bench_register.py) with the
   engine on and off.

Floods go only to servers in a fresh loopback-only namespace: the script runs itself under
``unshare -n`` (needs root). ``python bench/bench_security.py`` or ``make bench``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ANCHORS = REPO.parent / "shared" / "anchors"
sys.path.insert(0, str(REPO / "tests"))

CLK = os.sysconf("SC_CLK_TCK")
FLOOD_RATE = int(os.environ.get("FLOOD_RATE", "3000"))
FLOOD_SECS = int(os.environ.get("FLOOD_SECS", "6"))
REG_RATE = int(os.environ.get("REG_RATE", "3000"))
REG_SECS = int(os.environ.get("REG_SECS", "8"))
NUSERS = 10_000
USER_FIRST = 100_000
STEP_RATES = os.environ.get("STEP_RATES", "2000 4000 8000 12000 16000 20000")
ON = {"flood_threshold": 1_000_000, "auth_failures": 0, "user_failures": 0}  # checks, no bans
OFF = {"enabled": False}


def cpu_ticks(pid: int, children: bool = False) -> int:
    """utime + stime of a process (all its threads), and of its direct children."""
    pids = [pid]
    if children:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


# ---------------------------------------------------------------------- 1. per datagram
def check_cost() -> dict:
    """The check alone, in C: one source (the common case: a hit), 10,000 sources (a table
    that misses the CPU cache), and banned sources (the drop)."""
    from hpbx._fast import guard

    n = 2_000_000
    out = {}
    for name, sources, banned in (("one source", 1, False), ("10,000 sources", 10_000, False),
                                  ("banned source", 1, True)):
        g = guard.Guard(65536)
        g.configure(threshold=1_000_000)
        best = min(g.cost(n, sources, banned) for _ in range(5))
        out[name] = round(best / n * 1e9, 1)
        print(f"  check {name:16s} {out[name]:6.1f} ns")
    print(f"guard_check_ns={out['one source']} (10,000 sources {out['10,000 sources']}, "
          f"banned {out['banned source']})")
    return out


def recv_cost() -> dict:
    """DatagramIO.recv() of full batches (recvmmsg included), the modes interleaved batch by
    batch so that the box's load hits them alike; medians of the per-batch times."""
    import statistics

    from hpbx._fast import guard, udpio

    payload = (b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.4:5060;branch=z9hG4bKx\r\n"
               b"From: <sip:100@127.0.0.1>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: x\r\n"
               b"CSeq: 1 REGISTER\r\nUser-Agent: Linphone/5.1\r\nContent-Length: 0\r\n\r\n")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.4", 0))
    target = server.getsockname()
    rounds = int(os.environ.get("RECV_ROUNDS", "2000"))
    modes = {}
    for kind in ("no guard", "guard, source passes", "guard, source banned"):
        io = udpio.DatagramIO(server.fileno(), socket.AF_INET)
        if kind != "no guard":
            g = guard.Guard(65536)
            g.configure(threshold=1_000_000, agents=["friendly-scanner"])
            if "banned" in kind:
                g.ban("127.0.0.4", 3600, "flood")
            io.guard = g
        modes[kind] = (io, [])
    try:
        for _ in range(rounds):
            for kind, (io, times) in modes.items():
                for _ in range(udpio.BATCH):
                    client.sendto(payload, target)
                t0 = time.perf_counter()
                batch = io.recv()
                times.append((time.perf_counter() - t0) / udpio.BATCH)
                while io.recv():
                    pass
                del batch
    finally:
        server.close()
        client.close()
    out = {kind: round(statistics.median(times) * 1e9, 1) for kind, (_, times) in modes.items()}
    for kind, ns in out.items():
        print(f"  recv {kind:24s} {ns:7.1f} ns per datagram (median of {rounds} batches of 64)")
    base = out["no guard"]
    print(f"recv_ns_no_guard={base} recv_ns_guard_pass={out['guard, source passes']} "
          f"(+{out['guard, source passes'] - base:.1f}) recv_ns_banned={out['guard, source banned']} "
          f"({out['guard, source banned'] - base:+.1f}: the drop saves the bytes object)")
    return out


# ---------------------------------------------------------------------- 2. flood, CPU per drop
def kamailio_start(work: Path, port: int):
    cfg = HERE / "kamailio_antiflood.cfg"
    run = work / "kam"
    run.mkdir(parents=True, exist_ok=True)
    args = ["kamailio", "-DD", "-E", "-f", str(cfg), "-A", f"LISTEN_ADDR=udp:127.0.0.1:{port}",
            "-m", "256", "-M", "16", "-Y", str(run), "-w", str(run)]
    log = open(run / "kamailio.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    from harness import sip_options
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited: {(run / 'kamailio.log').read_text()[-2000:]}")
        # the probe from 127.0.0.1 counts towards pike; the flood comes from 127.0.0.4
        if sip_options("127.0.0.1", port, 0.3):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("kamailio did not answer OPTIONS")


PHONE_RATE = int(os.environ.get("PHONE_RATE", "2"))  # a legitimate phone's REGISTERs per second


def flood(target: str, work: Path, name: str, pid: int, children: bool) -> dict:
    """The flood from 127.0.0.4 and, from 127.0.0.5 in the same seconds, a legitimate phone
    (user 100) registering with digest PHONE_RATE times a second (2 requests each: under
    pike's 16 per 2 s and hpbx's, as a phone behind its own address is)."""
    from harness import SippRun

    calls = FLOOD_RATE * FLOOD_SECS
    phone_calls = PHONE_RATE * FLOOD_SECS
    t0 = cpu_ticks(pid, children)
    w0 = time.monotonic()
    phone = SippRun(REPO / "tests" / "sip" / "scenarios" / "register_auth.xml", target, work,
                    local_ip="127.0.0.5", inf=[("100", "pw-100000", "100", 3600)] * phone_calls,
                    calls=phone_calls, rate=PHONE_RATE, timeout=FLOOD_SECS + 20,
                    name=f"phone-{name}", trace_msg=False).start()
    run = SippRun(REPO / "tests" / "security" / "scenarios" / "register_flood.xml", target, work,
                  local_ip="127.0.0.4", calls=calls, rate=FLOOD_RATE, timeout=FLOOD_SECS + 20,
                  name=f"flood-{name}", trace_msg=False, extra=["-l", str(FLOOD_RATE)]).start()
    res = run.wait()
    wall = time.monotonic() - w0
    ticks = cpu_ticks(pid, children) - t0
    ph = phone.wait()
    dropped = max(1, calls - res.successful)
    per = ticks / CLK / dropped * 1e9
    print(f"  flood {name:9s} sent={calls} answered={res.successful} server_cpu={ticks / CLK:.3f} s "
          f"over {wall:.1f} s -> {per:.0f} ns per dropped packet; legitimate phone "
          f"{ph.successful}/{phone_calls} REGISTERs with digest succeeded ({ph.failed} failed)")
    return {"sent": calls, "answered": res.successful, "cpu_s": round(ticks / CLK, 3),
            "ns_per_dropped": round(per), "phone_ok": ph.successful, "phone_sent": phone_calls}


def flood_compare(work: Path) -> dict:
    from harness import HpbxServer, free_port

    out = {}
    srv = HpbxServer(work / "flood-hpbx", users=[("100", "pw-100000")], log_level="warning",
                     security={"scanner_agents": []})  # the defaults: 16 per 2 s, ban 300 s
    with srv:
        out["hpbx"] = flood(srv.sip_target, work, "hpbx", srv.proc.pid, False)
    if shutil.which("kamailio"):
        port = free_port(both=False)
        proc = kamailio_start(work, port)
        try:
            out["kamailio"] = flood(f"127.0.0.1:{port}", work, "kamailio", proc.pid, True)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    else:
        print("  kamailio is not installed: no anchor figure")
    hp, km = out["hpbx"]["ns_per_dropped"], out.get("kamailio", {}).get("ns_per_dropped")
    print(f"hpbx_ns_per_dropped={hp} kamailio_ns_per_dropped={km if km else 'n/a'} "
          f"ratio={hp / km:.2f}" if km else f"hpbx_ns_per_dropped={hp} kamailio_ns_per_dropped=n/a")
    for k, r in out.items():
        print(f"{k}_phone_success_pct={100 * r['phone_ok'] / r['phone_sent']:.1f}")
    return out


# ---------------------------------------------------------------------- 3. REGISTER on vs off
def register_fixed(work: Path, users) -> dict:
    from harness import HpbxServer, SippRun

    out = {"on": [], "off": []}
    inf = [(u, p, u, 3600) for u, p in users]
    for i, mode in enumerate(("on", "off") * int(os.environ.get("REG_PAIRS", "3"))):
        srv = HpbxServer(work / f"reg-{i}", users=users, log_level="warning",
                         sip_extra={"t1_ms": 500, "t2_ms": 4000, "t4_ms": 5000, "min_expires": 60},
                         security=ON if mode == "on" else OFF)
        srv.start(timeout=180)
        try:
            calls = REG_RATE * REG_SECS
            t0 = cpu_ticks(srv.proc.pid)
            w0 = time.monotonic()
            res = SippRun(REPO / "tests" / "sip" / "scenarios" / "register_auth.xml", srv.sip_target,
                          work, inf=inf, calls=calls, rate=REG_RATE, timeout=REG_SECS + 30,
                          name=f"reg-{mode}", trace_msg=False, extra=["-l", "2000"]).start().wait()
            wall = time.monotonic() - w0
            ticks = cpu_ticks(srv.proc.pid) - t0
        finally:
            srv.stop(timeout=60)
        us = ticks / CLK / max(1, res.successful) * 1e6
        out[mode].append({"ok": res.successful, "failed": res.failed, "us_per_register": round(us, 2),
                          "rate": round(res.successful / wall)})
        print(f"  register engine {mode:3s} ok={res.successful} failed={res.failed} "
              f"{us:.2f} µs CPU per REGISTER, {res.successful / wall:.0f}/s")
    import statistics
    on = statistics.median(r["us_per_register"] for r in out["on"])
    off = statistics.median(r["us_per_register"] for r in out["off"])
    spread = max(r["us_per_register"] for r in out["off"]) - min(r["us_per_register"] for r in out["off"])
    print(f"register_us_on={on} register_us_off={off} cost={100 * (on - off) / off:+.1f} % "
          f"(medians of {len(out['on'])} alternated runs each; off runs spread {spread:.1f} µs)")
    out["cost_pct"] = round(100 * (on - off) / off, 1)
    return out


def step_up(work: Path, users) -> dict:
    from harness import HpbxServer

    if not (ANCHORS / "bench_sip.sh").exists():
        print("  anchor driver not found: no step-up figures")
        return {}
    out = {"on": [], "off": []}
    for i, mode in enumerate(("on", "off", "on", "off")):  # alternated: the box's load drifts
        srv = HpbxServer(work / f"step-{i}", users=users, log_level="warning",
                         sip_extra={"t1_ms": 500, "t2_ms": 4000, "t4_ms": 5000, "min_expires": 60},
                         security=ON if mode == "on" else OFF)
        srv.start(timeout=180)
        try:
            env = dict(os.environ, TESTS="register", AUTH="1", NUSERS=str(NUSERS),
                       USER_FIRST=str(USER_FIRST), PW_PREFIX="pw", RATES=STEP_RATES, STEP_SECS="6",
                       REFINE="2", REPEAT="1", SERVER_PID=str(srv.proc.pid), OUT=str(work / f"out-{i}"))
            proc = subprocess.run(["bash", str(ANCHORS / "bench_sip.sh"), srv.sip_target], env=env,
                                  capture_output=True, text=True, timeout=900)
            found = re.findall(r"register_max_rps=(\d+)", proc.stdout + proc.stderr)
            out[mode].append(int(found[-1]) if found else 0)
        finally:
            srv.stop(timeout=60)
        print(f"  step-up engine {mode}: highest clean REGISTER rate {out[mode][-1]}/s")
    on, off = max(out["on"]), max(out["off"])
    if off:
        print(f"register_max_rps_on={on} register_max_rps_off={off} ratio={on / off:.2f} "
              f"(best of two each)")
    return out


def inside() -> dict:
    with open("/proc/loadavg") as f:
        print(f"load average at the start: {' '.join(f.read().split()[:3])} ({os.cpu_count()} CPUs)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-security-"))
    users = [(str(u), f"pw{u}") for u in range(USER_FIRST, USER_FIRST + NUSERS)]
    results = {"check": check_cost(), "recv": recv_cost(), "flood": flood_compare(work),
               "register": register_fixed(work, users)}
    if os.environ.get("STEP_UP", "1") == "1":
        results["step_up"] = step_up(work, users)
    return results


def run() -> dict:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise RuntimeError("the flood runs only in a fresh network namespace (unshare -n needs root)")
    if not shutil.which("sipp"):
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    proc = subprocess.run(["unshare", "-n", "--", "sh", "-c",
                           f'ip link set lo up && exec "{sys.executable}" "{__file__}" --inside'],
                          cwd=REPO, text=True, capture_output=True, timeout=3600)
    sys.stdout.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def test_ban_engine_cost():
    import pytest

    try:
        results = run()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    print(results)


if __name__ == "__main__":
    if "--inside" in sys.argv:
        print("RESULT " + json.dumps(inside()), flush=True)
    else:
        run()
