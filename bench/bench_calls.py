"""Call bench: hpbx as a forking B2BUA against Kamailio 5.6 as a forking stateful proxy, same load.

Scenario (issue 4): a trunk (SIPp UAC, the anchor's ``call_uac.xml`` accepting one 180 per branch,
``bench/sipp/call_uac_fork.xml``: INVITE, 180, 200, ACK, short pause, BYE) calls a public number whose dial plan rings one user with two registered
devices: device 1 (the anchor's ``call_uas.xml``) answers at once, device 2
(``tests/sip/scenarios/call_uas_ring.xml``) rings until it is cancelled. Kamailio gets the same
two devices registered under one AoR, so ``lookup("location")`` forks to both and tm cancels the
loser. For each server the call rate steps up (``CALL_RATES``) for ``CALL_STEP_SECS`` each until
more than 0.1 % of the calls fail (calls never finished count as failed); the highest clean rate
is printed, then the ratio hpbx/Kamailio.

Memory per active call (hpbx, measured first, on the fresh server): RSS with ``MEM_CALLS`` calls
held open (long pause) minus the RSS before, divided by the active calls the server reports.

    .venv/bin/python -m pytest -q -s bench/bench_calls.py
    .venv/bin/python bench/bench_calls.py

Measured here (2 cores shared with the three SIPp processes, 5 s steps, 2026-11-25):
hpbx 1,500 cps clean (2,000 fails), Kamailio 3,000 cps clean (4,000 fails): ratio 0.50;
hpbx 23.8 KiB RSS per active call (relay session included), 0.55-0.75 ms of CPU per call.

Plan for parity: (1) several hpbx worker processes on one SO_REUSEPORT socket, calls sharded
by Call-ID (the B legs' Call-IDs carry the worker index, so in-dialog requests land on the
owner) — the box's second core, Kamailio's own model; (2) the transaction and dialog tables
and the per-message matching in Cython next to sipmsg (the profile is dominated by Python
per-message work: transaction objects, header lists, response building); (3) CDRs written in
one SQLite transaction per batch instead of one per call; (4) sendmmsg batching of the
datagrams one loop iteration produces.

Env: CALL_RATES ("100 200 400 600 800 1000 1500 2000 3000 4000 6000 8000"), CALL_STEP_SECS (5),
MEM_CALLS (1000), CALL_KINDS ("hpbx kamailio"), CALL_WORKERS (1: hpbx's ``[server] workers``;
or kinds "hpbx1 hpbx2"), CALL_RTP_PORTS ("20000-29999"; wider needs the ephemeral range moved
out of it, e.g. in the bench's own network namespace). The call lasts 500 ms after the ACK. Figures only: nothing
passes or fails on time. Every run is bounded by SIPp's -m and -timeout and a hard kill.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "calls"
ANCHORS = ROOT.parent / "shared" / "anchors"
ANCHOR_SIPP = ANCHORS / "sipp"
RING_UAS = ROOT / "tests" / "sip" / "scenarios" / "call_uas_ring.xml"
CALLER = HERE / "sipp" / "call_uac_fork.xml"  # the anchor's caller, taking a 180 per branch
IP = "127.0.0.1"
HPBX_PORT, KAM_PORT, KAM_CTL_PORT = 5480, 5475, 2476
TRUNK_PORT, DEV1_PORT, DEV2_PORT = 5490, 5491, 5492
NUMBER, USER, PASSWORD = "0449990000", "benchuser", "bench-pw"
CLK = os.sysconf("SC_CLK_TCK")

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "sip")]
from callrig import number, trunk, user  # noqa: E402  the call tests' tenant builders


def env_list(name: str, default: str) -> list[str]:
    return os.environ.get(name, default).split()


RATES = [int(r) for r in env_list("CALL_RATES", "100 200 400 600 800 1000 1500 2000 3000 4000 6000 8000")]
STEP_SECS = float(os.environ.get("CALL_STEP_SECS", "5"))
PAUSE_MS = 500  # written in call_uac_fork.xml
MEM_CALLS = int(os.environ.get("MEM_CALLS", "1000"))
KINDS = env_list("CALL_KINDS", "hpbx kamailio")
WORKERS = int(os.environ.get("CALL_WORKERS", "1"))  # hpbx's [server] workers
# A forked call holds two relay sessions (four port pairs) until it ends: at 2,000 cps the
# default range's 5,000 pairs run out ("no free RTP port pair"), whatever the CPU does.
RTP_PORTS = os.environ.get("CALL_RTP_PORTS", "20000-29999")


# ------------------------------------------------------------------ processes
def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total


def children(pid: int) -> list[int]:
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sipp(scenario: Path, target: str, port: int, workdir: Path, *, calls: int | None = None,
         rate: float = 0, service: str = "", pause_ms: int = 0, timeout: float = 30,
         extra=(), inf: list[tuple] | None = None, media_port: int = 0):
    workdir.mkdir(parents=True, exist_ok=True)
    stat = workdir / f"{scenario.stem}-{port}-{int(time.time() * 1000)}.csv"
    cmd = ["sipp", target, "-sf", str(scenario), "-i", IP, "-p", str(port), "-t", "u1",
           "-nostdin", "-timeout", f"{int(timeout)}s", "-trace_stat", "-stf", str(stat), "-fd", "1",
           "-buff_size", "8388608", "-max_socket", "4000", "-trace_err", "-mp", str(media_port or 16000 + port % 1000 * 4)]
    if calls is not None:
        cmd += ["-m", str(calls), "-r", str(rate), "-l", "100000"]
    if service:
        cmd += ["-s", service]
    if pause_ms:
        cmd += ["-d", str(pause_ms)]
    if inf is not None:
        csv = workdir / f"inf-{port}.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(";".join(row) + ";\n" for row in inf))
        cmd += ["-inf", str(csv)]
    cmd += list(extra)
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    proc.stat = stat
    return proc


def finish(proc, timeout: float) -> tuple[int, int]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return counts(proc.stat)


def counts(stat: Path) -> tuple[int, int]:
    if not stat.exists():
        return 0, 0
    rows = [r for r in stat.read_text(errors="replace").splitlines() if r.strip()]
    if len(rows) < 2:
        return 0, 0
    col = {n: i for i, n in enumerate(rows[0].split(";"))}
    last = rows[-1].split(";")
    return int(last[col["SuccessfulCall(C)"]]), int(last[col["FailedCall(C)"]])


def wait_options(port: int, tries: int = 60) -> bool:
    for _ in range(tries):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.25)
        try:
            s.bind((IP, 0))
            msg = (f"OPTIONS sip:{IP}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {IP}:{s.getsockname()[1]};"
                   f"branch=z9hG4bK{time.time_ns()};rport\r\nMax-Forwards: 70\r\nFrom: <sip:p@{IP}>;tag=1\r\n"
                   f"To: <sip:{IP}>\r\nCall-ID: {time.time_ns()}@bench\r\nCSeq: 1 OPTIONS\r\n"
                   f"Content-Length: 0\r\n\r\n").encode()
            s.sendto(msg, (IP, port))
            s.recv(4096)
            return True
        except OSError:
            time.sleep(0.25)
        finally:
            s.close()
    return False


# ------------------------------------------------------------------ servers
class Server:
    """A server under bench: ``start`` sets ``proc`` and ``log``; ``stop`` ends it gracefully."""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Hpbx(Server):
    name = "hpbx"
    port = HPBX_PORT
    service = NUMBER
    register_scenario = "reg_auth.xml"

    def start(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        for stale in ("hpbx.sqlite3", "hpbx.sqlite3-wal", "hpbx.sqlite3-shm"):
            (OUT / stale).unlink(missing_ok=True)
        tenant = OUT / "tenant.toml"
        tenant.write_text('[tenant]\nname = "bench"\n' + trunk("carrier", TRUNK_PORT, host=IP)
                          + user(USER, "500", password=PASSWORD) + number(NUMBER, (60, [f"user:{USER}"])))
        config = OUT / "hpbx.toml"
        config.write_text(f"""[sip]
