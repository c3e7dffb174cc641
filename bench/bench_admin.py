"""Admin socket rates with 100,000 users in the store: user.create and registration.list.

  1. fill a fresh store offline: ADMIN_USERS users (100,000) in tenants of ADMIN_TENANT_SIZE
     (1,000) through ``Provisioning.import_tenant``, and one registration per user written to
     the registrations table exactly as the registrar stores it;
  2. start the real server on it (tests/harness.py ``HpbxServer``): it restores the bindings;
  3. over one admin connection, sequentially (each bounded by count and ADMIN_SECS seconds):
     user.create of new users; registration.list user=X (one user's devices);
     registration.list limit=100 (a page); registration.list of everything (100,000 rows).

Printed: calls/s, latency p50/p99 and answer size. Figures only; nothing passes or fails on time.

    .venv/bin/python -m pytest -q -s bench/bench_admin.py
    .venv/bin/python bench/bench_admin.py

Env: ADMIN_USERS (100000), ADMIN_TENANT_SIZE (1000), ADMIN_CREATES (2000), ADMIN_SECS (20 per method).
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import HpbxServer  # noqa: E402

from hpbx.admin.client import AdminClient  # noqa: E402
from hpbx.pbx.provisioning import Provisioning  # noqa: E402
from hpbx.store.registrations import Binding, RegistrationStore  # noqa: E402
from hpbx.store.sqlite import Store  # noqa: E402

USERS = int(os.environ.get("ADMIN_USERS", "100000"))
TENANT_SIZE = int(os.environ.get("ADMIN_TENANT_SIZE", "1000"))
SECS = float(os.environ.get("ADMIN_SECS", "20"))
CREATES = int(os.environ.get("ADMIN_CREATES", "2000"))


def fill_store(db: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    prov = Provisioning(Store(db))
    for start in range(0, USERS, TENANT_SIZE):
        t = start // TENANT_SIZE
        lines = [f'[tenant]\nname = "t{t:04d}"\n']
        for i in range(start, min(USERS, start + TENANT_SIZE)):
            lines.append(f'[[users]]\nusername = "u{i:06d}"\nsip_password = "pw-{i:06d}"\n'
                         f'internal_number = "{1000 + i - start}"\n')
        prov.import_tenant("\n".join(lines))
    prov.store.close()
    t_users = time.perf_counter() - t0
    t0 = time.perf_counter()
    regs = RegistrationStore(db)
    now = time.time()
    regs.write_batch([Binding(f"u{i:06d}", f"sip:u{i:06d}@127.0.0.1:{20000 + i % 40000}", f"t{i // TENANT_SIZE:04d}",
                              None, None, None, now + 3500, now, "127.0.0.1", 20000 + i % 40000, "udp", 0,
                              "bench/1.0", None, f"cid{i}", 1, i % 10 == 0)
                      for i in range(USERS)], [])
    regs.close()
    return t_users, time.perf_counter() - t0


def measure(client: AdminClient, name: str, make_params, max_calls: int) -> dict:
    lat = []
    size = 0
    deadline = time.monotonic() + SECS
    t0 = time.perf_counter()
    for n in range(max_calls):
        params = make_params(n)
        t = time.perf_counter()
        client.send_line(client_line(name, params, n))
        line = client.read_line()
        lat.append(time.perf_counter() - t)
        size = len(line)
        if b'"error"' in line[:64]:
            raise RuntimeError(f"{name} {params}: {line[:300]!r}")
        if time.monotonic() > deadline:
            break
    wall = time.perf_counter() - t0
    lat.sort()
    return {"calls": len(lat), "rate": len(lat) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], "answer_bytes": size}


def client_line(method: str, params: dict, n: int) -> bytes:
    from hpbx.admin.protocol import encode

    return encode({"jsonrpc": "2.0", "method": method, "params": params, "id": n})


def run() -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="hpbx-bench-admin-") as tmp:
        srv = HpbxServer(Path(tmp), log_level="warning")
        t_users, t_bind = fill_store(srv.db_path)
        print(f"\nstore filled: {USERS} users in {USERS // TENANT_SIZE} tenants in {t_users:.1f} s "
              f"({USERS / t_users:.0f} users/s by import_tenant); {USERS} bindings in {t_bind:.1f} s")
        t0 = time.perf_counter()
        with srv:
            print(f"server started on it in {time.perf_counter() - t0:.1f} s")
            with AdminClient(str(srv.dir / "hpbx.sock"), timeout=120) as c:
                bindings = c.call("stats.get", {"layer": "registrar"})["registrar"].get("bindings")
                print(f"bindings restored by the registrar: {bindings}")
                results["user.create"] = measure(
                    c, "user.create",
                    lambda n: {"tenant": "t0000", "username": f"new{n:06d}", "sip_password": "secret-pw"},
                    CREATES)
                results["registration.list user=X"] = measure(
                    c, "registration.list", lambda n: {"user": f"u{(n * 7919) % USERS:06d}"}, 5000)
                results["registration.list limit=100"] = measure(
                    c, "registration.list", lambda n: {"limit": 100, "offset": (n * 100) % USERS}, 2000)
                results[f"registration.list all ({USERS})"] = measure(c, "registration.list", lambda n: {}, 5)
                results["user.list tenant (1000)"] = measure(c, "user.list", lambda n: {"tenant": "t0001"}, 500)
    print(f"{'method':<34}{'calls':>7}{'calls/s':>11}{'p50 ms':>10}{'p99 ms':>10}{'answer B':>12}")
    for name, r in results.items():
        print(f"{name:<34}{r['calls']:>7}{r['rate']:>11.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
              f"{r['answer_bytes']:>12}")
    return results


def test_admin_rates():
    results = run()
    assert results["user.create"]["calls"] > 0


if __name__ == "__main__":
    run()
