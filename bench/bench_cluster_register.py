"""REGISTER with digest: the highest clean rate of one hpbx node with its bindings in Redis
(and provisioning in PostgreSQL, both started here) beside the same node on the embedded
SQLite store, in one run, with the anchor's step-up driver (see bench_register.py). What the
shared engines cost a node: the 200 of every REGISTER waits for its batch's MULTI/EXEC.

    python bench/bench_cluster_register.py     # RATES="2000 4000 8000" STEP_SECS=5 for a quick one

Redis runs with AOF and ``appendfsync always`` (an acknowledged binding survives a Redis crash
too) and ``everysec`` (up to a second of them may not).

Prints  sqlite_register_max_rps=N redis-always_register_max_rps=M ratio=M/N (and everysec)
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "cluster"))
sys.path.insert(0, str(REPO / "tests" / "sip"))
sys.path.insert(0, str(HERE))

from bench_register import ANCHORS, NUSERS, USER_FIRST, print_steps, step_up  # noqa: E402
from harness import HpbxServer  # noqa: E402


def measure(name: str, work: Path, users, store_extra: str = "") -> int:
    srv = HpbxServer(work / name, users=users, log_level="warning",
                     sip_extra={"t1_ms": 500, "t2_ms": 4000, "t4_ms": 5000, "min_expires": 60})
    if store_extra:
        srv.config.write_text(srv.config.read_text().replace("[store]\n", "[store]\n" + store_extra, 1))
    t0 = time.monotonic()
    srv.start(timeout=180)
    print(f"{name}: ready on {srv.sip_target} with {NUSERS} users ({time.monotonic() - t0:.1f} s)")
    try:
        rate, text = step_up(srv.sip_target, srv.proc.pid, work / f"out-{name}")
        print_steps(name, text)
    finally:
        srv.stop(timeout=60)
    return rate


def run() -> dict:
    if not (ANCHORS / "bench_sip.sh").exists():
        raise RuntimeError(f"anchor driver not found at {ANCHORS} (../shared/anchors is absent)")
    if not shutil.which("sipp"):
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    from engines import Postgres, Redis
    from nodes import cluster_store

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-register-"))
    users = [(str(u), f"pw{u}") for u in range(USER_FIRST, USER_FIRST + NUSERS)]
    results = {"sqlite": measure("sqlite", work, users)}
    with Postgres() as pg:
        for fsync in ("always", "everysec"):
            with Redis(work / f"redis-{fsync}", appendfsync=fsync) as redis:
                results[f"redis-{fsync}"] = measure(f"redis-{fsync}", work, users,
                                                    cluster_store(pg.dsn, redis.url, "bench"))
    sq = results["sqlite"]
    print(f"sqlite_register_max_rps={sq} " + " ".join(
        f"{k}_register_max_rps={v} ratio={v / sq if sq else 0:.2f}" for k, v in results.items() if k != "sqlite"))
    return results


def test_cluster_register_rate():
    import pytest

    try:
        print(run())
    except RuntimeError as exc:
        pytest.skip(str(exc))


if __name__ == "__main__":
    run()
