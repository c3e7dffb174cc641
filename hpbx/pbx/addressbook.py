"""Address books (FEATURES 16, issue 14): a global book per tenant and a personal book per user.

An entry has first name, last name, company and three numbers (private, office, mobile), all
text: leading zeros, ``+`` and spaces stay as written. The entries live in their own tables of
the store file (not in the provisioning snapshot: a book may hold 100,000 entries), with
indexes for the two reads that must be fast:

* search by prefix (``addressbook.search``, CTI and admin): case-insensitive prefix of first
  name, last name, company or of any number (digits compared, ``+`` counts as ``00``), over the
  user's personal book and the tenant's global book; several words must each match a field;
* caller-name lookup on an incoming call (``caller_name``): the called user's personal book,
  then the global book. A number matches exactly (digits, ``+`` = ``00``), or else by its last
  nine digits when both numbers have at least nine (``+41 44 123 45 67`` finds ``044 123 45
  67``); the name is "First Last" or the company.

CSV (the seed's web import): UTF-8 or ISO-8859-1, detected (valid UTF-8 is UTF-8, with or
without BOM; otherwise ISO-8859-1, unless the file holds C0/C1 control bytes, which no text
in either encoding has: that is an error naming line and column), semicolon-separated, the
columns ``First name;Last name;Company;Number private;Number office;Number mobile``. A first
line whose first field is "First name" (or German "Vorname") is the header and must name
exactly those columns; without one, every line is an entry. Fields may be quoted ("a;b",
"" for a quote). Empty lines are skipped. An import replaces the global book in one
transaction, all or nothing: the first bad line is reported (``line N, column C (name)``) and
nothing is changed. Export writes the same format; for a book that was imported it writes the
file's encoding, BOM, header line, line ending, quoting and final newline, so an imported
file exports byte-identical (entries changed later are written in that format too).
"""
from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from hpbx.errors import NotFoundError, ValidationError
from hpbx.store.sqlite import connect

COLUMNS = ("First name", "Last name", "Company", "Number private", "Number office", "Number mobile")
FIELDS = ("first_name", "last_name", "company", "private", "office", "mobile")
GERMAN = ("Vorname", "Nachname", "Firma", "Nummer privat", "Nummer Geschäft", "Nummer mobil")
NAME_FIELDS = FIELDS[:3]
NUMBER_FIELDS = FIELDS[3:]
MAX_TEXT = 100
MAX_NUMBER = 32
MAX_ENTRIES = 200_000  # per book
TAIL = 9  # digits compared when numbers differ in their prefix (national / international form)
WEB_ROWS = 1000  # FEATURES 16: the web table shows at most this many

