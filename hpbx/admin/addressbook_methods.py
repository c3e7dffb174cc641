"""Address-book entries of the admin method table (``hpbx.admin.methods`` imports this at its
end): ``addressbook.*`` over ``hpbx.pbx.addressbook.AddressBooks`` (FEATURES 16).

Every method takes the tenant; ``user`` names a user's personal book (absent: the global book).
An entry is named by its ``id`` and the tenant: an id of another tenant is "not found". CSV goes
in as text (``csv``, the file decoded by the caller) or as the file's bytes (``csv_base64``: the
server detects UTF-8 or ISO-8859-1); ``addressbook.export`` answers both.
"""
from __future__ import annotations

import asyncio
import base64
import binascii

from hpbx.admin import methods as M
from hpbx.admin.protocol import INVALID_PARAMS, RpcError

MAX_FILE = 64 << 20  # bytes of one CSV file read from a path

_TENANT = M.Param("tenant", "str", required=True, help="the tenant")
_USER = M.Param("user", "str", help="a user's personal book (default: the tenant's global book)")
_ID = M.Param("id", "int", required=True, help="the entry's id", min=1)
_FIELDS = (
    M.Param("first_name", "str", help="first name"),
    M.Param("last_name", "str", help="last name"),
    M.Param("company", "str", help="company"),
    M.Param("private", "str", help="private number (text: leading zeros and + kept)"),
    M.Param("office", "str", help="office number"),
    M.Param("mobile", "str", help="mobile number"),
)


def _books(ctx):
    return M._need(ctx, "addressbooks", "address books")


def _owners(p: dict) -> tuple[str, ...] | None:
    return (p["user"],) if p.get("user") else ("",)


def ab_create(ctx, p):
    doc = {f.name: p[f.name] for f in _FIELDS if f.name in p}
    return _books(ctx).create(p["tenant"], p.get("user"), doc)


def ab_get(ctx, p):
    return _books(ctx).get(p["tenant"], p["id"], _owners(p))


def ab_update(ctx, p):
    changes = {f.name: p[f.name] for f in _FIELDS if f.name in p}
    return _books(ctx).update(p["tenant"], p["id"], changes, _owners(p))


def ab_delete(ctx, p):
    return _books(ctx).delete(p["tenant"], p["id"], _owners(p))


def ab_list(ctx, p):
    return _books(ctx).list(p["tenant"], p.get("user"), limit=p.get("limit", 1000), offset=p.get("offset", 0),
                            book="personal" if p.get("user") else "global")


def ab_search(ctx, p):
    return _books(ctx).search(p["tenant"], p["prefix"], p.get("user"), p.get("limit", 50))


async def ab_import(ctx, p):
    books = _books(ctx)
    if sum(k in p for k in ("csv", "csv_base64", "path")) != 1:
        raise RpcError(INVALID_PARAMS, "csv: give the file as csv (text), csv_base64 (its bytes) or path, one of them",
                       {"field": "csv", "reason": "one of csv, csv_base64, path"})
    if "path" in p:
        try:
            with open(p["path"], "rb") as f:
                data = f.read(MAX_FILE + 1)
        except OSError as exc:
            raise RpcError(INVALID_PARAMS, f"path: cannot read: {exc.strerror}", {"field": "path", "reason": "unreadable"})
        if len(data) > MAX_FILE:
            raise RpcError(INVALID_PARAMS, f"path: larger than {MAX_FILE} bytes", {"field": "path", "reason": "too large"})
    elif "csv" in p:
        data = p["csv"].encode("utf-8")
    else:
        try:
            data = base64.b64decode(p["csv_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise RpcError(INVALID_PARAMS, "csv_base64: not base64", {"field": "csv_base64", "reason": "not base64"})
    books._tenant(p["tenant"])
    return await asyncio.to_thread(books.import_csv, p["tenant"], data)


async def ab_export(ctx, p):
    data, fmt, n = await asyncio.to_thread(_books(ctx).export_csv, p["tenant"], p.get("encoding"))
    return {"tenant": p["tenant"], "entries": n, "encoding": fmt.encoding,
            "csv": data.decode(fmt.encoding, errors="replace").lstrip("\ufeff"),
            "csv_base64": base64.b64encode(data).decode()}


M._add("addressbook.create", ab_create, "Add an entry to the tenant's global book or a user's personal book.",
       _TENANT, _USER, *_FIELDS)
M._add("addressbook.get", ab_get, "Show one entry.", _TENANT, _ID, _USER)
M._add("addressbook.update", ab_update, "Change fields of an entry; fields not given keep their value.",
       _TENANT, _ID, _USER, *_FIELDS)
M._add("addressbook.delete", ab_delete, "Delete an entry.", _TENANT, _ID, _USER)
M._add("addressbook.list", ab_list,
       "One book's entries (at most 1000 unless limit says otherwise) and its total count.",
       _TENANT, _USER, *M.PAGE)
M._add("addressbook.search", ab_search,
       "Entries whose first name, last name, company or a number starts with the prefix (every word "
       "must match), over the user's personal book (if given) and the global book.",
       _TENANT, M.Param("prefix", "str", required=True, help="what the name or number starts with"),
       _USER, M.Param("limit", "int", help="at most this many (default 50)", min=1, max=1000),
       columns=("id", "book", "first_name", "last_name", "company", "private", "office", "mobile"))
M._add("addressbook.import", ab_import,
       "Replace the tenant's global book by a CSV file (UTF-8 or ISO-8859-1, ';', columns First name;"
       "Last name;Company;Number private;Number office;Number mobile); all or nothing, errors name "
       "line and column.",
       _TENANT, M.Param("csv", "str", help="the file as text"),
       M.Param("csv_base64", "str", help="the file's bytes, base64 (encoding detected)"),
       M.Param("path", "str", help="a file on the server's machine (admin socket only; for big books)"))
M._add("addressbook.export", ab_export,
       "The tenant's global book as CSV, in the format it was imported in (csv and csv_base64).",
       _TENANT, M.Param("encoding", "str", help="write this encoding instead", choices=("utf-8", "iso-8859-1")))

from hpbx.admin import scope as _scope  # noqa: E402

_scope.LOCAL_ONLY_PARAMS["addressbook.import"] = ("path",)  # web accounts upload the bytes instead
for _verb in ("create", "get", "update", "delete", "list", "search", "import", "export"):
    _scope.RULES[f"addressbook.{_verb}"] = "tenant"
