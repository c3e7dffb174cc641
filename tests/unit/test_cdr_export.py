"""CDR export (CSV, JSON lines) and retention over the provisioning service (SQLite here; the
same tests run on PostgreSQL in tests/cluster)."""
import csv
import io

import orjson
import pytest

from hpbx.errors import ValidationError
from hpbx.pbx.provisioning import Provisioning
from hpbx.store import Store


@pytest.fixture
def prov(tmp_path):
    store = Store(tmp_path / "hpbx.sqlite3")
    yield Provisioning(store)
    store.close()


def add_calls(p):
    p.tenant_create({"name": "acme"})
    p.tenant_create({"name": "beta"})
    for i, (tenant, start) in enumerate([("acme", "2026-01-01T10:00:00+01:00"),
                                         ("beta", "2026-01-02T10:00:00+00:00"),
                                         ("acme", "2026-02-01T10:00:00+00:00")]):
        p.cdr_add({"tenant": tenant, "call_id": f"c{i}", "caller": "0311112222", "called": "0441110000",
                   "start": start, "end": start, "targets_tried": ["user:anna", "user:ben"],
                   "end_reason": 'caller hung up, "early"'})


def test_csv_oldest_first_with_fixed_columns_and_quoting(prov):
    add_calls(prov)
    out = prov.cdr_export(format="csv")
    assert out["rows"] == 3 and out["format"] == "csv"
    rows = list(csv.DictReader(io.StringIO(out["text"])))
    assert [r["call_id"] for r in rows] == ["c0", "c1", "c2"]
    assert rows[0]["start"] == "2026-01-01T09:00:00+00:00"  # stored in UTC
    assert rows[0]["targets_tried"] == "user:anna user:ben"
    assert rows[0]["end_reason"] == 'caller hung up, "early"'
    assert out["text"].startswith("id,tenant,call_id,caller,called,slot,")


def test_jsonl_filtered_by_tenant_and_time(prov):
    add_calls(prov)
    out = prov.cdr_export(tenant="acme", since="2026-01-15T00:00:00Z", format="jsonl")
    lines = [orjson.loads(line) for line in out["text"].splitlines()]
    assert [c["call_id"] for c in lines] == ["c2"] and out["rows"] == 1
    assert prov.cdr_export(limit=2)["rows"] == 2
    with pytest.raises(ValidationError) as info:
        prov.cdr_export(format="xml")
    assert info.value.field == "format"


def test_purge_keeps_what_started_at_or_after_the_cut(prov):
    add_calls(prov)
    assert prov.cdr_purge("2026-01-02T10:00:00+00:00")["deleted"] == 1
    assert [c["call_id"] for c in prov.cdr_list()] == ["c2", "c1"]
    with pytest.raises(ValidationError) as info:
        prov.cdr_purge("yesterday")
    assert info.value.field == "before"