listen = ["udp:{IP}:{HPBX_PORT}"]
keepalive_interval = 0
[rtp]
ports = "{RTP_PORTS}"
address = "{IP}"
[admin]
socket = "{OUT / 'hpbx.sock'}"
[store]
path = "{OUT / 'hpbx.sqlite3'}"
[log]
level = "warning"
[provision]
files = ["{tenant}"]
[server]
workers = {WORKERS}
""")
        self.log = open(OUT / f"hpbx-w{WORKERS}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "hpbx", "serve", "--config", str(config)],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if not wait_options(HPBX_PORT):
            self.stop()
            raise RuntimeError(f"hpbx did not start, see {OUT / 'hpbx.log'}")
        deadline = time.monotonic() + 60
        while WORKERS > 1 and self.admin("stats.get", layer="workers")["workers"]["up"] < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"hpbx workers did not start, see {OUT / 'hpbx.log'}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return children(self.proc.pid)  # the workers started by the first one

    def admin(self, method: str, **params):
        sys.path.insert(0, str(ROOT))
        from hpbx.admin.client import AdminClient
        with AdminClient(str(OUT / "hpbx.sock"), timeout=10) as client:
            return client.call(method, params)

    def active_calls(self) -> int:
        if WORKERS > 1:
            return sum(w["calls_active"] for w in self.admin("stats.get", layer="workers")["workers"]["workers"])
        return self.admin("stats.get", layer="calls")["calls"]["calls_active"]


class Kamailio(Server):
    """A private instance of the anchor's Kamailio (its own port, control socket and run
    directory), so that another bench using the anchor script's instance is not disturbed."""

    name = "kamailio"
    port = KAM_PORT
    service = USER
    register_scenario = "reg.xml"

    def start(self) -> None:
        run = OUT / "kamailio"
        run.mkdir(parents=True, exist_ok=True)
        defs = ["-A", f"LISTEN_ADDR=udp:{IP}:{KAM_PORT}", "-A", "CHILDREN=4",
                "-A", f'CTL_ADDR="udp:{IP}:{KAM_CTL_PORT}"']
        self.log = open(run / "kamailio.log", "wb")
        self.proc = subprocess.Popen(["kamailio", "-DD", "-E", "-f", str(ANCHORS / "kamailio.cfg"), *defs,
                                      "-m", "2048", "-M", "16", "-x", "tlsf", "-Y", str(run), "-w", str(run)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if not wait_options(KAM_PORT):
            self.stop()
            raise RuntimeError(f"kamailio did not start, see {run / 'kamailio.log'}")

    def pids(self) -> list[int]:
        return children(self.proc.pid)


# ------------------------------------------------------------------ the bench
def register_devices(server, workdir: Path) -> None:
    for port in (DEV1_PORT, DEV2_PORT):
        proc = sipp(ANCHOR_SIPP / server.register_scenario, f"{IP}:{server.port}", port, workdir,
                    calls=1, rate=1, timeout=10, inf=[(USER, PASSWORD)])
        ok, _ = finish(proc, 20)
        if ok != 1:
            raise RuntimeError(f"{server.name}: device on port {port} could not register")


def start_devices(server, workdir: Path, total_secs: float):
    answer = sipp(ANCHOR_SIPP / "call_uas.xml", f"{IP}:{server.port}", DEV1_PORT, workdir,
                  timeout=total_secs, media_port=17000)
    ring = sipp(RING_UAS, f"{IP}:{server.port}", DEV2_PORT, workdir, timeout=total_secs,
                media_port=17100)
    time.sleep(0.3)
    return answer, ring


def step(server, rate: int, workdir: Path) -> dict:
    calls = int(rate * STEP_SECS)
    pids = server.pids()
    t0, c0 = time.monotonic(), cpu_ticks(pids)
    proc = sipp(CALLER, f"{IP}:{server.port}", TRUNK_PORT, workdir, calls=calls,
                rate=rate, service=server.service, timeout=STEP_SECS + 20,
                inf=[("0311112222",)], media_port=17200)
    ok, failed = finish(proc, STEP_SECS + 40)
    secs = time.monotonic() - t0
    cpu = (cpu_ticks(pids) - c0) / CLK / secs * 100
    fail_pct = 100.0 * (calls - ok) / calls
    return {"server": server.name, "rate": rate, "calls": calls, "ok": ok, "failed": calls - ok,
            "fail_pct": fail_pct, "cpu_pct": cpu, "clean": fail_pct <= 0.1}


def memory_per_call(server, workdir: Path) -> dict:
    idle = sum(rss_kb(p) for p in server.pids())
    rate = 250
    hold_ms = int(MEM_CALLS / rate * 1000) + 4000
    proc = sipp(ANCHOR_SIPP / "call_uac.xml", f"{IP}:{server.port}", TRUNK_PORT, workdir,
                calls=MEM_CALLS, rate=rate, service=server.service, pause_ms=hold_ms,
                timeout=hold_ms / 1000 + 30, inf=[("0311112222",)], media_port=17200)
    try:
        time.sleep(MEM_CALLS / rate + 2)
        active = server.active_calls()
        peak = sum(rss_kb(p) for p in server.pids())
    finally:
        finish(proc, hold_ms / 1000 + 40)
    return {"idle_rss_kb": idle, "peak_rss_kb": peak, "active_calls": active,
            "kb_per_call": (peak - idle) / active if active else float("nan")}


def run_server(server) -> tuple[list[dict], dict | None]:
    workdir = OUT / server.name
    server.start()
    devices = ()
    results: list[dict] = []
    mem = None
    try:
        register_devices(server, workdir)
        total = len(RATES) * (STEP_SECS + 30) + (MEM_CALLS / 250 + 60 if server.name == "hpbx" and MEM_CALLS else 0)
        devices = start_devices(server, workdir, total)
        if server.name == "hpbx" and MEM_CALLS:
            mem = memory_per_call(server, workdir)  # on a fresh server: nothing left of a load
            time.sleep(3)
        for rate in RATES:
            r = step(server, rate, workdir)
            results.append(r)
            print(f"  {server.name:9s} {rate:6d} cps: ok {r['ok']}/{r['calls']} fail {r['fail_pct']:.3f}% "
                  f"cpu {r['cpu_pct']:.0f}% ({r['cpu_pct'] * 10 / rate:.3f} ms per call) "
                  f"{'clean' if r['clean'] else 'FAIL'}", flush=True)
            if not r["clean"]:
                break
            time.sleep(2)  # let the previous step's calls and timers drain
    finally:
        for d in devices:
            if d.poll() is None:
                d.terminate()
                try:
                    d.wait(10)
                except subprocess.TimeoutExpired:
                    d.kill()
                    d.wait()
        server.stop()
    return results, mem


def best(results: list[dict]) -> int:
    return max([r["rate"] for r in results if r["clean"]], default=0)


def bench() -> dict:
    summary = {}
    for kind in KINDS:
        if kind == "kamailio" and not shutil.which("kamailio"):
            print("kamailio is not installed: skipped")
            continue
        global WORKERS
        if kind.startswith("hpbx"):  # "hpbx" ([server] workers = CALL_WORKERS) or "hpbx2" (2)
            WORKERS = int(kind[4:] or os.environ.get("CALL_WORKERS", "1"))
        server = Hpbx() if kind.startswith("hpbx") else Kamailio()
        print(f"{kind}: rates {RATES}, {STEP_SECS:.0f} s per step, pause {PAUSE_MS} ms, "
              + (f"{WORKERS} workers, " if kind.startswith("hpbx") else "")
              + 
              f"fork to 2 devices (1 answers, 1 cancelled)", flush=True)
        results, mem = run_server(server)
        summary[kind] = {"max_clean_cps": best(results), "steps": results, "memory": mem}
    print("\nforking call bench (trunk -> number -> 2 devices), highest clean rate (<= 0.1% failed):")
    for kind, s in summary.items():
        print(f"  {kind:9s} {s['max_clean_cps']:6d} cps")
    mem = next((s["memory"] for k, s in summary.items() if k.startswith("hpbx") and s["memory"]), None)
    if mem:
        print(f"  hpbx memory: {mem['kb_per_call']:.1f} KiB per active call "
              f"({mem['active_calls']} calls held, RSS {mem['idle_rss_kb']} -> {mem['peak_rss_kb']} KiB)")
    kam = summary.get("kamailio", {}).get("max_clean_cps")
    for kind in [k for k in summary if k.startswith("hpbx")] if kam else ():
        ratio = summary[kind]["max_clean_cps"] / kam
        print(f"  ratio {kind}/kamailio: {ratio:.2f}")
        summary[f"ratio_{kind}"] = ratio
    for kind, s in summary.items():
        clean = [r for r in s["steps"] if r["clean"]] if isinstance(s, dict) and "steps" in s else []
        if clean:
            top = clean[-1]
            print(f"  {kind:9s} CPU at {top['rate']} cps: {top['cpu_pct']:.0f}% of a core "
                  f"({top['cpu_pct'] * 10 / top['rate']:.3f} ms per call)")
    print(f"  load average at the end: {os.getloadavg()[0]:.2f} (2 shared cores)")
    return summary


def test_calls_bench():
    import pytest
    if not shutil.which("sipp"):
        pytest.skip("sipp is not installed (sip-tester)")
    bench()


if __name__ == "__main__":
    bench()
