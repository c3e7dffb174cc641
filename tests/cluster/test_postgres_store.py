"""The provisioning service over PostgreSQL: the SQLite store's provisioning tests run again on
a real PostgreSQL 15 (started by the tests), plus what only a shared database has: migrations
of nodes starting together, NOTIFY at commit only, another node's change swapped in."""
import asyncio
import sys
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))

import test_provisioning as base  # noqa: E402
import test_cdr_export as export  # noqa: E402

from hpbx.pbx.provisioning import Provisioning  # noqa: E402
from hpbx.store.postgres import CHANNEL, SCHEMA_VERSION, PostgresStore  # noqa: E402

# every provisioning test that needs nothing but the service (the others open the SQLite file)
for _name in ("test_crud_round_trip_and_directory_swap", "test_username_unique_server_wide",
              "test_validation_errors_name_the_field_and_change_nothing",
              "test_link_loop_rejected_on_set_slots", "test_delete_refused_while_referenced",
              "test_switch_set_takes_effect_on_the_next_call", "test_number_filter_find_unused_and_search",
              "test_import_validation_names_the_path", "test_cdr_add_and_list",
              "test_provision_if_empty_imports_demo_once",
              "test_listeners_learn_which_users_a_change_removed"):
    globals()[_name] = getattr(base, _name)
for _name in ("test_csv_oldest_first_with_fixed_columns_and_quoting",
              "test_jsonl_filtered_by_tenant_and_time", "test_purge_keeps_what_started_at_or_after_the_cut"):
    globals()[_name] = getattr(export, _name)


@pytest.fixture
def prov(pg_dsn):
    store = PostgresStore(pg_dsn, "a")
    p = Provisioning(store, clock=base.Clock())
    yield p
    store.close()


def test_restart_keeps_everything_and_migrates_once(pg_dsn):
    store = PostgresStore(pg_dsn, "a")
    p = Provisioning(store)
    base.setup_acme(p)
    p.group_create({"tenant": "acme", "name": "sales", "internal_number": "200", "members": ["anna", "ben"]})
    p.number_set_slots("0441234567", [base.ring_all("group:sales")])
    p.cdr_add({"tenant": "acme", "caller": "0311112222", "called": "0441234567"})
    exported = p.export_tenant("acme")
    store.close()
    store = PostgresStore(pg_dsn, "b")
    assert store.schema_version == SCHEMA_VERSION
    assert store.connection.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == SCHEMA_VERSION
    p2 = Provisioning(store)
    assert p2.export_tenant("acme") == exported
    assert p2.directory.internal("acme", "200").name == "sales"
    assert p2.cdr_list("acme")[0]["caller"] == "0311112222"
    store.close()


def test_a_failed_transaction_leaves_nothing_and_notifies_nothing(pg_dsn):
    store = PostgresStore(pg_dsn, "a")
    p = Provisioning(store)
    base.setup_acme(p)
    listen = psycopg.connect(pg_dsn, autocommit=True)
    listen.execute(f"LISTEN {CHANNEL}")
    store.connection.execute(
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$ "
        "LANGUAGE plpgsql")
    store.connection.execute("CREATE TRIGGER refuse BEFORE INSERT ON numbers FOR EACH ROW "
                             "WHEN (NEW.number = '0310000002') EXECUTE FUNCTION refuse()")
    text = ('[tenant]\nname = "beta"\n[[users]]\nusername = "zed"\nsip_password = "zzzz"\n'
            '[[numbers]]\nnumber = "0310000001"\n[[numbers]]\nnumber = "0310000002"\n')
    gen = p.directory.generation
    with pytest.raises(psycopg.Error, match="disk on fire"):
        p.import_tenant(text)
    assert p.directory.generation == gen and p.directory.tenant("beta") is None
    assert store.count("tenant") == 1 and store.count("user") == 2 and store.count("number") == 1
    assert list(listen.notifies(timeout=0.3)) == []
    # a change that commits is announced once per tenant, with the node that made it
    p.user_update("anna", {"details": {"first_name": "Anne"}})
    got = list(listen.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in got] == ['{"node":"a","tenant":"acme"}']
    listen.close()
    store.close()


def test_nodes_starting_together_migrate_once(pg_dsn):
    async def open_many():
        return await asyncio.gather(*(asyncio.to_thread(PostgresStore, pg_dsn, f"n{i}") for i in range(4)))

    stores = asyncio.run(open_many())
    assert stores[0].connection.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == SCHEMA_VERSION
    for s in stores:
        s.close()


def test_another_nodes_change_is_swapped_in(pg_dsn):
    """Two provisioning services (nodes a and b) on one database: b's listener swaps in a's
    changes (new user, updated user, deleted user, deleted tenant) and ignores its own."""
    a_store, b_store = PostgresStore(pg_dsn, "a"), PostgresStore(pg_dsn, "b")
    a, b = Provisioning(a_store), Provisioning(b_store)
    removed_seen = []
    b.subscribe(lambda directory, removed: removed_seen.append(removed))

    async def scenario():
        listener = b_store.listener(b.reload_tenant, b.reload_all)
        listener.start(asyncio.get_running_loop())

        async def until(cond):
            for _ in range(200):
                if cond():
                    return True
                await asyncio.sleep(0.01)
            return False

        base.setup_acme(a)
        assert await until(lambda: b.directory.auth_user("ben") is not None)
        assert b.directory.number("0441234567").tenant == "acme"
        a.user_update("anna", {"details": {"first_name": "Anne"}})
        assert await until(lambda: b.directory.auth_user("anna").details.first_name == "Anne")
        a.user_delete("ben")
        assert await until(lambda: b.directory.auth_user("ben") is None)
        assert {"ben"} in removed_seen
        b.user_create({"tenant": "acme", "username": "carl", "sip_password": "secret3"})
        assert await until(lambda: a.directory.auth_user("carl") is None)  # a has no listener
        a.tenant_delete("acme")
        assert await until(lambda: b.directory.tenant("acme") is None)
        assert b.directory.auth_user("anna") is None and b.directory.auth_user("carl") is None
        assert listener.stats["notifications"] >= 5
        listener.stop()

    asyncio.run(scenario())
    a_store.close()
    b_store.close()
