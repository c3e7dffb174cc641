"""cdr.export and cdr.purge over the admin socket: the text comes back whole, bad values are
-32602 naming the field."""
from __future__ import annotations

import csv
import io

import orjson
import pytest

from hpbx.admin.protocol import INVALID_PARAMS, RpcError


def add(st):
    st.ctx.provisioning.tenant_create({"name": "acme"})
    for i in range(3):
        st.ctx.provisioning.cdr_add({"tenant": "acme", "call_id": f"c{i}", "caller": "0791112233",
                                     "called": "0445081111", "start": f"2026-11-25T10:0{i}:00+00:00"})


def test_cdr_export_and_purge(prov):
    st, _ = prov
    add(st)
    with st.client() as c:
        out = c.call("cdr.export", {"tenant": "acme"})
        assert out["format"] == "csv" and out["rows"] == 3
        assert [r["call_id"] for r in csv.DictReader(io.StringIO(out["text"]))] == ["c0", "c1", "c2"]
        lines = c.call("cdr.export", {"format": "jsonl", "since": "2026-11-25T10:01:00+00:00"})["text"]
        assert [orjson.loads(x)["call_id"] for x in lines.splitlines()] == ["c1", "c2"]
        for method, params, field in (("cdr.export", {"format": "xml"}, "format"),
                                      ("cdr.export", {"limit": 0}, "limit"),
                                      ("cdr.purge", {}, "before"),
                                      ("cdr.purge", {"before": "soon"}, "before")):
            with pytest.raises(RpcError) as err:
                c.call(method, params)
            assert err.value.code == INVALID_PARAMS and err.value.data["field"] == field, (method, params)
        assert c.call("cdr.purge", {"before": "2026-11-25T10:02:00+00:00"})["deleted"] == 2
        assert [r["call_id"] for r in c.call("cdr.list", {})] == ["c2"]
