"""Admin methods of the user mailboxes (``mailbox.*``, hpbx.pbx.voicemail), added to the one
method table. The mailbox *settings* are the user's ``mailbox`` object (``user.update``)."""
from __future__ import annotations

import base64

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import PAGE, Param, _add, _need, _page


def _vm(ctx: AdminContext):
    return _need(ctx, "voicemail", "voicemail")


def mailbox_list(ctx: AdminContext, p: dict) -> list:
    return _page(_vm(ctx).list_messages(p["user"]), p)


def mailbox_counts(ctx: AdminContext, p: dict) -> dict:
    return _vm(ctx).counts(p["user"])


def mailbox_delete(ctx: AdminContext, p: dict) -> dict:
    return _vm(ctx).delete_message(p["user"], p["id"])


def mailbox_mark(ctx: AdminContext, p: dict) -> dict:
    return _vm(ctx).mark_message(p["user"], p["id"], p["state"])


def mailbox_get(ctx: AdminContext, p: dict) -> dict:
    vm = _vm(ctx)
    audio = vm.message_audio(p["user"], p["id"])
    return {**vm.store.get(p["user"], p["id"]), "wav_base64": base64.b64encode(audio).decode()}


_USER = Param("user", "str", required=True, help="username of the mailbox owner")
_ID = Param("id", "str", required=True, help="message id (as mailbox.list lists it)")
_add("mailbox.list", mailbox_list, "Messages kept in a user's mailbox (new first, oldest first).",
     _USER, *PAGE, columns=("id", "state", "caller", "caller_name", "received_at", "duration_ms"))
_add("mailbox.counts", mailbox_counts, "New and old messages of a user's mailbox (what MWI says).", _USER)
_add("mailbox.get", mailbox_get, "One message with its recording (WAV, base64) for download.", _USER, _ID)
_add("mailbox.delete", mailbox_delete, "Delete a message (the user's phones get an MWI NOTIFY).", _USER, _ID)
_add("mailbox.mark", mailbox_mark, "Mark a message new or old (the user's phones get an MWI NOTIFY).",
     _USER, _ID, Param("state", "str", required=True, help="new or old", choices=("new", "old")))
