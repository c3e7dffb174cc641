"""Admin methods of call recording (``call.record``, ``recording.*``, hpbx.pbx.recording)."""
from __future__ import annotations

import base64

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import PAGE, Param, _add, _need, _page


def _rec(ctx: AdminContext):
    return _need(ctx, "voicemail", "call recording").recorder


def call_record(ctx: AdminContext, p: dict) -> dict:
    rec = _rec(ctx)
    if p["action"] == "start":
        return rec.start(p["call_id"], p["user"])
    return rec.stop(p["call_id"], p["user"])


def recording_list(ctx: AdminContext, p: dict) -> list:
    return _page(_rec(ctx).list(p.get("tenant")), p)


def recording_get(ctx: AdminContext, p: dict) -> dict:
    meta, data = _rec(ctx).get(p["id"])
    return {**meta, "wav_base64": base64.b64encode(data).decode()}


_add("call.record", call_record,
     "Start or stop recording an answered call, for a party of it whose flag may_record is on "
     "(both directions mixed into one WAV: kept for recording.get and mailed to the user).",
     Param("call_id", "str", required=True, help="Call-ID as call.list shows it"),
     Param("user", "str", required=True, help="username of the party asking (needs may_record)"),
     Param("action", "str", required=True, help="start or stop", choices=("start", "stop")))
_add("recording.list", recording_list, "Finished call recordings kept for download.",
     Param("tenant", "str", help="only this tenant's"), *PAGE,
     columns=("id", "tenant", "user", "caller", "callee", "started_at", "duration_ms"))
_add("recording.get", recording_get, "One call recording with its WAV (base64).",
     Param("id", "str", required=True, help="recording id (as recording.list lists it)"))
