"""The embedded SQLite store of everything provisioned, plus call records.

One row per object: its key columns (indexed, with foreign keys to its tenant so that deleting
a tenant deletes what it owns) and the object as a JSON document (the model's ``to_dict``).
Changes go through ``Store.transaction()``: every statement of one provisioning change commits
together or not at all. The schema carries its version in ``migrations``; ``MIGRATIONS`` lists
the steps from an empty file to the current version, applied in order on open.

Other modules keep their own tables in the same file (``hpbx/store/registrations.py``): they
use ``Store.connection`` or open ``Store.path`` themselves.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import orjson

# kind -> (table, key columns, other indexed columns taken from the document)
KINDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "tenant": ("tenants", ("name",), ()),
    "user": ("users", ("username",), ("tenant", "internal_number")),
    "group": ("groups", ("tenant", "name"), ()),
    "trunk": ("trunks", ("tenant", "name"), ()),
    "number": ("numbers", ("number",), ("tenant",)),
    "switch": ("switches", ("tenant", "name"), ()),
    "announcement": ("announcements", ("tenant", "id"), ()),
}
LOAD_ORDER = ("tenant", "trunk", "user", "group", "number", "switch", "announcement")

MIGRATIONS: tuple[str, ...] = (
    # 1: provisioning objects and call records
    """
    CREATE TABLE tenants (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        internal_number TEXT NOT NULL DEFAULT '',
        doc TEXT NOT NULL);
    CREATE INDEX users_tenant ON users(tenant);
    CREATE UNIQUE INDEX users_internal ON users(tenant, internal_number) WHERE internal_number != '';
    CREATE TABLE groups (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        name TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tenant, name));
    CREATE TABLE trunks (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        name TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tenant, name));
    CREATE TABLE numbers (
        number TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        doc TEXT NOT NULL);
    CREATE INDEX numbers_tenant ON numbers(tenant);
    CREATE TABLE switches (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        name TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tenant, name));
    CREATE TABLE announcements (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        id INTEGER NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tenant, id));
    CREATE TABLE cdrs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        call_id TEXT NOT NULL DEFAULT '',
        start TEXT NOT NULL DEFAULT '',
        doc TEXT NOT NULL);
    CREATE INDEX cdrs_tenant_start ON cdrs(tenant, start);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class Transaction:
    """The writes of one change; created by ``Store.transaction()``."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def put(self, kind: str, doc: dict) -> None:
        """Insert or replace one object (its ``to_dict()``)."""
        table, keys, extra = KINDS[kind]
        cols = keys + extra
        names = ", ".join(cols + ("doc",))
        marks = ", ".join("?" * (len(cols) + 1))
        values = [doc[c] for c in cols] + [orjson.dumps(doc).decode()]
        # ON CONFLICT DO UPDATE keeps the row (REPLACE would delete it and cascade).
        updates = ", ".join(f"{c} = excluded.{c}" for c in extra + ("doc",))
        self._db.execute(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}", values)

    def delete(self, kind: str, *key) -> int:
        table, keys, _ = KINDS[kind]
        where = " AND ".join(f"{k} = ?" for k in keys)
        return self._db.execute(f"DELETE FROM {table} WHERE {where}", key).rowcount

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)


def connect(path: str, schema: str = "") -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` (its folder made) as every store here uses it:
    explicit transactions (isolation_level=None), usable from the loop and from threads, a 5 s
    busy timeout, WAL with synchronous=NORMAL (a committed transaction survives a process
    crash, kill -9; only an OS crash may lose the last commits); then ``schema`` is run."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 5000")
    if path != ":memory:":
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
    if schema:
        db.executescript(schema)
    return db


class Store:
    """One SQLite database file (``":memory:"`` works for throw-away use)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        # transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        self.connection = connect(self.path)
        self._lock = threading.RLock()
        self.connection.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _migrate(self) -> None:
        db = self.connection
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
                current = db.execute("SELECT COALESCE(MAX(version), 0) FROM migrations").fetchone()[0]
                if current > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path}: schema version {current} is newer than this hpbx "
                                       f"({SCHEMA_VERSION})")
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version - 1].split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO migrations VALUES (?, ?)",
                               (version, datetime.now(timezone.utc).isoformat(timespec="seconds")))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return self.connection.execute("SELECT MAX(version) FROM migrations").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """All writes inside commit together; any exception rolls every one of them back."""
        with self._lock:
            db = self.connection
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def load(self) -> dict[str, list[dict]]:
        """Every provisioned object, as documents, by kind (tenants first)."""
        out = {}
        with self._lock:
            for kind in LOAD_ORDER:
                table, keys, _ = KINDS[kind]
                rows = self.connection.execute(f"SELECT doc FROM {table} ORDER BY {', '.join(keys)}")
                out[kind] = [orjson.loads(doc) for (doc,) in rows]
        return out

    def load_tenant(self, name: str) -> dict[str, list[dict]]:
        """The documents of one tenant, by kind (an empty ``tenant`` list: it is gone), read in
        one transaction: another process sharing the file (``[server] workers``) changed it."""
        out = {}
        with self._lock:
            self.connection.execute("BEGIN")
            try:
                for kind in LOAD_ORDER:
                    table, keys, _ = KINDS[kind]
                    column = "name" if table == "tenants" else "tenant"
                    rows = self.connection.execute(
                        f"SELECT doc FROM {table} WHERE {column} = ? ORDER BY {', '.join(keys)}", (name,))
                    out[kind] = [orjson.loads(doc) for (doc,) in rows]
            finally:
                self.connection.execute("COMMIT")
        return out

    def count(self, kind: str) -> int:
        table = KINDS[kind][0] if kind != "cdr" else "cdrs"
        return self.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def is_empty(self) -> bool:
        return self.count("tenant") == 0

    # -- call records (append-only, not part of the provisioned snapshot)

    def cdr_add(self, doc: dict) -> int:
        with self.transaction() as tx:
            cur = tx.execute("INSERT INTO cdrs (tenant, call_id, start, doc) VALUES (?, ?, ?, '{}')",
                             (doc["tenant"], doc.get("call_id", ""), doc.get("start", "")))
            cdr_id = cur.lastrowid
            tx.execute("UPDATE cdrs SET doc = ? WHERE id = ?",
                       (orjson.dumps({**doc, "id": cdr_id}).decode(), cdr_id))
        return cdr_id

    def cdr_add_many(self, docs: list[dict]) -> list[int]:
        """``cdr_add`` for a batch, in one transaction (one commit for the lot)."""
        ids = []
        with self.transaction() as tx:
            for doc in docs:
                cur = tx.execute("INSERT INTO cdrs (tenant, call_id, start, doc) VALUES (?, ?, ?, '{}')",
                                 (doc["tenant"], doc.get("call_id", ""), doc.get("start", "")))
                cdr_id = cur.lastrowid
                tx.execute("UPDATE cdrs SET doc = ? WHERE id = ?",
                           (orjson.dumps({**doc, "id": cdr_id}).decode(), cdr_id))
                ids.append(cdr_id)
        return ids

    def cdr_list(self, tenant: str | None = None, since: str = "", until: str = "",
                 limit: int = 100, offset: int = 0) -> list[dict]:
        """Newest first. ``since``/``until`` compare the start timestamps as text (same offset)."""
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if since:
            where.append("start >= ?")
            params.append(since)
        if until:
            where.append("start < ?")
            params.append(until)
        sql = "SELECT doc FROM cdrs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        with self._lock:
            rows = self.connection.execute(sql, (*params, limit, offset)).fetchall()
        return [orjson.loads(doc) for (doc,) in rows]

    def cdr_purge(self, before: str) -> int:
        """Delete the records of calls that started before ``before`` (retention)."""
        with self.transaction() as tx:
            return tx.execute("DELETE FROM cdrs WHERE start < ?", (before,)).rowcount

    def close(self) -> None:
        self.connection.close()
