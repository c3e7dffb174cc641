"""The BLF subscriptions (hpbx.pbx.blf) kept across a restart: one row per subscription dialog
in the SQLite file of the store, written in batches (at most one write a second, and at stop)."""
from __future__ import annotations

from pathlib import Path

import orjson

from hpbx.store.sqlite import connect as sqlite_connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    call_id TEXT NOT NULL, local_tag TEXT NOT NULL, expires_at REAL NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (call_id, local_tag));
"""


class SubscriptionStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self.db = sqlite_connect(self.path, SCHEMA)

    def load(self, now: float) -> list[dict]:
        """The subscriptions still running at ``now`` (wall clock); the expired are deleted."""
        self.db.execute("DELETE FROM subscriptions WHERE expires_at <= ?", (now,))
        return [orjson.loads(doc) for (doc,) in
                self.db.execute("SELECT doc FROM subscriptions ORDER BY expires_at")]

    def write_batch(self, upserts: list[dict], deletes: list[tuple[str, str]]) -> None:
        self.db.execute("BEGIN")
        try:
            self.db.executemany("DELETE FROM subscriptions WHERE call_id = ? AND local_tag = ?", deletes)
            self.db.executemany(
                "INSERT OR REPLACE INTO subscriptions (call_id, local_tag, expires_at, doc) VALUES (?, ?, ?, ?)",
                [(d["call_id"], d["local_tag"], d["expires_at"], orjson.dumps(d).decode()) for d in upserts])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()
