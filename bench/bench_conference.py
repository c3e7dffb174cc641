"""Conference mixing bench (issue 12): rooms of 3, 10 and 50 participants in hpbx's relay.

For each room size R and participant count N: a child process runs the media engine (hpbx's
relay, one worker per core) with N sessions whose leg "a" is terminated at the media endpoint
and joined to a room of R (``room_create``/``room_join``: each member hears the loudest three
others, never itself). ``bench/rtp/confpeer.c`` plays every participant on one socket: 50 pps of
PCMA (a tone per participant) to each session, and it takes every mix coming back, told apart by
the session's source port. In the measuring window it counts, per participant, missed 20 ms slots
(a gap of 30 ms or more) and sequence gaps; a point is clean when no participant misses a slot
or loses a frame. Printed: the engine's CPU, mixed participants per CPU-second, and the same
for the anchor measured in the same run: the same N streams relayed by the same relay (a
relayed stream costs one received and one sent packet, like a mixed leg), so the ratio is what
mixing costs above packet I/O. Every point runs (a point that is not clean is marked): on a
shared box another process taking the CPU shows up as missed slots, so the load average is
printed beside each point. The anchor's gaps follow confpeer's own pacing (a relay forwards when
a packet arrives); the mixer's follow the engine's 20 ms clock.

    .venv/bin/python bench/bench_conference.py        (or pytest -q -s bench/bench_conference.py)

Env: CONF_SIZES ("3 10 50"), CONF_COUNTS ("300 1000 2000"), CONF_SECS (8). Figures on a shared
box are noisy (other engineers' tests run on the same two cores).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from bench_relay import CLK, cpu_ticks  # noqa: E402

IP = "127.0.0.1"
PEER = 39200
PORTS = (41000, 49999)
OUT = HERE / "out"


# ------------------------------------------------------------------ child: the engine
def child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--room", type=int, required=True, help="room size; 0 = relay the streams")
    a = ap.parse_args(argv)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 4 sockets per session
    from hpbx.media.engine import MediaEngine

    async def run() -> None:
        engine = MediaEngine(IP, *PORTS, media_timeout=600)
        engine.start()
        keys, rooms = [], []
        for i in range(a.n):
            key = f"p{i}"
            ms = engine.allocate(key)
            engine.offer(key, IP, PEER)
            if a.room:
                if i % a.room == 0:
                    rooms.append(engine.room_create())
                engine.terminate(key, "a", codec="PCMA", pt=8, dtmf_pt=None)
                engine.room_join(rooms[-1], key, "a")
            else:
                engine.answer(key, IP, PEER)
            print(ms.port_a, flush=True)
            keys.append(key)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(json.dumps(engine.media_stats(), default=str), flush=True)
        for key in keys:
            engine.delete(key)
        for room in rooms:
            engine.room_delete(room)
        engine.close()

    asyncio.run(run())
    return 0


def build_peer() -> Path:
    OUT.mkdir(exist_ok=True)
    exe = OUT / "confpeer"
    src = HERE / "rtp" / "confpeer.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-pthread", "-o", str(exe), str(src), "-lm"], check=True,
                       timeout=120)
    return exe


def point(peer: Path, n: int, room: int, secs: float) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "child", "--n", str(n), "--room", str(room)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    ports = []
    while True:
        line = proc.stdout.readline()
        if not line or line.startswith("ready"):
            break
        ports.append(int(line))
    mapf = OUT / f"conf-map-{n}-{room}.txt"
    mapf.write_text("".join(f"{p}\n" for p in ports))
    warmup = 2.0
    g = subprocess.Popen([str(peer), "--port", str(PEER), "--map", str(mapf), "--secs", str(secs),
                          "--warmup", str(warmup)], stdout=subprocess.PIPE, text=True)
    time.sleep(warmup + 0.5)
    c0, t0 = cpu_ticks(proc.pid), time.monotonic()
    time.sleep(max(1.0, secs - 1.0))
    c1, t1 = cpu_ticks(proc.pid), time.monotonic()
    out, _ = g.communicate(timeout=secs + warmup + 60)
    stats_line, _ = proc.communicate(input="", timeout=120)
    res = json.loads(out.strip().splitlines()[-1])
    res.update(n=n, room=room, cpu=(c1 - c0) / CLK / (t1 - t0))
    try:
        res["engine"] = json.loads(stats_line.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res["engine"] = {}
    res["clean"] = (res["missed_slots"] == 0 and res["seq_gaps"] == 0 and res["streams"] == n
                    and res["send_fail"] == 0)
    return res


def line(r: dict) -> str:
    what = f"rooms of {r['room']:>2}" if r["room"] else "relay    "
    per = r["n"] / r["cpu"] if r["cpu"] > 0 else float("inf")
    return (f"  {what}: {r['n']:>5} {'participants' if r['room'] else 'streams     '} CPU {100 * r['cpu']:5.1f} % "
            f"= {per:7.0f}/CPU-s; out {r['packets']}/{r['expected']:.0f} pkts, missed slots {r['missed_slots']}, "
            f"seq gaps {r['seq_gaps']}, streams {r['streams']}/{r['n']}, max gap {r['max_gap_ms']:.1f} ms"
            f"{'' if r['clean'] else '  <- NOT CLEAN'}")


def main() -> int:
    sizes = [int(x) for x in os.environ.get("CONF_SIZES", "3 10 50").split()]
    counts = [int(x) for x in os.environ.get("CONF_COUNTS", "300 1000 2000").split()]
    secs = float(os.environ.get("CONF_SECS", "8"))
    peer = build_peer()
    print(f"conference mixing bench on {os.cpu_count()} cores, 50 pps per participant, {secs:.0f} s "
          "windows (shared box: figures are noisy)", flush=True)
    for room in sizes:
        for n in counts:
            n = n - n % room or room
            mix = point(peer, n, room, secs)
            relay = point(peer, n, 0, secs)
            print(line(mix), flush=True)
            print(line(relay), flush=True)
            ratio = mix["cpu"] / relay["cpu"] if relay["cpu"] > 0 else float("nan")
            print(f"  -> a mixed participant costs {ratio:.2f}x a relayed stream (target <= 1.3x); "
                  f"load average {os.getloadavg()[0]:.1f}; "
                  f"engine: late ticks {mix['engine'].get('late_ticks', '?')}, missed slots "
                  f"{mix['engine'].get('missed_slots', '?')}, send jitter p99 "
                  f"{mix['engine'].get('send_jitter_p99_ms', '?')} ms", flush=True)
    return 0


def test_conference_bench():
    assert main() == 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
