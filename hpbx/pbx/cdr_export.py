"""Call records as CSV (RFC 4180, one header line) or JSON lines, oldest first; the columns
are fixed so that a spreadsheet or a billing import keeps working when CDRs grow fields."""
from __future__ import annotations

import csv
import io

import orjson

FORMATS = ("csv", "jsonl")
COLUMNS = ("id", "tenant", "call_id", "caller", "called", "slot", "switch", "targets_tried",
           "answered_by", "start", "answer", "end", "end_reason")


def render(cdrs: list[dict], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(orjson.dumps(c).decode() + "\n" for c in cdrs)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for c in cdrs:
        row = []
        for col in COLUMNS:
            value = c.get(col, "")
            if isinstance(value, list):
                value = " ".join(map(str, value))
            row.append("" if value is None else value)
        writer.writerow(row)
    return out.getvalue()
