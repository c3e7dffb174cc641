"""Soak (issue 19): forking calls at a steady rate for a long time, registrations refreshing
beside them, on hpbx with ``[server] workers``; prints failed calls, RSS over time (growth after
the warm-up) and the open fds and relay port pairs at the start and at the end.

The calls are bench_calls.py's (trunk -> number -> two devices, one answers, one is cancelled,
500 ms after the ACK); the registrations are ``SOAK_USERS`` users re-registering with digest
(the anchor's reg_auth.xml) so that each refreshes every ``SOAK_REFRESH`` seconds.

    SOAK_SECS=1800 SOAK_RATE=750 SOAK_WORKERS=2 .venv/bin/python bench/bench_soak.py

Env: SOAK_SECS (1800), SOAK_RATE (750 cps: half the highest clean rate measured by
bench_calls.py), SOAK_WORKERS (2), SOAK_USERS (1000), SOAK_REFRESH (60 s), SOAK_WARMUP (300 s:
the RSS baseline is taken then), SOAK_SAMPLE (30 s). Bounded: SIPp's -m and -timeout, hard kills.
Figures only.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_calls as bc  # noqa: E402

SECS = float(os.environ.get("SOAK_SECS", "1800"))
RATE = int(os.environ.get("SOAK_RATE", "750"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "2"))
USERS = int(os.environ.get("SOAK_USERS", "1000"))
REFRESH = float(os.environ.get("SOAK_REFRESH", "60"))
WARMUP = float(os.environ.get("SOAK_WARMUP", "300"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "30"))
REG_PORT = 5493


class SoakHpbx(bc.Hpbx):
    """bench_calls' hpbx with ``USERS`` more users to keep registered."""

    def start(self) -> None:
        extra = "".join(bc.user(f"soak{i}", f"6{i:04d}", password=f"soak-pw-{i}") for i in range(USERS))
        orig = bc.number

        def number(*a, **kw):  # the tenant's users go in with the number (same TOML)
            return orig(*a, **kw) + extra

        bc.number = number
        try:
            super().start()
        finally:
            bc.number = orig


def fds(pids) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def sample(server) -> dict:
    pids = server.pids()
    w = server.admin("stats.get", layer="workers")["workers"]["workers"] if WORKERS > 1 else \
        [server.admin("stats.get", layer="calls")["calls"]]
    return {"t": time.monotonic(), "rss_kb": sum(bc.rss_kb(p) for p in pids), "fds": fds(pids),
            "calls": sum(x["calls_active"] for x in w),
            "pairs_used": sum(x.get("media_pairs_used", 0) for x in w),
            "bindings": max(x.get("bindings", 0) for x in w) if WORKERS > 1 else None}


def main() -> dict:
    bc.WORKERS = WORKERS
    workdir = bc.OUT / "soak"
    server = SoakHpbx()
    print(f"soak: {SECS:.0f} s at {RATE} cps, {WORKERS} workers, {USERS} users refreshing every "
          f"{REFRESH:.0f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
    server.start()
    devices, procs = (), []
    try:
        bc.register_devices(server, workdir)
        devices = bc.start_devices(server, workdir, SECS + 120)
        time.sleep(2)
        first = sample(server)
        print(f"  start: {first}", flush=True)
        reg_rate = USERS / REFRESH
        regs = bc.sipp(bc.ANCHOR_SIPP / "reg_auth.xml", f"{bc.IP}:{server.port}", REG_PORT, workdir,
                       calls=int(reg_rate * SECS), rate=reg_rate, timeout=SECS + 60,
                       inf=[(f"soak{i}", f"soak-pw-{i}") for i in range(USERS)])
        calls = bc.sipp(bc.CALLER, f"{bc.IP}:{server.port}", bc.TRUNK_PORT, workdir,
                        calls=int(RATE * SECS), rate=RATE, service=server.service,
                        timeout=SECS + 60, inf=[("0311112222",)], media_port=17200)
        procs = [regs, calls]
        t0 = time.monotonic()
        base = None
        samples = []
        while calls.poll() is None and time.monotonic() - t0 < SECS + 90:
            time.sleep(SAMPLE)
            s = sample(server)
            samples.append(s)
            if base is None and s["t"] - t0 >= WARMUP:
                base = s
            ok, failed = bc.counts(calls.stat)
            print(f"  {s['t'] - t0:6.0f} s: calls ok {ok} failed {failed}, active {s['calls']}, "
                  f"RSS {s['rss_kb'] / 1024:.1f} MiB, fds {s['fds']}, pairs {s['pairs_used']}, "
                  f"bindings {s['bindings']}, load {os.getloadavg()[0]:.2f}", flush=True)
        ok, failed = bc.finish(calls, 120)
        rok, rfailed = bc.finish(regs, 120)
        time.sleep(3)
        last = sample(server)
    finally:
        for p in list(procs) + list(devices):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        server.stop()
    base = base or (samples[0] if samples else first)
    peak = max(s["rss_kb"] for s in samples) if samples else last["rss_kb"]
    growth = 100.0 * (peak - base["rss_kb"]) / base["rss_kb"]
    print(f"\nsoak result: calls ok {ok}, failed {failed} (of {int(RATE * SECS)}); REGISTER ok {rok}, "
          f"failed {rfailed}")
    print(f"  RSS after warm-up {base['rss_kb'] / 1024:.1f} MiB, highest later "
          f"{peak / 1024:.1f} MiB: growth {growth:.1f} % (target < 5 %)")
    print(f"  fds: start {first['fds']}, end {last['fds']}; relay pairs used: start "
          f"{first['pairs_used']}, end {last['pairs_used']}; active calls at the end {last['calls']}")
    print(f"  load average at the end: {os.getloadavg()[0]:.2f} (2 shared cores)")
    return {"ok": ok, "failed": failed, "growth_pct": growth, "first": first, "last": last}


def test_soak():
    import shutil

    import pytest
    if not shutil.which("sipp"):
        pytest.skip("sipp is not installed (sip-tester)")
    main()


if __name__ == "__main__":
    main()
