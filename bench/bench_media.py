"""Media engine bench: simultaneous prompt players, hpbx against rtpengine `play media`, same run.

For every player count N and both servers:
  1. start the server fresh: hpbx in a child process of its own (``bench_media.py serve``: a
     Relay with one worker per core, its default packet loop, and the media engine), or
     rtpengine userspace (``--table=-1``, ng control over UDP on loopback, Debian's build with
     transcoding);
  2. set up N calls whose leg towards the "phone" is the sink's socket, and start a looping
     prompt on each: hpbx ``play(loop=True)`` of one shared prompt; rtpengine ``play media``
     of the same audio as a WAV file (``repeat-times``);
  3. ``bench/rtp/rtpsink.c`` (built with cc into bench/out/) receives every stream on one
     socket with kernel receive timestamps and measures, per stream, the gap between
     packets: deviation from 20 ms (p50/p99/max), missed slots (a gap >= 30 ms), bursts
     (< 10 ms), sequence gaps;
  4. the server process's CPU (utime + stime of all its threads, /proc/PID/stat) is sampled
     over the same steady window after the warm-up.

Printed per point: packets/s received, server CPU %, players per CPU-second (streams delivered,
i.e. packets/s / 50, divided by the share of one core used), clean (no missed slot, deviation p99 < 2 ms), and at the end the
ratio hpbx/rtpengine. Then hpbx alone: the in-band DTMF detector's cost per stream-second
(1,000 terminated legs of one process receiving 50 packets/s, windows alternating between
the detector off and on, the smallest of each kept; thread CPU from schedstat in ns), and the memory of
one player and one recorder (RSS of the child before and after 1,000 of them).

    .venv/bin/python -m pytest -q -s bench/bench_media.py
    .venv/bin/python bench/bench_media.py

Env: MEDIA_PLAYERS ("500 1000 2000"), MEDIA_SECS (10: the window, after setup and 2 s), MEDIA_KINDS
("hpbx rtpengine"; "hpbx-epoll" adds hpbx's epoll loop), MEDIA_NICE (0: nice value of both servers), HPBX_BENCH_QUICK=1 (200 and
1000 players, 6 s).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relay import CLK, Ng, build_generator, cpu_ticks, task_seconds  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
IP = "127.0.0.1"
SINK_PORT = 38000
GEN_A, GEN_B = 39000, 39002
HPBX_PORTS = (40000, 49999)
RTPE_PORTS = (50000, 59999)
NG_PORT = 2298
NICE = int(os.environ.get("MEDIA_NICE", "0"))
PROMPT_SECS = 10


def prompt_pcm() -> bytes:
    """10 s of a two-tone melody (8 kHz s16le): the same audio for both servers."""
    import numpy as np

    t = np.arange(PROMPT_SECS * 8000) / 8000.0
    f = np.where((t * 2).astype(int) % 2 == 0, 440.0, 660.0)
    return (6000 * np.sin(2 * np.pi * f * t)).astype("<i2").tobytes()


def prompt_wav() -> Path:
    OUT.mkdir(exist_ok=True)
    p = OUT / "bench-prompt.wav"
    if not p.exists():
        with wave.open(str(p), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(prompt_pcm())
    return p


def build_sink() -> Path:
    OUT.mkdir(exist_ok=True)
    exe = OUT / "rtpsink"
    src = HERE / "rtp" / "rtpsink.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True, timeout=120)
    return exe


def sdp(port: int, sess: int) -> str:
    return (f"v=0\r\no=- {sess} 1 IN IP4 {IP}\r\ns=-\r\nc=IN IP4 {IP}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n")


# ------------------------------------------------------------------ servers under test
class HpbxPlayers:
    def __init__(self, io: str = "auto"):
        self.name = "hpbx" if io == "auto" else f"hpbx-{io}"
        self.io = io
        self.proc = None
        self.pid = None

    def start(self, n: int) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--players", str(n),
                "--nice", str(NICE), "--io", self.io]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"hpbx child not ready: {line!r}")
        self.info = line.split(maxsplit=1)[1].strip()

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.communicate(input="", timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class RtpEnginePlayers:
    name = "rtpengine"

    def __init__(self, secs: float):
        self.secs = secs
        self.proc = None
        self.pid = None

    def start(self, n: int) -> None:
        OUT.mkdir(exist_ok=True)
        wav = prompt_wav()
        self.log = open(OUT / "rtpengine-media.log", "w")
        argv = (["nice", "-n", str(NICE)] if NICE else []) + [
            "rtpengine", "--config-file=none", "--foreground", "--log-stderr", "--log-level=4",
            "--table=-1", f"--interface={IP}", f"--listen-ng={IP}:{NG_PORT}",
            f"--port-min={RTPE_PORTS[0]}", f"--port-max={RTPE_PORTS[1]}",
            f"--timeout={int(self.secs) + 120}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        ng = Ng(NG_PORT)
        try:
            deadline = time.monotonic() + 20
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rtpengine exited ({self.proc.returncode}), see {self.log.name}")
                try:
                    ng.call({"command": "ping"}, tries=1)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
            repeat = int(self.secs / PROMPT_SECS) + 3
            for i in range(n):
                cid = f"media-{i}"
                ng.call({"command": "offer", "call-id": cid, "from-tag": "a", "sdp": sdp(SINK_PORT, i),
                         "replace": ["origin", "session-connection"]})
                ng.call({"command": "answer", "call-id": cid, "from-tag": "a", "to-tag": "b",
                         "sdp": sdp(GEN_B, i), "replace": ["origin", "session-connection"]})
                ng.call({"command": "play media", "call-id": cid, "from-tag": "a", "file": str(wav),
                         "repeat-times": repeat})
        finally:
            ng.close()

    def stats(self) -> dict:
        return {}

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        self.log.close()


# ------------------------------------------------------------------ one point
def run_point(sink: Path, server, n: int, secs: float) -> dict:
    """The sink listens first; every player is started; then the window of ``secs`` begins."""
    r = {"server": server.name, "players": n}
    sinkp = subprocess.Popen([str(sink), "--port", str(SINK_PORT), "--secs", str(secs), "--go"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sinkp.stdout.readline().startswith("ready")
        t_setup = time.monotonic()
        server.start(n)
        r["setup_s"] = round(time.monotonic() - t_setup, 1)
        time.sleep(2.0)  # every stream in its stride
        if isinstance(server, HpbxPlayers):
            server.stats()  # resets the engine's lateness histogram for the window
        c0, t0, a0 = cpu_ticks(server.pid), time.monotonic(), task_seconds()
        sinkp.stdin.write("go\n")
        sinkp.stdin.flush()
        out, _ = sinkp.communicate(timeout=secs + 60)
        c1, t1, a1 = cpu_ticks(server.pid), time.monotonic(), task_seconds()
        if isinstance(server, HpbxPlayers):
            st = server.stats()
            r["engine_p99_ms"] = st.get("send_jitter_p99_ms")
            r["engine_late_ticks"] = st.get("late_ticks")
        res = json.loads(out.strip().splitlines()[-1])
        cpu = (c1 - c0) / CLK / (t1 - t0)
        r.update(res)
        r["cpu_pct"] = round(100 * cpu, 1)
        r["others_pct"] = round(100 * max(0.0, (a1 - a0) / (t1 - t0) - cpu), 1)
        r["pps"] = round(res["window_packets"] / secs)
        # delivered streams (packets / 50), so a server that falls behind is not credited
        r["players_per_cpu_s"] = round(r["pps"] / 50 / cpu) if cpu > 0 else 0
        r["clean"] = (res["streams"] >= n and res["missed_slots"] == 0 and res["dev_p99_ms"] < 2.0)
    finally:
        if sinkp.poll() is None:
            sinkp.kill()
            sinkp.wait()
        server.stop()
    return r


def row(r: dict) -> str:
    return (f"{r['server']:<10} {r['players']:>6} {r['pps']:>8} {r['cpu_pct']:>6} {r['players_per_cpu_s']:>9} "
            f"{r['streams']:>7} {r['dev_p50_ms']:>7} {r['dev_p99_ms']:>7} {r['dev_max_ms']:>7} "
            f"{r['missed_slots']:>7} {r['bursts']:>6} {str(r['clean']):>6} {r['others_pct']:>7}")


HEADER = (f"{'server':<10} {'players':>6} {'pkts/s':>8} {'cpu%':>6} {'plyr/CPUs':>9} {'streams':>7} "
          f"{'dev p50':>7} {'dev p99':>7} {'dev max':>7} {'missed':>7} {'burst':>6} {'clean':>6} {'others%':>7}")


# ------------------------------------------------------------------ hpbx alone: DTMF cost, memory
def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (schedstat: finer than the 10 ms clock ticks
    of /proc/PID/stat, which cannot resolve a few ms of detector work over a window)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def dtmf_cost(gen: Path, n: int = 1000, rounds: int = 4, window: float = 2.0) -> tuple[list, list]:
    """CPU share of one relay process whose ``n`` terminated legs receive 50 pkt/s each (one
    steady generator), in windows alternating between the detector off and on (the child
    re-terminates every leg with ``inband`` switched; no restart, no new sockets): the
    windows' shares of a core, (off, on)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "listen", "--calls", str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    rows = []
    while True:
        line = proc.stdout.readline()
        if not line or line.startswith("ready"):
            break
        side, port = line.split()
        rows.append((side, int(port)))
    mapf = OUT / "media-map.txt"
    mapf.write_text("".join(f"{s} {IP} {p}\n" for s, p in rows))
    secs = 3 + 2 * rounds * (window + 0.5)
    g = subprocess.Popen([str(gen), "--map", str(mapf), "--porta", str(GEN_A), "--portb", str(GEN_B),
                          "--pps", "50", "--payload", "160", "--secs", str(secs), "--warmup", "2"],
                         stdout=subprocess.PIPE, text=True)
    off, on = [], []
    try:
        time.sleep(2.5)
        for _ in range(rounds):
            for inband, out in ((False, off), (True, on)):
                proc.stdin.write(f"inband {int(inband)}\n")
                proc.stdin.flush()
                assert proc.stdout.readline().startswith("ok")
                time.sleep(0.5)
                c0, t0 = cpu_ns(proc.pid), time.monotonic()
                time.sleep(window)
                c1, t1 = cpu_ns(proc.pid), time.monotonic()
                out.append((c1 - c0) / 1e9 / (t1 - t0))
    finally:
        g.communicate(timeout=secs + 30)
        proc.communicate(input="", timeout=30)
    return off, on


