"""The domain's hot paths without the network: slot selection, routing, fork decisions, and
provisioning changes with many users in the store.

  1. schedule.select on the FEATURES 2.10 reference number (five slots, a switch list);
  2. router.route_inbound to that number in a tenant of DOMAIN_USERS users;
  3. one call through the compiled fork: start, two branches, 180, 200 (cancel the other);
  4. a tenant of DOMAIN_USERS (100,000) users: import time, reload time, then user_create and
     number_create rates (each one validates, commits to SQLite and swaps the directory).

Printed: operations per second. Figures only; nothing passes or fails on time. Every loop is
bounded by count and by DOMAIN_SECS seconds.

    .venv/bin/python -m pytest -q -s bench/bench_domain.py
    .venv/bin/python bench/bench_domain.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpbx._fast.fork import Fork  # noqa: E402
from hpbx.pbx.provisioning import Provisioning  # noqa: E402
from hpbx.pbx.router import route_inbound  # noqa: E402
from hpbx.pbx.schedule import select  # noqa: E402
from hpbx.store.sqlite import Store  # noqa: E402

USERS = int(os.environ.get("DOMAIN_USERS", "100000"))
SECS = float(os.environ.get("DOMAIN_SECS", "3"))
ALL = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
START = datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc)


def rate(name: str, fn, max_calls: int = 1_000_000) -> float:
    """Calls ``fn(i)`` until max_calls or SECS seconds; prints and returns calls per second."""
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + SECS
    while n < max_calls:
        fn(n)
        n += 1
        if n % 64 == 0 and time.perf_counter() >= deadline:
            break
    per_s = n / (time.perf_counter() - t0)
    print(f"  {name:<48} {per_s:>12,.0f} /s  ({n} calls)")
    return per_s


def tenant_toml(name: str, users: int) -> str:
    parts = [f'[tenant]\nname = "{name}"\n']
    for i in range(users):
        parts.append(f'[[users]]\nusername = "{name}-u{i}"\nsip_password = "pw{i:06d}"\n'
                     f'internal_number = "{100000 + i}"\n')

    def rows(first: int) -> str:
        return (f'[[numbers.slots.rows]]\nduration = 10\ntargets = ["user:{name}-u{first}"]\n'
                f'[[numbers.slots.rows]]\nduration = 15\n'
                f'targets = ["user:{name}-u{first}", "user:{name}-u2", "user:{name}-u3"]\n')

    parts.append('[[numbers]]\nnumber = "0445550000"\n')
    for days, start, end, first in ((["mon", "wed"], "08:00", "12:00", 0), (["tue", "thu", "fri"], "08:00", "12:00", 1),
                                    (["mon", "wed"], "13:00", "17:00", 0), (["tue", "thu", "fri"], "13:00", "17:00", 1)):
        parts.append(f'[[numbers.slots]]\nactive = true\ndays = {days!r}\ntime_start = "{start}"\n'
                     f'time_end = "{end}"\n'.replace("'", '"') + rows(first))
    parts.append(f'[[numbers.slots]]\nactive = true\ndays = {ALL!r}\n'.replace("'", '"'))
    return "".join(parts)


def run() -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite3"
        store = Store(db)
        prov = Provisioning(store)
        t0 = time.perf_counter()
        prov.import_tenant(tenant_toml("big", USERS))
        results["import_s"] = time.perf_counter() - t0
        print(f"  import of a tenant with {USERS} users: {results['import_s']:.2f} s")
        store.close()
        t0 = time.perf_counter()
        store = Store(db)
        prov = Provisioning(store)
        results["load_s"] = time.perf_counter() - t0
        print(f"  restart: load and index {USERS} users: {results['load_s']:.2f} s")

        directory = prov.directory
        number = directory.number("0445550000")
        minutes = [START + timedelta(minutes=7 * i) for i in range(1440)]
        results["select"] = rate("schedule.select (reference number)",
                                 lambda i: select(number, minutes[i % 1440], "Europe/Zurich", ()))
        results["route"] = rate("router.route_inbound (reference number)",
                                lambda i: route_inbound(directory, "+41445550000", minutes[i % 1440]))

        def one_call(i: int) -> None:
            f = Fork([(10.0, ("user:a", "user:b")), (15.0, ("user:c",))])
            f.start(0.0)
            f.add_branch(1, "user:a")
            f.add_branch(2, "user:b")
            f.on_response(1, 180, 0.1)
            f.on_response(2, 200, 1.0)

        results["fork"] = rate("fork: start, 2 branches, 180, 200 + CANCEL", one_call)
        results["auth"] = rate("directory.auth_user", lambda i: directory.auth_user(f"big-u{i % USERS}"))
        results["user_create"] = rate(
            f"user_create with {USERS} users in the tenant",
            lambda i: prov.user_create({"tenant": "big", "username": f"new{i}", "sip_password": "secret"}),
            max_calls=2000)
        results["number_create"] = rate(
            f"number_create with {USERS} users in the tenant",
            lambda i: prov.number_create({"tenant": "big", "number": f"0316{i:06d}"}), max_calls=2000)
        store.close()
    return results


def test_domain_rates():
    print()
    run()


if __name__ == "__main__":
    run()
