"""Bans, failure counters, operator-trusted networks, toll-limit overrides and the toll
counters (trunk call attempts and talk time of the last 24 hours), in the same SQLite file as
the provisioning store, so that a restart (or kill -9) keeps an attacker banned, a tenant's
limits as the operator set them, and the calls and minutes it already used counted."""
from __future__ import annotations

from pathlib import Path

from hpbx.store.sqlite import connect as sqlite_connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    host   TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    until  REAL NOT NULL,
    since  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS security_counters (
    kind  TEXT NOT NULL,      -- source, pair, user, blocked
    key   TEXT NOT NULL,
    count INTEGER NOT NULL,
    since REAL NOT NULL,      -- window start (for blocked: until)
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS toll_limits (
    tenant TEXT PRIMARY KEY,
    doc    TEXT NOT NULL          -- JSON: the limits set over admin (toll.set)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS toll_usage (
    call_id  TEXT PRIMARY KEY,    -- the call's Call-ID, a tab, the attempt time
    tenant   TEXT NOT NULL,
    user     TEXT,                -- NULL: a diversion, no user placed it
    attempt  REAL NOT NULL,       -- admitted towards the trunk
    answered REAL,                -- NULL: not answered
    ended    REAL                 -- talk time stopped; NULL: still up (or the server died)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trusted_networks (
    network TEXT PRIMARY KEY,
    note    TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
"""


class BanStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self.db = sqlite_connect(self.path, SCHEMA)

    def load_bans(self, now: float) -> list[tuple[str, str, float, float]]:
        """(host, reason, until, since) of the bans still in force; ended ones are deleted."""
        self.db.execute("DELETE FROM bans WHERE until <= ?", (now,))
        return self.db.execute("SELECT host, reason, until, since FROM bans").fetchall()

    def load_counters(self) -> list[tuple[str, str, int, float]]:
        return self.db.execute("SELECT kind, key, count, since FROM security_counters").fetchall()

    def write(self, bans=(), unbans=(), counters=None) -> None:
        """One transaction: ``bans`` [(host, reason, until, since)], ``unbans`` [host], and,
        when given, the whole set of ``counters`` [(kind, key, count, since)]."""
        db = self.db
        db.execute("BEGIN")
        try:
            if unbans:
                db.executemany("DELETE FROM bans WHERE host = ?", [(h,) for h in unbans])
            if bans:
                db.executemany("INSERT OR REPLACE INTO bans (host, reason, until, since) "
                               "VALUES (?, ?, ?, ?)", list(bans))
            if counters is not None:
                db.execute("DELETE FROM security_counters")
                db.executemany("INSERT INTO security_counters (kind, key, count, since) "
                               "VALUES (?, ?, ?, ?)", list(counters))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def trusted(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT network, note FROM trusted_networks ORDER BY network").fetchall()

    def set_trusted(self, network: str, note: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO trusted_networks (network, note) VALUES (?, ?)",
                        (network, note))

    def delete_trusted(self, network: str) -> bool:
        return self.db.execute("DELETE FROM trusted_networks WHERE network = ?",
                               (network,)).rowcount > 0

    def toll_overrides(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT tenant, doc FROM toll_limits").fetchall()

    def set_toll_override(self, tenant: str, doc: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO toll_limits (tenant, doc) VALUES (?, ?)", (tenant, doc))

    def delete_toll_override(self, tenant: str) -> bool:
        return self.db.execute("DELETE FROM toll_limits WHERE tenant = ?", (tenant,)).rowcount > 0

    # ---- toll counters (hpbx.security.toll): one row per call admitted towards a trunk
    def toll_usage(self) -> list[tuple[str, str, str | None, float, float | None, float | None]]:
        return self.db.execute("SELECT call_id, tenant, user, attempt, answered, ended FROM toll_usage "
                               "ORDER BY attempt").fetchall()

    def toll_attempt(self, call_id: str, tenant: str, user: str | None, at: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO toll_usage (call_id, tenant, user, attempt) VALUES (?, ?, ?, ?)",
                        (call_id, tenant, user, at))

    def toll_answered(self, call_id: str, at: float) -> None:
        self.db.execute("UPDATE toll_usage SET answered = ? WHERE call_id = ?", (at, call_id))

    def toll_ended(self, call_id: str, at: float) -> None:
        self.db.execute("UPDATE toll_usage SET ended = ? WHERE call_id = ?", (at, call_id))

    def toll_forget(self, before: float) -> int:
        """Rows that count in no window any more: attempt and talk ended by ``before``."""
        return self.db.execute("DELETE FROM toll_usage WHERE attempt <= ? AND (answered IS NULL OR "
                               "(ended IS NOT NULL AND ended <= ?))", (before, before)).rowcount

    def close(self) -> None:
        self.db.close()
