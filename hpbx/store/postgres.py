"""The PostgreSQL store: the same interface as the embedded SQLite ``Store`` (``load``,
``transaction``, ``count``, ``is_empty``, ``cdr_add``, ``cdr_list``, ``close``), for several
nodes sharing one provisioning database.

psycopg 3's synchronous connection, like the SQLite store: a provisioning change is validated
against the in-memory directory and written in one transaction before it is acknowledged, so
the admin call waits for the commit either way (a loopback round trip is well under a
millisecond; admin changes are rare next to SIP traffic).

Every transaction also queues a ``NOTIFY hpbx_provisioning`` per tenant it touched, with the
writing node's name; PostgreSQL delivers it at COMMIT and only then, so another node never
hears of a change that was rolled back, and hears of every committed one (``Listener``
reloads that tenant). A listener that lost its connection reloads everything on reconnect.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

import orjson
import psycopg

from hpbx.errors import HpbxError
from hpbx.store.sqlite import KINDS, LOAD_ORDER

log = logging.getLogger("hpbx.store.postgres")

CHANNEL = "hpbx_provisioning"
# one number for the advisory lock that serializes schema migrations of nodes starting together
_MIGRATION_LOCK = 0x68706278

MIGRATIONS: tuple[str, ...] = (
    # 1: provisioning objects and call records (the SQLite schema, in PostgreSQL's types)
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
        id BIGSERIAL PRIMARY KEY,
        tenant TEXT NOT NULL,
        call_id TEXT NOT NULL DEFAULT '',
        start TEXT NOT NULL DEFAULT '',
        doc TEXT NOT NULL);
    CREATE INDEX cdrs_tenant_start ON cdrs(tenant, start);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_QMARK = re.compile(r"\?")


def _tenant_column(table: str) -> str:
    return "name" if table == "tenants" else "tenant"


class Transaction:
    """The writes of one change; created by ``PostgresStore.transaction()``."""

    __slots__ = ("_cur", "tenants")

    def __init__(self, cur: psycopg.Cursor):
        self._cur = cur
        self.tenants: set[str] = set()  # touched, notified at commit

    def put(self, kind: str, doc: dict) -> None:
        table, keys, extra = KINDS[kind]
        cols = keys + extra
        names = ", ".join(cols + ("doc",))
        marks = ", ".join(["%s"] * (len(cols) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in extra + ("doc",))
        self._cur.execute(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}",
            [doc[c] for c in cols] + [orjson.dumps(doc).decode()])
        self.tenants.add(doc["name"] if kind == "tenant" else doc["tenant"])

    def delete(self, kind: str, *key) -> int:
        table, keys, _ = KINDS[kind]
        where = " AND ".join(f"{k} = %s" for k in keys)
        rows = self._cur.execute(f"DELETE FROM {table} WHERE {where} RETURNING {_tenant_column(table)}",
                                 key).fetchall()
        self.tenants.update(r[0] for r in rows)
        return len(rows)

    def execute(self, sql: str, params: tuple = ()) -> psycopg.Cursor:
        """SQL written for SQLite's ``?`` placeholders runs here too."""
        return self._cur.execute(_QMARK.sub("%s", sql), params)


