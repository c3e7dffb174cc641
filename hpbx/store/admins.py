"""Admin accounts of the web face and the audit log of every change, in the provisioning file.

Own tables (created if missing), like the registrations: ``admin_accounts`` (one row per
account, the password only as its scrypt hash) and ``audit_log`` (append-only: who, when, which
method, the parameters with secrets blanked, and the tenant it touched). Every write commits
before the caller answers, so an acknowledged change is never missing from the log.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS admin_accounts (
    username   TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    tenant     TEXT NOT NULL DEFAULT '',
    pwhash     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    who     TEXT NOT NULL,
    method  TEXT NOT NULL,
    tenant  TEXT NOT NULL DEFAULT '',
    params  TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit_log(tenant, id);
"""


class AdminStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 5000")
        self._lock = threading.Lock()
        with self._lock:
            self.db.executescript(SCHEMA)

    # -- accounts
    def account_put(self, username: str, role: str, tenant: str, pwhash: str, created_at: str) -> None:
        with self._lock:
            self.db.execute(
                "INSERT INTO admin_accounts VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE "
                "SET role = excluded.role, tenant = excluded.tenant, pwhash = excluded.pwhash",
                (username, role, tenant, pwhash, created_at))

    def account_get(self, username: str) -> dict | None:
        with self._lock:
            row = self.db.execute("SELECT username, role, tenant, pwhash, created_at FROM admin_accounts "
                                  "WHERE username = ?", (username,)).fetchone()
        return None if row is None else dict(zip(("username", "role", "tenant", "pwhash", "created_at"), row))

    def account_list(self, tenant: str | None = None) -> list[dict]:
        sql, args = "SELECT username, role, tenant, created_at FROM admin_accounts", ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = ?", (tenant,)
        with self._lock:
            rows = self.db.execute(sql + " ORDER BY username", args).fetchall()
        return [dict(zip(("username", "role", "tenant", "created_at"), r)) for r in rows]

    def account_delete(self, username: str) -> bool:
        with self._lock:
            return self.db.execute("DELETE FROM admin_accounts WHERE username = ?", (username,)).rowcount > 0

    # -- audit
    def audit_add(self, at: str, who: str, method: str, tenant: str, params: dict, outcome: str) -> int:
        with self._lock:
            return self.db.execute(
                "INSERT INTO audit_log (at, who, method, tenant, params, outcome) VALUES (?, ?, ?, ?, ?, ?)",
                (at, who, method, tenant, orjson.dumps(params, default=str).decode(), outcome)).lastrowid

    def audit_list(self, tenant: str | None = None, who: str | None = None, method: str | None = None,
                   since: str = "", limit: int = 100, offset: int = 0) -> list[dict]:
        where, args = [], []
        for col, value in (("tenant", tenant), ("who", who), ("method", method)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since:
            where.append("at >= ?")
            args.append(since)
        sql = "SELECT id, at, who, method, tenant, params, outcome FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        with self._lock:
            rows = self.db.execute(sql, (*args, limit, offset)).fetchall()
        return [{"id": r[0], "at": r[1], "who": r[2], "method": r[3], "tenant": r[4],
                 "params": orjson.loads(r[5]), "outcome": r[6]} for r in rows]

    def close(self) -> None:
        self.db.close()
