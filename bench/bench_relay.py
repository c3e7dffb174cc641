"""RTP relay bench: hpbx's compiled relay against no relay (the floor) and rtpengine, same load.

For every stream count N (unidirectional streams, N/2 calls) and every relay kind:
  1. start the relay fresh: hpbx in a child process (``bench_relay.py serve``, a Relay with the
     default one worker per core and its default packet loop, io_uring where the kernel allows
     it; kind ``hpbx-epoll`` runs the epoll loop instead, for comparison), rtpengine userspace (``--table=-1``, ng control over UDP on
     loopback), or nothing (direct: the two ends send straight to each other);
  2. allocate N/2 calls whose two ends are the generator's sockets A and B;
  3. run ``bench/rtp/rtpgen.c`` (built with cc into bench/out/): N streams of 172-byte RTP at
     50 packets/s, send timestamp in the payload, kernel receive timestamps;
  4. sample the relay process's CPU (utime + stime of all its threads, /proc/PID/stat) in the
     steady window after the warm-up; stop the relay by its PID.

Printed per point: received packets/s, loss, relay CPU %, packets per CPU-second, one-way
latency p50/p99, and at the end the ratios hpbx/rtpengine. Figures only: nothing passes or
fails on time.

    .venv/bin/python -m pytest -q -s bench/bench_relay.py
    .venv/bin/python bench/bench_relay.py                      # the same, without pytest
    HPBX_BENCH_QUICK=1 ...                                     # 2 short steps

Env: RELAY_STREAMS ("100 500 1000 2000 3000"), RELAY_SECS (8, warm-up 2 s included),
RELAY_KINDS ("direct hpbx rtpengine"; "hpbx-epoll" adds hpbx's epoll loop), RELAY_WORKERS (0 = one per core), RELAY_OUT,
RELAY_REPEAT (1; ratios then use the medians of the repetitions), RELAY_NICE (0; a nice
value given to both relays, e.g. -5: a relay that may preempt the generator answers sooner),
RELAY_QUIET_WAIT (30: seconds to wait for a quiet box before each point), RELAY_NOISE (10) and
RELAY_RETRIES (2): a point during which other programs used more than RELAY_NOISE % of a core
("others %" in the table) is run again, for every relay alike, and the quietest try is kept
("try" says which).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
CLK = os.sysconf("SC_CLK_TCK")
IP = "127.0.0.1"
GEN_A, GEN_B = 39000, 39002
HPBX_PORTS = (40000, 49999)  # 5000 pairs for 1500 calls: ephemeral ports of other programs land here too
RTPE_PORTS = (50000, 59999)
NG_PORT = 2299
# nice value of both relays (hpbx workers via Relay(nice=), rtpengine via nice(1)); 0 = as started
NICE = int(os.environ.get("RELAY_NICE", "0"))


# ------------------------------------------------------------------ measuring
def cpu_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, every thread of the process


def idle_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[3] + v[4]) / CLK


def task_seconds() -> float:
    """CPU time of every task on the box (user + nice + system, not irq/softirq)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2]) / CLK