class PostgresStore:
    """One PostgreSQL database (``dsn``: a libpq connection string or URL)."""

    def __init__(self, dsn: str, node: str = ""):
        self.dsn = dsn
        self.node = node
        self.path = dsn  # what logs and ``config.reload`` compare
        try:
            self._connection = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise HpbxError(f"PostgreSQL {dsn!r}: {exc}".strip()) from None
        self._migrate()

    @property
    def connection(self) -> psycopg.Connection:
        """The connection, opened again when PostgreSQL dropped it (a restart, a failover): a
        call made while it was down fails, the next one after it is back works. A transaction
        whose COMMIT was lost with the connection is reported as failed, never retried."""
        conn = self._connection
        if conn.broken or conn.closed:
            log.warning("PostgreSQL connection lost; connecting again")
            try:
                conn = self._connection = psycopg.connect(self.dsn, autocommit=True)
            except psycopg.Error as exc:
                raise HpbxError(f"PostgreSQL {self.dsn!r}: {exc}".strip()) from None
        return conn

    def _live(self) -> psycopg.Connection:
        """The connection, checked with a round trip first: a connection PostgreSQL closed
        (restart, failover) is only seen as broken once used, and a write must not be the
        statement that finds out."""
        conn = self.connection
        try:
            conn.execute("SELECT 1")
        except psycopg.OperationalError:
            conn = self.connection
        return conn

    def _migrate(self) -> None:
        conn = self.connection
        with conn.transaction():
            cur = conn.cursor()
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, "
                        "applied_at TEXT NOT NULL)")
            current = cur.execute("SELECT COALESCE(MAX(version), 0) FROM migrations").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise RuntimeError(f"{self.dsn}: schema version {current} is newer than this hpbx "
                                   f"({SCHEMA_VERSION})")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                cur.execute(MIGRATIONS[version - 1])
                cur.execute("INSERT INTO migrations VALUES (%s, %s)",
                            (version, datetime.now(timezone.utc).isoformat(timespec="seconds")))

    @property
    def schema_version(self) -> int:
        return self.connection.execute("SELECT MAX(version) FROM migrations").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """All writes inside commit together (with their notifications); any exception rolls
        every one of them back."""
        conn = self._live()
        with conn.transaction():
            tx = Transaction(conn.cursor())
            yield tx
            for tenant in sorted(tx.tenants):
                tx.execute("SELECT pg_notify(%s, %s)",
                           (CHANNEL, orjson.dumps({"node": self.node, "tenant": tenant}).decode()))

    def load(self) -> dict[str, list[dict]]:
        out = {}
        conn = self._live()
        with conn.transaction():  # one snapshot for every table
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for kind in LOAD_ORDER:
                table, keys, _ = KINDS[kind]
                rows = conn.execute(f"SELECT doc FROM {table} ORDER BY {', '.join(keys)}")
                out[kind] = [orjson.loads(doc) for (doc,) in rows]
        return out

    def load_tenant(self, name: str) -> dict[str, list[dict]]:
        """The documents of one tenant, by kind (an empty ``tenant`` list: it is gone)."""
        out = {}
        conn = self._live()
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for kind in LOAD_ORDER:
                table, keys, _ = KINDS[kind]
                rows = conn.execute(
                    f"SELECT doc FROM {table} WHERE {_tenant_column(table)} = %s "
                    f"ORDER BY {', '.join(keys)}", (name,))
                out[kind] = [orjson.loads(doc) for (doc,) in rows]
        return out

    def count(self, kind: str) -> int:
        table = KINDS[kind][0] if kind != "cdr" else "cdrs"
        return self.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def is_empty(self) -> bool:
        return self.count("tenant") == 0

    # -- call records

    def cdr_add(self, doc: dict) -> int:
        conn = self._live()
        with conn.transaction():
            cdr_id = conn.execute(
                "INSERT INTO cdrs (tenant, call_id, start, doc) VALUES (%s, %s, %s, '{}') RETURNING id",
                (doc["tenant"], doc.get("call_id", ""), doc.get("start", ""))).fetchone()[0]
            conn.execute("UPDATE cdrs SET doc = %s WHERE id = %s",
                                    (orjson.dumps({**doc, "id": cdr_id}).decode(), cdr_id))
        return cdr_id

    def cdr_add_many(self, docs: list[dict]) -> list[int]:
        """``cdr_add`` for a batch, in one transaction (one commit for the lot)."""
        conn = self._live()
        ids = []
        with conn.transaction():
            for doc in docs:
                cdr_id = conn.execute(
                    "INSERT INTO cdrs (tenant, call_id, start, doc) VALUES (%s, %s, %s, '{}') RETURNING id",
                    (doc["tenant"], doc.get("call_id", ""), doc.get("start", ""))).fetchone()[0]
                conn.execute("UPDATE cdrs SET doc = %s WHERE id = %s",
                             (orjson.dumps({**doc, "id": cdr_id}).decode(), cdr_id))
                ids.append(cdr_id)
        return ids

    def cdr_list(self, tenant: str | None = None, since: str = "", until: str = "",
                 limit: int = 100, offset: int = 0) -> list[dict]:
        where, params = [], []
        if tenant is not None:
            where.append("tenant = %s")
            params.append(tenant)
        if since:
            where.append("start >= %s")
            params.append(since)
        if until:
            where.append("start < %s")
            params.append(until)
        sql = "SELECT doc FROM cdrs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT %s OFFSET %s"
        rows = self.connection.execute(sql, (*params, limit, offset)).fetchall()
        return [orjson.loads(doc) for (doc,) in rows]

    def cdr_purge(self, before: str) -> int:
        conn = self._live()
        with conn.transaction():
            return conn.execute("DELETE FROM cdrs WHERE start < %s", (before,)).rowcount

    def listener(self, on_tenant: Callable[[str], None], on_resync: Callable[[], None]) -> "Listener":
        return Listener(self.dsn, self.node, on_tenant, on_resync)

    def close(self) -> None:
        self._connection.close()


class Listener:
    """LISTEN on the provisioning channel from the event loop (the connection's socket is
    watched with ``add_reader``; nothing blocks). ``on_tenant(name)`` runs for every change
    another node committed; ``on_resync()`` after a reconnect, since notifications sent while
    the connection was down are lost."""

    RETRY_SECS = 1.0

    def __init__(self, dsn: str, node: str, on_tenant, on_resync):
        self.dsn = dsn
        self.node = node
        self.on_tenant = on_tenant
        self.on_resync = on_resync
        self.loop = None
        self.conn: psycopg.Connection | None = None
        self._fd = -1
        self._retry = None
        self.stats = {"notifications": 0, "reconnects": 0}

    def start(self, loop) -> None:
        self.loop = loop
        self._connect()  # the first connection must work: start-up fails otherwise

    def _connect(self) -> None:
        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        self.conn = conn
        self._fd = conn.fileno()
        self.loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            log.warning("provisioning listener lost its connection (%s); reconnecting", exc)
            self._drop()
            self._schedule_retry()
            return
        while True:
            n = pgconn.notifies()
            if n is None:
                break
            self.stats["notifications"] += 1
            try:
                payload = orjson.loads(n.extra)
                if payload.get("node") != self.node:
                    self.on_tenant(payload["tenant"])
            except Exception:
                log.exception("provisioning notification %r not applied", n.extra)

    def _drop(self) -> None:
        if self._fd >= 0:
            self.loop.remove_reader(self._fd)
            self._fd = -1
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
            self.conn = None

    def _schedule_retry(self) -> None:
        self._retry = self.loop.call_later(self.RETRY_SECS, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        try:
            self._connect()
        except psycopg.Error as exc:
            log.warning("provisioning listener: reconnect failed (%s)", str(exc).strip())
            self._schedule_retry()
            return
        self.stats["reconnects"] += 1
        log.info("provisioning listener reconnected; reloading every tenant")
        self.on_resync()

    def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.loop is not None:
            self._drop()
