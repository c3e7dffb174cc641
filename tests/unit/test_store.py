"""The SQLite store on a real database file: schema, transactions, cascades, call records."""
import sqlite3

import pytest

from hpbx.store import SCHEMA_VERSION, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "hpbx.sqlite3")
    yield s
    s.close()


def test_schema_version_journal_and_foreign_keys(store):
    assert store.schema_version == SCHEMA_VERSION
    db = store.connection
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    rows = db.execute("SELECT version, applied_at FROM migrations").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_reopen_keeps_data_and_does_not_migrate_twice(tmp_path):
    path = tmp_path / "db" / "hpbx.sqlite3"
    s = Store(path)
    with s.transaction() as tx:
        tx.put("tenant", {"name": "acme"})
        tx.put("user", {"tenant": "acme", "username": "anna", "internal_number": "100", "sip_password": "x"})
    s.close()
    s = Store(path)
    assert s.load()["user"] == [{"tenant": "acme", "username": "anna", "internal_number": "100", "sip_password": "x"}]
    assert s.connection.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == SCHEMA_VERSION
    s.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "hpbx.sqlite3"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO migrations VALUES (?, 'later')", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(path)


def test_transaction_rolls_back_everything_on_error(store):
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as tx:
            tx.put("tenant", {"name": "acme"})
            tx.put("user", {"tenant": "nobody", "username": "anna", "internal_number": ""})  # FK fails
    assert store.load()["tenant"] == []
    with pytest.raises(ZeroDivisionError):
        with store.transaction() as tx:
            tx.put("tenant", {"name": "acme"})
            1 / 0
    assert store.is_empty()


def test_unique_internal_number_per_tenant_in_sql(store):
    with store.transaction() as tx:
        tx.put("tenant", {"name": "a"})
        tx.put("tenant", {"name": "b"})
        tx.put("user", {"tenant": "a", "username": "u1", "internal_number": "100"})
        tx.put("user", {"tenant": "b", "username": "u2", "internal_number": "100"})
        tx.put("user", {"tenant": "a", "username": "u3", "internal_number": ""})
        tx.put("user", {"tenant": "a", "username": "u4", "internal_number": ""})
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as tx:
            tx.put("user", {"tenant": "a", "username": "u5", "internal_number": "100"})


def test_update_keeps_children_and_tenant_delete_cascades(store):
    with store.transaction() as tx:
        tx.put("tenant", {"name": "acme"})
        tx.put("user", {"tenant": "acme", "username": "anna", "internal_number": "100"})
        tx.put("number", {"tenant": "acme", "number": "0441234567"})
        tx.put("group", {"tenant": "acme", "name": "sales"})
        tx.put("announcement", {"tenant": "acme", "id": 3})
    with store.transaction() as tx:
        tx.put("tenant", {"name": "acme", "timezone": "UTC"})  # an update must not cascade
    assert store.count("user") == 1 and store.count("number") == 1
    with store.transaction() as tx:
        assert tx.delete("tenant", "acme") == 1
    for kind in ("user", "number", "group", "announcement", "tenant"):
        assert store.count(kind) == 0


def test_cdrs_newest_first_filtered_and_paged(store):
    ids = [store.cdr_add({"tenant": t, "call_id": f"c{i}", "start": f"2026-11-23T10:0{i}:00+00:00"})
           for i, t in enumerate(["a", "b", "a", "a"])]
    assert ids == sorted(ids)
    rows = store.cdr_list("a")
    assert [r["call_id"] for r in rows] == ["c3", "c2", "c0"] and rows[0]["id"] == ids[3]
    assert [r["call_id"] for r in store.cdr_list(limit=2, offset=1)] == ["c2", "c1"]
    assert [r["call_id"] for r in store.cdr_list(since="2026-11-23T10:02:00+00:00")] == ["c3", "c2"]
    assert [r["call_id"] for r in store.cdr_list(until="2026-11-23T10:01:00+00:00")] == ["c0"]


def test_other_modules_share_the_file(store, tmp_path):
    store.connection.execute("CREATE TABLE IF NOT EXISTS demo_registrations (aor TEXT PRIMARY KEY)")
    other = sqlite3.connect(store.path)
    other.execute("INSERT INTO demo_registrations VALUES ('sip:anna@x')")
    other.commit()
    assert store.connection.execute("SELECT aor FROM demo_registrations").fetchone() == ("sip:anna@x",)
    other.close()