def kthread_ticks() -> int:
    """CPU ticks of the kernel threads: ksoftirqd and kworkers run the relayed traffic's
    network work too, so they are load of the point, not of other programs."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        f = text[text.rindex(")") + 2:].split()
        if f[1] in ("0", "2") or d == "2":  # ppid 2 = kthreadd's children
            total += int(f[11]) + int(f[12])
    return total


def build_generator() -> Path:
    OUT.mkdir(exist_ok=True)
    exe = OUT / "rtpgen"
    src = HERE / "rtp" / "rtpgen.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-pthread", "-o", str(exe), str(src)], check=True,
                       timeout=120)
    return exe


# ------------------------------------------------------------------ rtpengine ng control
def bencode(x) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(map(bencode, x)) + b"e"
    if isinstance(x, dict):
        return b"d" + b"".join(bencode(k) + bencode(x[k]) for k in sorted(x)) + b"e"
    raise TypeError(type(x))


def bdecode(b: bytes, i: int = 0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c in (b"l", b"d"):
        i += 1
        items = []
        while b[i:i + 1] != b"e":
            v, i = bdecode(b, i)
            items.append(v)
        if c == b"l":
            return items, i + 1
        return {items[k].decode(): items[k + 1] for k in range(0, len(items), 2)}, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1:j + 1 + n], j + 1 + n


class Ng:
    """rtpengine's ng protocol: "cookie bencoded-dict" datagrams over UDP."""

    def __init__(self, port: int):
        self.addr = (IP, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((IP, 0))
        self.sock.settimeout(1.0)
        self.n = 0
        self.prefix = f"{os.getpid()}-{random.getrandbits(20)}-"

    def call(self, cmd: dict, tries: int = 3) -> dict:
        self.n += 1
        cookie = (self.prefix + str(self.n)).encode()
        for _ in range(tries):
            self.sock.sendto(cookie + b" " + bencode(cmd), self.addr)
            try:
                while True:
                    data = self.sock.recv(65535)
                    ck, _, body = data.partition(b" ")
                    if ck == cookie:
                        reply, _ = bdecode(body)
                        if reply.get("result") not in (b"ok", b"pong"):
                            raise RuntimeError(f"ng {cmd['command']}: {reply}")
                        return reply
            except socket.timeout:
                continue
        raise RuntimeError(f"ng {cmd['command']}: no reply")

    def close(self):
        self.sock.close()


def sdp(port: int, sess: int) -> str:
    return (f"v=0\r\no=- {sess} 1 IN IP4 {IP}\r\ns=-\r\nc=IN IP4 {IP}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


# ------------------------------------------------------------------ relays under test
class Direct:
    name = "direct"
    pid = None

    def start(self, calls: int) -> list[tuple[str, int]]:
        return [("A", GEN_B), ("B", GEN_A)] * calls

    def stop(self):
        pass


class Hpbx:
    """The compiled relay in a child process of its own, so its CPU is measured alone."""

    def __init__(self, workers: int, io: str = "auto"):
        self.name = "hpbx" if io == "auto" else f"hpbx-{io}"
        self.io = io
        self.workers = workers
        self.proc = None
        self.pid = None
        self.final = {}

    def start(self, calls: int) -> list[tuple[str, int]]:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--calls", str(calls),
                "--workers", str(self.workers), "--nice", str(NICE), "--io", self.io]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        self.pid = self.proc.pid
        rows = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("hpbx relay child exited before it was ready")
            if line.startswith("ready"):
                return rows
            side, port = line.split()
            rows.append((side, int(port)))
        raise RuntimeError("hpbx relay child not ready in 60 s")

    def stop(self):
        if self.proc is None:
            return
        try:
            out, _ = self.proc.communicate(input="", timeout=20)
            self.final = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        except (subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class RtpEngine:
    name = "rtpengine"

    def __init__(self, secs: float):
        self.secs = secs
        self.proc = None
        self.pid = None
        self.log = None

    def start(self, calls: int) -> list[tuple[str, int]]:
        OUT.mkdir(exist_ok=True)
        self.log = open(OUT / "rtpengine.log", "w")
        argv = (["nice", "-n", str(NICE)] if NICE else []) + ["rtpengine", "--config-file=none", "--foreground", "--log-stderr", "--log-level=4",
                "--table=-1", f"--interface={IP}", f"--listen-ng={IP}:{NG_PORT}",
                f"--port-min={RTPE_PORTS[0]}", f"--port-max={RTPE_PORTS[1]}",
                f"--timeout={int(self.secs) + 120}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        ng = Ng(NG_PORT)
        try:
            for _ in range(100):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rtpengine exited ({self.proc.returncode}), see {self.log.name}")
                try:
                    ng.call({"command": "ping"}, tries=1)
                    break
                except RuntimeError:
                    time.sleep(0.1)
            rows = []
            common = {"replace": ["origin", "session-connection"], "ICE": "remove"}
            for k in range(calls):
                cid = f"bench-{k}"
                r = ng.call(dict(common, command="offer", **{"call-id": cid, "from-tag": "a",
                                                              "sdp": sdp(GEN_A, 1)}))
                port_for_b = int(re.search(rb"m=audio (\d+)", r["sdp"]).group(1))
                r = ng.call(dict(common, command="answer", **{"call-id": cid, "from-tag": "a",
                                                               "to-tag": "b", "sdp": sdp(GEN_B, 2)}))
                port_for_a = int(re.search(rb"m=audio (\d+)", r["sdp"]).group(1))
                rows += [("A", port_for_a), ("B", port_for_b)]
            return rows
        finally:
            ng.close()

    def stop(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self.log:
            self.log.close()
            self.log = None


# ------------------------------------------------------------------ one point
def other_load(max_wait: float) -> float:
    """Wait (bounded) until the box is quiet; returns the busy % of the last second.

    The box is shared: another process using a core skews every figure of a point.
    """
    ncpu = os.cpu_count() or 1
    end = time.monotonic() + max_wait
    while True:
        i0, t0 = idle_seconds(), time.monotonic()
        time.sleep(1.0)
        dt = time.monotonic() - t0
        busy = 100 * (ncpu * dt - (idle_seconds() - i0)) / dt
        if busy < 15 or time.monotonic() >= end:
            return round(busy, 1)


def run_point(gen: Path, relay, streams: int, secs: float, warmup: float, quiet_wait: float) -> dict:
    calls = max(1, streams // 2)
    before = other_load(quiet_wait)
    try:
        rows = relay.start(calls)
        mapf = OUT / f"map-{relay.name}-{streams}.txt"
        mapf.write_text("".join(f"{side} {IP} {port}\n" for side, port in rows))
        res_f = OUT / f"rtpgen-{relay.name}-{streams}.json"
        res_f.unlink(missing_ok=True)
        p = subprocess.Popen([str(gen), "--map", str(mapf), "--ip", IP, "--porta", str(GEN_A),
                              "--portb", str(GEN_B), "--secs", str(secs), "--warmup", str(warmup),
                              "--json", str(res_f)], stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        marks = []
        while True:
            try:
                p.wait(0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            t = time.monotonic() - t0
            if warmup <= t <= secs:
                marks.append((t, idle_seconds(), cpu_ticks(relay.pid) if relay.pid else None,
                              task_seconds(), (cpu_ticks(p.pid) or 0) + kthread_ticks()))
            if t > secs + 30:
                p.kill()
                p.wait(5)
                raise RuntimeError("rtpgen overran its bound")
        res = json.loads(res_f.read_text())
    finally:
        relay.stop()
    res["relay"] = relay.name
    res["busy_before_pct"] = before
    if len(marks) >= 2:
        (ta, ia, ca, ka, ga), (tb, ib, cb, kb, gb) = marks[0], marks[-1]
        dt = tb - ta
        ncpu = os.cpu_count() or 1
        res["box_pct"] = round(100 * (ncpu * dt - (ib - ia)) / dt, 1)
        if ga is not None and gb is not None:
            # what other programs used during the window (all tasks but the relay, the
            # generator and kernel threads): it skews every figure of the point
            ours = (gb - ga) + ((cb - ca) if ca is not None and cb is not None else 0)
            res["others_pct"] = round(max(0.0, 100 * ((kb - ka) - ours / CLK) / dt), 1)
        if ca is not None and cb is not None:
            res["relay_cpu_pct"] = round(100 * (cb - ca) / CLK / dt, 1)
            if res["relay_cpu_pct"] > 0:
                res["pps_per_cpu_s"] = round(res["rx_pps"] / (res["relay_cpu_pct"] / 100))
    if relay.name.startswith("hpbx") and relay.final:
        res["relay_counted"] = relay.final.get("packets", 0)
    res["clean"] = (res["offered_pps"] >= 0.99 * streams * 50 and res["loss_pct"] < 0.1
                    and res["p99_us"] < 10000)
    return res


HEADER = ("relay", "streams", "offered/s", "relayed/s", "loss %", "p50 us", "p99 us", "relay CPU %",
          "pkts/CPU-s", "box %", "others %", "try", "clean")


def row(r: dict) -> tuple:
    return (r["relay"], r["streams"], round(r["offered_pps"]), round(r["rx_pps"]), f"{r['loss_pct']:.3f}",
            r["p50_us"], r["p99_us"], r.get("relay_cpu_pct", "-"), r.get("pps_per_cpu_s", "-"),
            r.get("box_pct", "-"), r.get("others_pct", "-"), r.get("attempt", 1), "yes" if r["clean"] else "NO")


def table(rows: list[tuple]) -> str:
    cells = [HEADER] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(c[i].rjust(widths[i]) for i in range(len(c))) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def median_point(rows: list[dict]) -> dict:
    """Per-field medians of the repetitions of one point (ratios use these)."""
    if len(rows) == 1:
        return rows[0]
    out = dict(rows[0])
    for k in ("pps_per_cpu_s", "p50_us", "p99_us"):
        vals = sorted(r[k] for r in rows if r.get(k) is not None)
        if vals:
            out[k] = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
    return out


def ratios(results: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["relay"], r["streams"]), []).append(r)
    by = {k: median_point(v) for k, v in groups.items()}
    out = []
    for n in sorted({r["streams"] for r in results}):
        h, e, d = by.get(("hpbx", n)), by.get(("rtpengine", n)), by.get(("direct", n))
        parts = [f"{n:>5} streams:"]
        if h and e and h.get("pps_per_cpu_s") and e.get("pps_per_cpu_s"):
            parts.append(f"pkts/CPU-s hpbx/rtpengine = {h['pps_per_cpu_s'] / e['pps_per_cpu_s']:.2f}x")
        if h and e and e["p99_us"]:
            parts.append(f"p99 hpbx/rtpengine = {h['p99_us'] / e['p99_us']:.2f}")
        if h and d:
            parts.append(f"hpbx adds p50 {h['p50_us'] - d['p50_us']:.0f} us, p99 {h['p99_us'] - d['p99_us']:.0f} us")
        if e and d:
            parts.append(f"rtpengine adds p50 {e['p50_us'] - d['p50_us']:.0f} us, p99 {e['p99_us'] - d['p99_us']:.0f} us")
        if len(parts) > 1:
            out.append("  ".join(parts))
    return out


def bench(streams: list[int], secs: float, kinds: list[str], workers: int, repeat: int = 1) -> list[dict]:
    gen = build_generator()
    if "rtpengine" in kinds and not shutil.which("rtpengine"):
        print("rtpengine not installed: skipping it")
        kinds = [k for k in kinds if k != "rtpengine"]
    warmup = min(2.0, secs / 3)
    quiet_wait = float(os.environ.get("RELAY_QUIET_WAIT", "30"))
    noise = float(os.environ.get("RELAY_NOISE", "10"))
    retries = int(os.environ.get("RELAY_RETRIES", "2"))
    results = []
    print(f"\nRTP relay bench: {secs:g} s per point (first {warmup:g} s warm-up), 172-byte RTP at 50 pps,"
          f" {os.cpu_count()} CPUs, kinds {kinds}, relay nice {NICE}", flush=True)
    for n, rep in [(n, rep) for n in streams for rep in range(repeat)]:
        for kind in kinds:
            # a point during which other programs used more than RELAY_NOISE % of a core is run
            # again (up to RELAY_RETRIES times) for every relay alike; the quietest try is kept
            tries = []
            for attempt in range(1, retries + 2):
                relay = {"direct": Direct, "hpbx": lambda: Hpbx(workers),
                         "hpbx-epoll": lambda: Hpbx(workers, "epoll"),
                         "rtpengine": lambda: RtpEngine(secs)}[kind]()
                r = run_point(gen, relay, n, secs, warmup, quiet_wait)
                r["attempt"] = attempt
                tries.append(r)
                if r.get("others_pct", 0) <= noise:
                    break
                print(f"  ({kind} {n}: other programs used {r.get('others_pct')} % of a core, again)",
                      flush=True)
            r = min(tries, key=lambda t: t.get("others_pct", 0))
            results.append(r)
            extra = f" (relay counted {r['relay_counted']})" if "relay_counted" in r else ""
            print("  " + " ".join(str(c) for c in row(r)) + extra, flush=True)
            time.sleep(0.5)
    print()
    print(table([row(r) for r in results]))
    print()
    for line in ratios(results):
        print(line)
    out = Path(os.environ.get("RELAY_OUT", OUT / "relay-results.jsonl"))
    with open(out, "a") as f:
        for r in results:
            f.write(json.dumps(dict(r, at=time.strftime("%Y-%m-%dT%H:%M:%S"))) + "\n")
    print(f"raw results appended to {out}")
    return results


def settings_from_env() -> tuple[list[int], float, list[str], int, int]:
    env = os.environ.get
    quick = env("HPBX_BENCH_QUICK") == "1"
    streams = [int(x) for x in env("RELAY_STREAMS", "100 1000" if quick else "100 500 1000 2000 3000").split()]
    secs = float(env("RELAY_SECS", "4" if quick else "8"))
    kinds = env("RELAY_KINDS", "direct hpbx rtpengine").split()
    repeat = int(env("RELAY_REPEAT", "1"))
    if secs <= 1 or secs > 60 or any(n < 2 or n > 3000 for n in streams) or not 1 <= repeat <= 5:
        raise SystemExit("RELAY_SECS must be 1-60, RELAY_STREAMS 2-3000, RELAY_REPEAT 1-5")
    return streams, secs, kinds, int(env("RELAY_WORKERS", "0")), repeat


# ------------------------------------------------------------------ the hpbx child process
def serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_relay.py serve")
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--io", default="auto")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from hpbx._fast.relay import Relay

    relay = Relay(IP, *HPBX_PORTS, workers=a.workers, nice=a.nice, io=a.io)
    relay.start()
    handles = []
    for _ in range(a.calls):
        h = relay.allocate()
        relay.set_peer(h, "a", IP, GEN_A)
        relay.set_peer(h, "b", IP, GEN_B)
        pa, pb = relay.ports(h)
        handles.append(h)
        print(f"A {pa}\nB {pb}")
    print(f"ready {os.getpid()} io {relay.io} threads {' '.join(map(str, relay.thread_ids()))}", flush=True)
    sys.stdin.read()  # the bench closes stdin when the point is over
    total = {"packets": 0, "lost": 0, "dropped_source": 0, "send_errors": 0}
    for h in handles:
        s = relay.stats(h)
        for leg in ("a", "b"):
            for k in total:
                total[k] += s[leg][k]
        relay.delete(h)
    total["pool_full"] = relay.free_pairs() == relay.total_pairs()
    relay.close()
    print(json.dumps(total), flush=True)
    return 0


try:
    import pytest

    _bound = pytest.mark.timeout(3600)  # 15 points of ~10-40 s each outlast the suite's 300 s
except ImportError:  # run as a script without pytest installed
    def _bound(f):
        return f


@_bound
def test_relay_bench():
    results = bench(*settings_from_env())
    hpbx = [r for r in results if r["relay"].startswith("hpbx")]
    # the bench checks that media really went through the relay, never how fast
    assert all(r["received"] > 0 for r in hpbx)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2:]))
    bench(*settings_from_env())
