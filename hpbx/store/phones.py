"""Phone provisioning records (one per MAC address), in the provisioning file.

Own table, created if missing: the MAC (12 lowercase hex digits) as key, the tenant (rows of a
tenant that no longer exists are dropped by ``prune``) and the record as a JSON document
(``hpbx.pbx.phones.Phone.to_dict``).
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS phones (
    mac    TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    doc    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS phones_tenant ON phones(tenant);
"""


class PhoneStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 5000")
        self._lock = threading.Lock()
        with self._lock:
            self.db.executescript(SCHEMA)

    def load(self) -> list[dict]:
        with self._lock:
            return [orjson.loads(d) for (d,) in self.db.execute("SELECT doc FROM phones ORDER BY mac")]

    def put_many(self, docs: list[dict], delete: list[str] = ()) -> None:
        """Write and delete in one transaction."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for mac in delete:
                    self.db.execute("DELETE FROM phones WHERE mac = ?", (mac,))
                for d in docs:
                    self.db.execute("INSERT INTO phones VALUES (?, ?, ?) ON CONFLICT (mac) DO UPDATE "
                                    "SET tenant = excluded.tenant, doc = excluded.doc",
                                    (d["mac"], d["tenant"], orjson.dumps(d).decode()))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()