def extras(gen: Path, secs: float) -> list[str]:
    lines = []
    n = 1000
    off, on = dtmf_cost(gen, n)
    # the smallest window of each kind: the box is shared, other programs only ever add
    per = (min(on) - min(off)) / n
    lines.append(f"in-band DTMF detection: {n} legs at 50 pkt/s, {len(off)} windows each, alternated in "
                 f"one process: CPU {100 * min(off):.2f} % without, {100 * min(on):.2f} % with the "
                 f"detector (smallest window; all: {' '.join(f'{100 * x:.2f}' for x in off)} / "
                 f"{' '.join(f'{100 * x:.2f}' for x in on)}) -> {1e6 * per:.1f} us CPU per "
                 f"stream-second, decoding to PCM included ({100 * per * 1000:.2f} % of a core per "
                 f"1,000 streams)")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "memory"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    lines.extend(out.stdout.strip().splitlines() or [f"memory: failed: {out.stderr.strip()[-300:]}"])
    return lines


# ------------------------------------------------------------------ driver
def bench(players: list[int], secs: float, kinds: list[str]) -> list[dict]:
    sink = build_sink()
    gen = build_generator()
    if any(k not in ("hpbx", "hpbx-epoll", "rtpengine") for k in kinds):
        raise SystemExit("MEDIA_KINDS: hpbx, hpbx-epoll, rtpengine")
    if "rtpengine" in kinds and not shutil.which("rtpengine"):
        print("rtpengine not installed: its anchor figures are skipped")
        kinds = [k for k in kinds if k != "rtpengine"]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"\nMedia bench: prompt players at 50 pkt/s (PCMA, 20 ms), "
          f"window {secs:g} s after every player started, {os.cpu_count()} CPUs, load average {' '.join(load)}, server nice {NICE}", flush=True)
    print(HEADER, flush=True)
    results = []
    for n in players:
        for kind in kinds:
            server = (RtpEnginePlayers(secs) if kind == "rtpengine"
                      else HpbxPlayers("epoll" if kind == "hpbx-epoll" else "auto"))
            try:
                r = run_point(sink, server, n, secs)
            except Exception as e:  # one failing point must not hide the others' figures
                print(f"{kind} {n}: failed: {e}", flush=True)
                continue
            results.append(r)
            extra = (f"  engine p99 {r['engine_p99_ms']} ms, late ticks {r['engine_late_ticks']}"
                     if kind.startswith("hpbx") else "")
            print(row(r) + extra, flush=True)
            time.sleep(1)
    print()
    for n in players:
        h = next((r for r in results if r["server"] == "hpbx" and r["players"] == n), None)
        e = next((r for r in results if r["server"] == "rtpengine" and r["players"] == n), None)
        if h and e and e["players_per_cpu_s"]:
            print(f"{n} players: players per CPU-second hpbx/rtpengine = "
                  f"{h['players_per_cpu_s'] / e['players_per_cpu_s']:.1f}x; clean hpbx {h['clean']}, "
                  f"rtpengine {e['clean']}")
    for line in extras(gen, max(6.0, min(secs, 8.0))):
        print(line)
    with open(OUT / "media-results.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps(dict(r, at=time.strftime("%Y-%m-%dT%H:%M:%S"), load=load)) + "\n")
    return results


def settings_from_env() -> tuple[list[int], float, list[str]]:
    env = os.environ.get
    quick = env("HPBX_BENCH_QUICK") == "1"
    players = [int(x) for x in env("MEDIA_PLAYERS", "200 1000" if quick else "500 1000 2000").split()]
    secs = float(env("MEDIA_SECS", "6" if quick else "10"))
    kinds = env("MEDIA_KINDS", "hpbx rtpengine").split()
    if secs < 4 or secs > 60 or any(n < 1 or n > 4000 for n in players):
        raise SystemExit("MEDIA_SECS must be 4-60, MEDIA_PLAYERS 1-4000")
    return players, secs, kinds


# ------------------------------------------------------------------ hpbx child processes
def _engine(nice: int = 0, io: str = "auto"):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))  # 4 sockets + 1 file per call
    sys.path.insert(0, str(ROOT))
    from hpbx._fast.relay import MediaCore, Prompt, Relay

    relay = Relay(IP, *HPBX_PORTS, nice=nice, io=io)
    relay.start()
    return relay, MediaCore(relay), Prompt


def serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_media.py serve")
    ap.add_argument("--players", type=int, required=True)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--io", default="auto")
    a = ap.parse_args(argv)
    relay, media, Prompt = _engine(a.nice, a.io)
    prompt = Prompt(prompt_pcm())
    for i in range(a.players):
        h = relay.allocate()
        relay.set_peer(h, "a", IP, SINK_PORT)
        media.terminate(h, "a", "PCMA", 8, 20, 101)
        media.play(h, "a", [prompt], loop=True, start_samples=(i * 160) % (PROMPT_SECS * 8000))
    print(f"ready io {relay.io}", flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(media.stats()), flush=True)
            media.stats_reset()
    relay.close()
    return 0


def listen(argv: list[str]) -> int:
    """Terminated legs that only receive (for the in-band detector's cost); stdin "inband 0|1"
    switches the detector on every leg."""
    ap = argparse.ArgumentParser(prog="bench_media.py listen")
    ap.add_argument("--calls", type=int, required=True)
    a = ap.parse_args(argv)
    relay, media, _ = _engine()
    handles = []
    for _ in range(a.calls):
        h = relay.allocate()
        relay.set_peer(h, "a", IP, GEN_A)
        relay.set_peer(h, "b", IP, GEN_B)
        media.terminate(h, "a", "PCMA", 8, 20, -1, False)
        handles.append(h)
        pa, _ = relay.ports(h)
        print(f"A {pa}")
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["inband"]:
            for h in handles:
                media.terminate(h, "a", "PCMA", 8, 20, -1, words[1] == "1")
            print("ok", flush=True)
    relay.close()
    return 0


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(argv: list[str]) -> int:
    """RSS per player and per recorder beside the sessions' own memory; the prompt held once."""
    relay, media, Prompt = _engine()
    n = 1000
    prompt = Prompt(prompt_pcm())
    handles = [relay.allocate() for _ in range(n)]
    for h in handles:
        relay.set_peer(h, "a", IP, SINK_PORT + 1)  # nobody listens: the sends are dropped
    time.sleep(0.2)
    r0 = _rss_kb()
    for h in handles:
        media.terminate(h, "a", "PCMA", 8, 20, 101)
        media.play(h, "a", [prompt], loop=True)
    time.sleep(0.5)
    r1 = _rss_kb()
    for h in handles:
        fd = os.open("/dev/null", os.O_WRONLY)
        media.record(h, "a", fd, 3600 * 1000)
    time.sleep(0.5)
    r2 = _rss_kb()
    print(f"memory: {n} players of one {PROMPT_SECS} s prompt (held once: "
          f"{2 * PROMPT_SECS * 8000 // 1024} KB for PCMA+PCMU): {1024 * (r1 - r0) / n:.0f} bytes per player "
          f"(endpoint included) beside the session; {1024 * (r2 - r1) / n:.0f} bytes per recorder 0.5 s "
          f"into a recording (reorder buffer and the 1 s write buffer being filled)")
    relay.close()
    return 0


try:
    import pytest

    _bound = pytest.mark.timeout(3600)
except ImportError:
    def _bound(f):
        return f


@_bound
def test_media_bench():
    results = bench(*settings_from_env())
    # the bench checks that players really played, never how fast
    assert all(r["streams"] > 0 for r in results if r["server"] == "hpbx")


if __name__ == "__main__":
    cmds = {"serve": serve, "listen": listen, "memory": memory}
    if len(sys.argv) > 1 and sys.argv[1] in cmds:
        sys.exit(cmds[sys.argv[1]](sys.argv[2:]))
    bench(*settings_from_env())
