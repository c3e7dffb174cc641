"""The registrations (bindings) table, in the same SQLite file as the provisioning store.

The registrar keeps bindings in memory and writes every change here before it answers 200, so
a restart (or kill -9) loses nothing that was acknowledged. Writes are queued and committed in
one transaction per event-loop iteration by the caller (``write_batch``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpbx.store.sqlite import connect as sqlite_connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (
    username      TEXT NOT NULL,
    contact       TEXT NOT NULL,
    tenant        TEXT,
    instance_id   TEXT,
    reg_id        INTEGER,
    q             REAL,
    expires_at    REAL NOT NULL,
    registered_at REAL NOT NULL,
    source_host   TEXT NOT NULL,
    source_port   INTEGER NOT NULL,
    transport     TEXT NOT NULL,
    connection_id INTEGER NOT NULL DEFAULT 0,
    user_agent    TEXT,
    path          TEXT,
    call_id       TEXT,
    cseq          INTEGER,
    behind_nat    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (username, contact)
) WITHOUT ROWID;
-- no index on expires_at: it is read once at start-up (a scan is fine there) and an index
-- doubled the cost of every refresh
DROP INDEX IF EXISTS registrations_expiry;
"""

COLUMNS = ("username", "contact", "tenant", "instance_id", "reg_id", "q",
           "expires_at", "registered_at", "source_host", "source_port", "transport",
           "connection_id", "user_agent", "path", "call_id", "cseq", "behind_nat")

_UPSERT = (f"INSERT OR REPLACE INTO registrations ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
_DELETE = "DELETE FROM registrations WHERE username = ? AND contact = ?"
# a refresh moves only these: the narrow update costs half of a whole-row replace
_REFRESH = ("UPDATE registrations SET expires_at = ?, registered_at = ?, call_id = ?, cseq = ? "
            "WHERE username = ? AND contact = ?")


@dataclass(slots=True)
class Binding:
    """One registered contact of a user. Wall-clock times (epoch seconds)."""

    username: str
    contact: str  # the Contact URI exactly as registered (unknown params kept)
    tenant: str | None
    instance_id: str | None
    reg_id: int | None
    q: float | None
    expires_at: float
    registered_at: float
    source_host: str
    source_port: int
    transport: str
    connection_id: int
    user_agent: str | None
    path: str | None
    call_id: str | None
    cseq: int | None
    behind_nat: bool
    # runtime state (not stored): keepalive bookkeeping
    online: bool = True
    last_seen: float = 0.0
    keepalive_sent: float = 0.0
    # the cluster node that holds this binding's flow (its REGISTER arrived there); "" on a
    # single node. Kept by the shared store (Redis), not by the SQLite table.
    node: str = ""

    def row(self) -> tuple:
        return (self.username, self.contact, self.tenant, self.instance_id,
                self.reg_id, self.q, self.expires_at, self.registered_at, self.source_host,
                self.source_port, self.transport, self.connection_id, self.user_agent, self.path,
                self.call_id, self.cseq, int(self.behind_nat))

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in COLUMNS} | {"online": self.online}


class RegistrationStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        # the event loop thread is the only user; one transaction per batch
        self.db = sqlite_connect(self.path, SCHEMA)

    def load(self, now: float) -> list[Binding]:
        """Every binding not yet expired; expired rows are deleted."""
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM registrations WHERE expires_at <= ?", (now,))
        # behind_nat is the last column: read it as the filter, so each row goes into Binding
        # as it comes (no per-row list to turn SQLite's 0/1 into a bool)
        cols = ", ".join(COLUMNS[:-1])
        direct = self.db.execute(f"SELECT {cols} FROM registrations WHERE behind_nat = 0").fetchall()
        natted = self.db.execute(f"SELECT {cols} FROM registrations WHERE behind_nat != 0").fetchall()
        self.db.execute("COMMIT")
        out = [Binding(*row, False, last_seen=now) for row in direct]
        out += [Binding(*row, True, last_seen=now) for row in natted]
        return out

    def write_batch(self, upserts: list[Binding], deletes: list[tuple[str, str]],
                    refreshes: list[Binding] = ()) -> None:
        """One transaction: whole rows for ``upserts``, the expiry and Call-ID/CSeq for
        ``refreshes`` (bindings whose other columns are unchanged), and ``deletes``."""
        db = self.db
        db.execute("BEGIN")
        try:
            if deletes:
                db.executemany(_DELETE, deletes)
            if upserts:
                db.executemany(_UPSERT, [b.row() for b in upserts])
            if refreshes:
                db.executemany(_REFRESH, [(b.expires_at, b.registered_at, b.call_id, b.cseq,
                                           b.username, b.contact) for b in refreshes])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def all(self) -> list[tuple]:
        return self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM registrations").fetchall()

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM registrations").fetchone()[0]

    def close(self) -> None:
        self.db.close()
