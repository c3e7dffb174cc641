"""Two (or more) hpbx nodes sharing one PostgreSQL and one Redis, each a ``CallRig`` on its own
loopback address (127.0.0.1, 127.0.0.2, ...), with its own admin socket and relay."""
from __future__ import annotations

import time
from pathlib import Path

import orjson
import psycopg

from callrig import CallRig


def cluster_store(dsn: str, redis_url: str, node: str) -> str:
    esc = dsn.replace("\\", "\\\\").replace('"', '\\"')
    return (f'backend = "postgres"\ndsn = "{esc}"\nredis = "{redis_url}"\nnode = "{node}"\n')


class Node(CallRig):
    def __init__(self, directory: Path, tenant_toml: str, *, name: str, host: str, dsn: str,
                 redis_url: str, **kw):
        super().__init__(directory, tenant_toml, host=host, **kw)
        self.name = name
        self.dsn = dsn
        config = self.server.config
        text = config.read_text().replace("[store]\n", "[store]\n" + cluster_store(dsn, redis_url, name), 1)
        config.write_text(text)

    def cdrs(self, wait: float = 2.0, count: int = 1) -> list[dict]:
        """The CDR table in PostgreSQL (shared: every node's CDRs)."""
        deadline = time.monotonic() + wait
        while True:
            with psycopg.connect(self.dsn) as db:
                rows = [orjson.loads(r[0]) for r in db.execute("SELECT doc FROM cdrs ORDER BY id")]
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02):
    """The predicate's first truthy value within ``timeout`` s, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