_NUMBER_RE = re.compile(r"[0-9+ ()/.\-]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

SCHEMA = """
CREATE TABLE IF NOT EXISTS addressbook (
    id         INTEGER PRIMARY KEY,
    tenant     TEXT NOT NULL,
    owner      TEXT NOT NULL,      -- '' = the tenant's global book, else a username
    first_name TEXT NOT NULL, last_name TEXT NOT NULL, company TEXT NOT NULL,
    private    TEXT NOT NULL, office TEXT NOT NULL, mobile TEXT NOT NULL,
    quoted     INTEGER NOT NULL DEFAULT 0,  -- bit i: field i was quoted in the imported CSV
    first_k    TEXT NOT NULL, last_k TEXT NOT NULL, company_k TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS addressbook_owner ON addressbook(tenant, owner, id);
CREATE INDEX IF NOT EXISTS addressbook_first ON addressbook(tenant, first_k);
CREATE INDEX IF NOT EXISTS addressbook_last ON addressbook(tenant, last_k);
CREATE INDEX IF NOT EXISTS addressbook_company ON addressbook(tenant, company_k);
CREATE TABLE IF NOT EXISTS addressbook_number (
    entry  INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    owner  TEXT NOT NULL,
    digits TEXT NOT NULL,   -- the number's digits, '+' as '00'
    tail   TEXT NOT NULL    -- its last nine digits
);
CREATE INDEX IF NOT EXISTS addressbook_number_digits ON addressbook_number(tenant, digits);
CREATE INDEX IF NOT EXISTS addressbook_number_tail ON addressbook_number(tenant, tail);
CREATE INDEX IF NOT EXISTS addressbook_number_entry ON addressbook_number(entry);
CREATE TABLE IF NOT EXISTS addressbook_format (
    tenant    TEXT PRIMARY KEY,
    encoding  TEXT NOT NULL,    -- utf-8 or iso-8859-1
    bom       INTEGER NOT NULL,
    newline   TEXT NOT NULL,
    header    TEXT,             -- the header line as imported; NULL = the file had none
    final_nl  INTEGER NOT NULL
);
"""


def digits_of(number: str) -> str:
    s = number.strip()
    lead = "00" if s.startswith("+") else ""
    return lead + "".join(c for c in s if c.isdigit())


def _key(text: str) -> str:
    return text.casefold().strip()


@dataclass(slots=True)
class Entry:
    id: int
    tenant: str
    owner: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    private: str = ""
    office: str = ""
    mobile: str = ""
    quoted: int = 0

    @property
    def name(self) -> str:
        full = f"{self.first_name} {self.last_name}".strip()
        return full or self.company

    def to_dict(self) -> dict:
        return {"id": self.id, "tenant": self.tenant, "book": "personal" if self.owner else "global",
                "owner": self.owner, "first_name": self.first_name, "last_name": self.last_name,
                "company": self.company, "private": self.private, "office": self.office,
                "mobile": self.mobile, "name": self.name}

    def values(self) -> tuple[str, ...]:
        return tuple(getattr(self, f) for f in FIELDS)


def check_fields(doc: dict, where: str = "") -> dict:
    """The six fields of ``doc`` (absent = ""), validated; ValidationError naming the field."""
    out = {}
    for f in FIELDS:
        v = doc.get(f, "")
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise ValidationError(where + f, "must be a string")
        problem = _field_problem(f, v)
        if problem:
            raise ValidationError(where + f, problem)
        out[f] = v
    if not any(out.values()):
        raise ValidationError(where + "first_name", "an entry needs a name, a company or a number")
    return out


def _field_problem(field: str, v: str) -> str:
    if field in NUMBER_FIELDS:
        if len(v) > MAX_NUMBER:
            return f"a number has at most {MAX_NUMBER} characters"
        if not _NUMBER_RE.fullmatch(v):
            return "a number holds digits, +, spaces and ( ) / . - only"
        if v and not any(c.isdigit() for c in v):
            return "a number needs at least one digit"
        return ""
    if len(v) > MAX_TEXT:
        return f"at most {MAX_TEXT} characters"
    if _CONTROL.search(v) or "\n" in v or "\r" in v or "\t" in v:
        return "control characters are not allowed"
    return ""


# ---------------------------------------------------------------------------- CSV

@dataclass(slots=True)
class CsvFormat:
    encoding: str = "utf-8"
    bom: bool = False
    newline: str = "\r\n"
    header: str | None = ";".join(COLUMNS)
    final_nl: bool = True


def _decode(data: bytes) -> tuple[str, str, bool]:
    """(text, encoding, bom); ValidationError naming line and column of an impossible byte."""
    bom = data.startswith(b"\xef\xbb\xbf")
    body = data[3:] if bom else data
    try:
        return body.decode("utf-8"), "utf-8", bom
    except UnicodeDecodeError as exc:
        if bom:
            _bad_byte(body, exc.start, "is not UTF-8 (the file starts with a UTF-8 byte order mark)")
    text = body.decode("iso-8859-1")
    m = _CONTROL.search(text)
    if m:
        _bad_byte(body, m.start(), "is neither UTF-8 nor ISO-8859-1 text")
    return text, "iso-8859-1", False


def _bad_byte(body: bytes, pos: int, what: str) -> None:
    line_start = body.rfind(b"\n", 0, pos) + 1
    line = body.count(b"\n", 0, pos) + 1
    col = _column_at(body[line_start:pos])
    raise ValidationError(f"line {line}, column {col} ({COLUMNS[min(col, 6) - 1]})",
                          f"byte 0x{body[pos]:02x} {what}")


def _column_at(prefix: bytes) -> int:
    """The CSV column (1-based) a position lies in, given the line's bytes before it."""
    col, quoted = 1, False
    for b in prefix:
        if b == 0x22:
            quoted = not quoted
        elif b == 0x3B and not quoted:
            col += 1
    return col


def _split(line: str, lineno: int) -> tuple[list[str], int]:
    """The fields of one line and the mask of quoted ones."""
    fields: list[str] = []
    mask = 0
    i, n = 0, len(line)
    while True:
        col = len(fields) + 1
        if i < n and line[i] == '"':
            j = i + 1
            buf = []
            while True:
                k = line.find('"', j)
                if k < 0:
                    raise ValidationError(f"line {lineno}, column {col}", "a quoted field is not closed")
                buf.append(line[j:k])
                if k + 1 < n and line[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            if i < n and line[i] != ";":
                raise ValidationError(f"line {lineno}, column {col}", "text after the closing quote")
            fields.append("".join(buf))
            if col <= 31:
                mask |= 1 << (col - 1)
        else:
            k = line.find(";", i)
            k = n if k < 0 else k
            fields.append(line[i:k])
            i = k
        if i >= n:
            return fields, mask
        i += 1  # the semicolon
        if i == n:
            fields.append("")
            return fields, mask


def parse_csv(data: bytes) -> tuple[list[tuple[tuple[str, ...], int]], CsvFormat]:
    """The entries of a CSV file (values, quote mask) and its format; ValidationError
    ("line N, column C (name)", reason) for the first problem."""
    text, encoding, bom = _decode(data)
    fmt = CsvFormat(encoding=encoding, bom=bom, header=None)
    first_nl = text.find("\n")
    fmt.newline = "\r\n" if first_nl > 0 and text[first_nl - 1] == "\r" else "\n"
    fmt.final_nl = text.endswith("\n")
    lines = text.split("\n")
    if fmt.final_nl:
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        fields, mask = _split(line, lineno)
        if lineno == 1 and fields and fields[0].strip().casefold() in ("first name", "vorname", "firstname"):
            for i, (got, en, de) in enumerate(zip(fields, COLUMNS, GERMAN)):
                if got.strip().casefold() not in (en.casefold(), de.casefold()):
                    raise ValidationError(f"line 1, column {i + 1}",
                                          f"header {got!r}: the columns are {';'.join(COLUMNS)}")
            if len(fields) != len(COLUMNS):
                raise ValidationError(f"line 1, column {min(len(fields), 6) + 1}",
                                      f"the header has {len(fields)} columns; the columns are {';'.join(COLUMNS)}")
            fmt.header = line
            continue
        if len(fields) != len(COLUMNS):
            col = min(len(fields) + 1, len(COLUMNS) + 1)
            raise ValidationError(f"line {lineno}, column {col}",
                                  f"{len(fields)} columns; the format has 6: {';'.join(COLUMNS)}")
        for i, (f, v) in enumerate(zip(FIELDS, fields)):
            problem = _field_problem(f, v)
            if problem:
                raise ValidationError(f"line {lineno}, column {i + 1} ({COLUMNS[i]})", problem)
        if not any(fields):
            raise ValidationError(f"line {lineno}, column 1 ({COLUMNS[0]})",
                                  "an entry needs a name, a company or a number")
        out.append((tuple(fields), mask))
        if len(out) > MAX_ENTRIES:
            raise ValidationError(f"line {lineno}", f"a book holds at most {MAX_ENTRIES} entries")
    return out, fmt


def _quote(v: str, forced: bool) -> str:
    if forced or ";" in v or '"' in v:
        return '"' + v.replace('"', '""') + '"'
    return v


def write_csv(rows: Iterable[tuple[tuple[str, ...], int]], fmt: CsvFormat) -> bytes:
    lines = []
    if fmt.header is not None:
        lines.append(fmt.header)
    for values, mask in rows:
        lines.append(";".join(_quote(v, bool(mask >> i & 1)) for i, v in enumerate(values)))
    text = fmt.newline.join(lines) + (fmt.newline if fmt.final_nl and lines else "")
    data = text.encode(fmt.encoding, errors="replace")
    return (b"\xef\xbb\xbf" if fmt.bom else b"") + data


# ---------------------------------------------------------------------------- the books

class AddressBooks:
    """The address books of every tenant, in the store file ``path``."""

    def __init__(self, path: str | Path, directory=None):
        self.db = connect(str(path), SCHEMA)  # writes (imports run in a thread)
        self.lock = threading.Lock()
        # reads: a second connection, so a long import (WAL) never holds up a caller-name
        # lookup on the event loop; it sees the last committed state
        self.rdb = self.db if str(path) == ":memory:" else connect(str(path))
        self.directory = directory  # () -> hpbx.pbx.directory.Directory (tenants and users)
        self.stats = {"lookups": 0, "lookup_hits": 0, "searches": 0, "imports": 0}

    def close(self) -> None:
        if self.rdb is not self.db:
            self.rdb.close()
        self.db.close()

    # -- checks
    def _tenant(self, tenant: str) -> None:
        if self.directory is not None and self.directory().objects(tenant) is None:
            raise NotFoundError("tenant", tenant)

    def _owner(self, tenant: str, user: str | None) -> str:
        if not user:
            return ""
        if self.directory is not None:
            u = self.directory().user(user)
            if u is None or u.tenant != tenant:
                raise NotFoundError("user", user)
        return user

    # -- writes
    def _insert(self, tenant: str, owner: str, values: tuple[str, ...], quoted: int = 0) -> int:
        first, last, company = values[:3]
        cur = self.db.execute(
            "INSERT INTO addressbook (tenant, owner, first_name, last_name, company, private, office, "
            "mobile, quoted, first_k, last_k, company_k) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (tenant, owner, *values, quoted, _key(first), _key(last), _key(company)))
        entry = cur.lastrowid
        self._index_numbers(entry, tenant, owner, values[3:])
        return entry

    def _index_numbers(self, entry: int, tenant: str, owner: str, numbers) -> None:
        rows = []
        for n in numbers:
            d = digits_of(n)
            if d:
                rows.append((entry, tenant, owner, d, d[-TAIL:]))
        if rows:
            self.db.executemany("INSERT INTO addressbook_number VALUES (?,?,?,?,?)", rows)

    def _tx(self):
        return _Tx(self)

    def create(self, tenant: str, user: str | None, doc: dict) -> dict:
        self._tenant(tenant)
        owner = self._owner(tenant, user)
        values = check_fields(doc)
        with self._tx():
            (count,) = self.db.execute("SELECT count(*) FROM addressbook WHERE tenant=? AND owner=?",
                                       (tenant, owner)).fetchone()
            if count >= MAX_ENTRIES:
                raise ValidationError("tenant", f"a book holds at most {MAX_ENTRIES} entries")
            entry = self._insert(tenant, owner, tuple(values[f] for f in FIELDS))
        return self.get(tenant, entry)

    def get(self, tenant: str, entry_id: int, owners: tuple[str, ...] | None = None) -> dict:
        e = self._entry(tenant, entry_id, owners)
        return e.to_dict()

    def _entry(self, tenant: str, entry_id: int, owners: tuple[str, ...] | None = None) -> Entry:
        row = self.rdb.execute("SELECT id, tenant, owner, first_name, last_name, company, private, office, "
                              "mobile, quoted FROM addressbook WHERE id=? AND tenant=?",
                              (entry_id, tenant)).fetchone()
        if row is None or (owners is not None and row[2] not in owners):
            raise NotFoundError("address book entry", entry_id)
        return Entry(*row)

    def update(self, tenant: str, entry_id: int, changes: dict, owners: tuple[str, ...] | None = None) -> dict:
        e = self._entry(tenant, entry_id, owners)
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise ValidationError(sorted(unknown)[0], f"unknown field; the fields are {', '.join(FIELDS)}")
        merged = {f: changes.get(f, getattr(e, f)) for f in FIELDS}
        values = check_fields(merged)
        with self._tx():
            self.db.execute("UPDATE addressbook SET first_name=?, last_name=?, company=?, private=?, office=?, "
                            "mobile=?, first_k=?, last_k=?, company_k=? WHERE id=?",
                            (*(values[f] for f in FIELDS), _key(values["first_name"]),
                             _key(values["last_name"]), _key(values["company"]), entry_id))
            self.db.execute("DELETE FROM addressbook_number WHERE entry=?", (entry_id,))
            self._index_numbers(entry_id, tenant, e.owner, tuple(values[f] for f in NUMBER_FIELDS))
        return self.get(tenant, entry_id)

    def delete(self, tenant: str, entry_id: int, owners: tuple[str, ...] | None = None) -> dict:
        self._entry(tenant, entry_id, owners)
        with self._tx():
            self.db.execute("DELETE FROM addressbook WHERE id=?", (entry_id,))
            self.db.execute("DELETE FROM addressbook_number WHERE entry=?", (entry_id,))
        return {"id": entry_id, "deleted": True}

    def import_csv(self, tenant: str, data: bytes) -> dict:
        """Replace the tenant's global book by the file's entries (all or nothing)."""
        self._tenant(tenant)
        rows, fmt = parse_csv(data)
        with self._tx():
            (before,) = self.db.execute("SELECT count(*) FROM addressbook WHERE tenant=? AND owner=''",
                                        (tenant,)).fetchone()
            self.db.execute("DELETE FROM addressbook_number WHERE tenant=? AND owner=''", (tenant,))
            self.db.execute("DELETE FROM addressbook WHERE tenant=? AND owner=''", (tenant,))
            for values, mask in rows:
                self._insert(tenant, "", values, mask)
            self.db.execute("INSERT OR REPLACE INTO addressbook_format VALUES (?,?,?,?,?,?)",
                            (tenant, fmt.encoding, int(fmt.bom), fmt.newline, fmt.header, int(fmt.final_nl)))
        self.stats["imports"] += 1
        return {"tenant": tenant, "imported": len(rows), "replaced": before, "encoding": fmt.encoding,
                "header": fmt.header is not None}

    def export_csv(self, tenant: str, encoding: str | None = None) -> tuple[bytes, CsvFormat, int]:
        self._tenant(tenant)
        row = self.rdb.execute("SELECT encoding, bom, newline, header, final_nl FROM addressbook_format "
                              "WHERE tenant=?", (tenant,)).fetchone()
        fmt = CsvFormat(row[0], bool(row[1]), row[2], row[3], bool(row[4])) if row else CsvFormat()
        if encoding and encoding != fmt.encoding:
            fmt = CsvFormat(encoding, False, fmt.newline, fmt.header if fmt.header is not None else
                            ";".join(COLUMNS), fmt.final_nl)
        rows = [(tuple(r[:6]), r[6]) for r in self.rdb.execute(
            "SELECT first_name, last_name, company, private, office, mobile, quoted FROM addressbook "
            "WHERE tenant=? AND owner='' ORDER BY id", (tenant,))]
        return write_csv(rows, fmt), fmt, len(rows)

    def drop(self, tenant: str, owner: str | None = None) -> int:
        """Forget a deleted tenant's books (owner None) or a deleted user's personal book."""
        with self._tx():
            if owner is None:
                self.db.execute("DELETE FROM addressbook_number WHERE tenant=?", (tenant,))
                self.db.execute("DELETE FROM addressbook_format WHERE tenant=?", (tenant,))
                return self.db.execute("DELETE FROM addressbook WHERE tenant=?", (tenant,)).rowcount
            self.db.execute("DELETE FROM addressbook_number WHERE tenant=? AND owner=?", (tenant, owner))
            return self.db.execute("DELETE FROM addressbook WHERE tenant=? AND owner=?", (tenant, owner)).rowcount

    # -- reads
    def list(self, tenant: str, user: str | None = None, limit: int = WEB_ROWS, offset: int = 0,
             book: str = "global") -> dict:
        """One book's entries (global, or the user's personal one) and the total count."""
        self._tenant(tenant)
        owner = self._owner(tenant, user) if book == "personal" else ""
        if book == "personal" and not owner:
            raise ValidationError("user", "the personal book needs the user")
        (total,) = self.rdb.execute("SELECT count(*) FROM addressbook WHERE tenant=? AND owner=?",
                                   (tenant, owner)).fetchone()
        rows = self.rdb.execute("SELECT id, tenant, owner, first_name, last_name, company, private, office, "
                               "mobile, quoted FROM addressbook WHERE tenant=? AND owner=? ORDER BY id "
                               "LIMIT ? OFFSET ?", (tenant, owner, limit, offset)).fetchall()
        return {"tenant": tenant, "book": book, "total": total, "entries": [Entry(*r).to_dict() for r in rows]}

    def search(self, tenant: str, text: str, user: str | None = None, limit: int = 50) -> list[dict]:
        """Entries of the user's personal book and the global book matching every word of ``text``
        as a prefix of a name, the company (or a word of them) or a number; personal ones first, then by name."""
        self._tenant(tenant)
        owner = self._owner(tenant, user) if user else ""
        words = text.split()
        if not words:
            raise ValidationError("prefix", "give at least one character to search for")
        self.stats["searches"] += 1
        owners = ("", owner) if owner else ("",)
        first = words[0]
        k = _key(first)
        hi = k + "\U0010ffff"
        ids: dict[int, None] = {}
        cap = max(limit * 20, 500)
        q = ",".join("?" * len(owners))
        for col in ("first_k", "last_k", "company_k"):
            for (i,) in self.rdb.execute(f"SELECT id FROM addressbook WHERE tenant=? AND {col} >= ? AND {col} < ? "
                                        f"AND owner IN ({q}) LIMIT ?", (tenant, k, hi, *owners, cap)):
                ids[i] = None
        d = digits_of(first)
        if d and (first.strip().lstrip("+").replace(" ", "").isdigit() or first.startswith("+")):
            for (i,) in self.rdb.execute(f"SELECT entry FROM addressbook_number WHERE tenant=? AND digits >= ? "
                                        f"AND digits < ? AND owner IN ({q}) LIMIT ?",
                                        (tenant, d, d + "\x7f", *owners, cap)):
                ids[i] = None
        if not ids:
            return []
        out: list[Entry] = []
        id_list = list(ids)
        for chunk in range(0, len(id_list), 500):
            part = id_list[chunk:chunk + 500]
            for r in self.rdb.execute("SELECT id, tenant, owner, first_name, last_name, company, private, office, "
                                     f"mobile, quoted FROM addressbook WHERE id IN ({','.join('?' * len(part))})",
                                     part):
                e = Entry(*r)
                if all(_word_matches(e, w) for w in words[1:]):
                    out.append(e)
        out.sort(key=lambda e: (e.owner == "", _key(e.last_name or e.company), _key(e.first_name), e.id))
        return [e.to_dict() for e in out[:limit]]

    def caller_name(self, tenant: str, username: str | None, number: str) -> str:
        """The name of ``number`` in the user's personal book, else in the global book; ""."""
        d = digits_of(number or "")
        self.stats["lookups"] += 1
        if len(d) < 3:
            return ""
        owners = (username, "") if username else ("",)
        rows = self.rdb.execute(
            "SELECT n.owner, n.digits, a.first_name, a.last_name, a.company FROM addressbook_number n "
            "JOIN addressbook a ON a.id = n.entry WHERE n.tenant=? AND n.tail=? LIMIT 50",
            (tenant, d[-TAIL:])).fetchall()
        best = None
        for owner, digits, first, last, company in rows:
            if owner not in owners:
                continue
            exact = digits == d
            if not exact and (len(digits) < TAIL or len(d) < TAIL):
                continue
            rank = (0 if owner else 2) + (0 if exact else 1)
            if best is None or rank < best[0]:
                best = (rank, f"{first} {last}".strip() or company)
        if best is None:
            return ""
        self.stats["lookup_hits"] += 1
        return best[1]

    def counts(self, tenant: str | None = None) -> dict:
        if tenant is None:
            (g,) = self.rdb.execute("SELECT count(*) FROM addressbook WHERE owner=''").fetchone()
            (p,) = self.rdb.execute("SELECT count(*) FROM addressbook WHERE owner<>''").fetchone()
        else:
            (g,) = self.rdb.execute("SELECT count(*) FROM addressbook WHERE tenant=? AND owner=''", (tenant,)).fetchone()
            (p,) = self.rdb.execute("SELECT count(*) FROM addressbook WHERE tenant=? AND owner<>''",
                                   (tenant,)).fetchone()
        return {"global_entries": g, "personal_entries": p, **self.stats}

    def directory_changed(self, directory, removed) -> None:
        """Provisioning listener: a deleted user's personal book and a deleted tenant's books go."""
        for username in removed or ():
            for (tenant,) in self.rdb.execute("SELECT DISTINCT tenant FROM addressbook WHERE owner=?",
                                             (username,)).fetchall():
                if directory.user(username) is None:
                    self.drop(tenant, username)
        if removed is None:
            return
        live = {t.name for t in directory.tenants()}
        for (tenant,) in self.rdb.execute("SELECT DISTINCT tenant FROM addressbook").fetchall():
            if tenant not in live:
                self.drop(tenant)


def _word_matches(e: Entry, word: str) -> bool:
    k = _key(word)
    if any(part.startswith(k) for f in NAME_FIELDS for part in _key(getattr(e, f)).split()):
        return True
    d = digits_of(word)
    return bool(d) and any(digits_of(getattr(e, f)).startswith(d) for f in NUMBER_FIELDS)


class _Tx:
    def __init__(self, books: AddressBooks):
        self.books = books

    def __enter__(self):
        self.books.lock.acquire()
        try:
            self.books.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.books.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.books.db.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.Error:
            pass
        finally:
            self.books.lock.release()
        return False
