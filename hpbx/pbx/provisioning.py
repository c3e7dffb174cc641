"""The provisioning service the admin layer calls: create, read, update, delete and list every
provisioned object, with plain JSON-able dicts in and out (method names follow the admin
methods: ``user_create`` serves ``user.create``).

Every change is validated first (the object on its own, then against the rest of its tenant),
then written in one store transaction, then a new ``Directory`` is swapped in: a request that
fails changes nothing, and a change is seen by the next call. Errors: ``ValidationError(field,
reason)`` and ``NotFoundError(kind, key)``.

Updates take the fields to change (``details`` and ``flags`` merge key by key); an object's key
(tenant, username, name, number, id) cannot be changed by an update.
"""
from __future__ import annotations

import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import tomli_w

from hpbx.errors import NotFoundError, ValidationError
from hpbx.pbx import cdr_export, router
from hpbx.pbx.directory import Directory
from hpbx.pbx.stored import rebuild
from hpbx.pbx.model import (
    Announcement, Cdr, Group, PublicNumber, SpecialSwitch, Tenant, TenantObjects, Trunk, User,
    check_references, number_keys, references_to, slots_from_list,
)
from hpbx.store.sqlite import Store

if TYPE_CHECKING:
    from hpbx.store.postgres import PostgresStore

_EXPORT_SECTIONS = ("trunks", "users", "groups", "announcements", "numbers", "switches")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(text: str) -> str:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(text)
    return when.astimezone(timezone.utc).isoformat()


def _in(prefix: str, exc: ValidationError) -> ValidationError:
    return ValidationError(f"{prefix}.{exc.field}" if prefix else exc.field, exc.reason)


def _merge(current: dict, changes: Any, keys: Iterable[str]) -> dict:
    if not isinstance(changes, dict):
        raise ValidationError("changes", "must be an object of fields to change")
    for k in keys:
        if k in changes and changes[k] != current.get(k):
            raise ValidationError(k, f"cannot be changed (it is the object's key); delete and create instead")
    merged = dict(current)
    for k, v in changes.items():
        if k in ("details", "flags", "forward") and isinstance(v, dict) and isinstance(current.get(k), dict):
            merged[k] = {**current[k], **v}
        else:
            merged[k] = v
    return merged


class Provisioning:
    """The domain service over one ``Store``; ``directory`` is the current snapshot."""

    def __init__(self, store: "Store | PostgresStore", clock: Callable[[], datetime] = _now):
        self.store = store
        self.clock = clock
        self._listeners: list[Callable[[Directory], None]] = []
        self.directory = Directory.build(self._load())

    # -- plumbing

    def subscribe(self, listener: Callable[[Directory, set], None]) -> None:
        """``listener(directory, removed_usernames)`` runs after every swap (e.g. to drop the
        registrations of deleted users)."""
        self._listeners.append(listener)

    def _load(self) -> list[TenantObjects]:
        return self._build(self.store.load())

    @staticmethod
    def _build(docs: dict[str, list[dict]]) -> list[TenantObjects]:
        tenants: dict[str, TenantObjects] = {}
        for d in docs["tenant"]:
            tenants[d["name"]] = TenantObjects(Tenant.from_dict(d))
        for kind, cls, attr, key in (
            ("trunk", Trunk, "trunks", "name"), ("user", User, "users", "username"),
            ("group", Group, "groups", "name"), ("number", PublicNumber, "numbers", "number"),
            ("switch", SpecialSwitch, "switches", "name"), ("announcement", Announcement, "announcements", "id"),
        ):
            build = (lambda d, cls=cls: rebuild(cls, d)) if cls is User else cls.from_dict
            for d in docs[kind]:
                obj = build(d)
                getattr(tenants[obj.tenant], attr)[getattr(obj, key)] = obj
        return list(tenants.values())

    def reload_tenant(self, name: str) -> None:
        """Another node committed a change to this tenant (a store that shares its database,
        e.g. PostgreSQL): read the tenant again and swap it in, as a local change would."""
        built = self._build(self.store.load_tenant(name))
        old = self.directory.objects(name)
        new = built[0] if built else None
        self.directory = self.directory.replace_tenant(old, new)
        removed = set() if old is None else old.users.missing_from({} if new is None else new.users)
        for listener in self._listeners:
            listener(self.directory, removed)

    def reload_all(self) -> None:
        """Read every tenant again (after changes may have been missed)."""
        self.directory = Directory.build(self._load())
        for listener in self._listeners:
            listener(self.directory, None)

    def _objs(self, tenant: str, field: str | None = None) -> TenantObjects:
        objs = self.directory.objects(tenant) if isinstance(tenant, str) else None
        if objs is None:
            if field:
                raise ValidationError(field, f"tenant {tenant!r} does not exist")
            raise NotFoundError("tenant", tenant)
        return objs

    def _commit(self, old: TenantObjects | None, new: TenantObjects | None, write: Callable,
                check: Iterable[tuple[str, object]] = (), users=None) -> None:
        """Check, write in one transaction, swap the directory. ``check``: (field prefix, object)."""
        if new is not None:
            if old is not None and users is not None:
                # Single-object change: the current directory knows every other internal number.
                directory, name = self.directory, new.tenant.name
                new.internal_lookup = lambda n: [o for o in (directory.internal(name, n),) if o is not None]
            try:
                for prefix, obj in check:
                    try:
                        check_references(obj, new)
                    except ValidationError as exc:
                        raise _in(prefix, exc) from None
            finally:
                new.drop_indexes()  # must not keep the old directory alive
        with self.store.transaction() as tx:
            write(tx)
        self.directory = self.directory.replace_tenant(old, new, users)
        removed = set() if old is None else old.users.missing_from({} if new is None else new.users)
        for listener in self._listeners:
            listener(self.directory, removed)

    @staticmethod
    def _tenant_field(data: Any) -> str:
        if not isinstance(data, dict):
            raise ValidationError("params", "must be an object")
        tenant = data.get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise ValidationError("tenant", "is required")
        return tenant

    def _refuse_if_used(self, kind: str, key: object, objs: TenantObjects, field: str) -> None:
        used = references_to(kind, key, objs)
        if used:
            raise ValidationError(field, f"{kind} {key} is still used by: {'; '.join(used)}")

    # -- tenants

    def tenant_create(self, data: dict) -> dict:
        tenant = Tenant.from_dict(data)
        if self.directory.objects(tenant.name) is not None:
            raise ValidationError("name", f"tenant {tenant.name!r} already exists")
        new = TenantObjects(tenant)
        self._commit(None, new, lambda tx: tx.put("tenant", tenant.to_dict()), [("", tenant)])
        return tenant.to_dict()

    def tenant_get(self, name: str) -> dict:
        objs = self._objs(name)
        return {**objs.tenant.to_dict(), "users": len(objs.users), "numbers": len(objs.numbers)}

    def tenant_update(self, name: str, changes: dict) -> dict:
        old = self._objs(name)
        tenant = Tenant.from_dict(_merge(old.tenant.to_dict(), changes, ("name",)))
        new = TenantObjects(tenant, old.users, old.groups, old.trunks, old.numbers, old.switches,
                            old.announcements)
        self._commit(old, new, lambda tx: tx.put("tenant", tenant.to_dict()), [("", tenant)], users=())
        return tenant.to_dict()

    def tenant_delete(self, name: str) -> dict:
        old = self._objs(name)
        self._commit(old, None, lambda tx: tx.delete("tenant", name))
        return {"name": name, "deleted": True}

    def tenant_list(self) -> list[dict]:
        return [self.tenant_get(t.name) for t in sorted(self.directory.tenants(), key=lambda t: t.name)]

    # -- users

    def user_create(self, data: dict) -> dict:
        objs = self._objs(self._tenant_field(data), "tenant")
        user = User.from_dict(data)
        if self.directory.user(user.username) is not None:
            raise ValidationError("username", f"{user.username!r} is already taken")
        return self._put_user(objs, None, user)

    def _put_user(self, old_objs: TenantObjects, before: User | None, user: User) -> dict:
        new = old_objs.copy("users")
        new.users[user.username] = user
        self._commit(old_objs, new, lambda tx: tx.put("user", user.to_dict()), [("", user)],
                     users=[(before, user)])
        return user.to_dict()

    def _user(self, username: str) -> User:
        user = self.directory.user(username) if isinstance(username, str) else None
        if user is None:
            raise NotFoundError("user", username)
        return user

    def user_get(self, username: str) -> dict:
        return self._user(username).to_dict()

    def user_update(self, username: str, changes: dict) -> dict:
        before = self._user(username)
        user = User.from_dict(_merge(before.to_dict(), changes, ("tenant", "username")))
        return self._put_user(self._objs(before.tenant), before, user)

    def user_delete(self, username: str) -> dict:
        user = self._user(username)
        old = self._objs(user.tenant)
        self._refuse_if_used("user", username, old, "username")
        new = old.copy("users")
        del new.users[username]
        self._commit(old, new, lambda tx: tx.delete("user", username), users=[(user, None)])
        return {"username": username, "deleted": True}

    def user_list(self, tenant: str | None = None) -> list[dict]:
        if tenant is not None:
            self._objs(tenant)
            users: Iterable[User] = self.directory.users_of(tenant)
        else:
            users = (u for t in self.directory.tenants() for u in self.directory.users_of(t.name))
        return [u.to_dict() for u in sorted(users, key=lambda u: u.username)]

    def licence_counts(self) -> dict:
        users = cti = 0
        for t in self.directory.tenants():
            for u in self.directory.users_of(t.name):
                users += 1
                cti += u.flags.cti_access
        return {"users": users, "cti_users": cti}

    # -- objects keyed by (tenant, name): groups, trunks, switches

    def _named_create(self, kind: str, cls: type, attr: str, data: dict) -> dict:
        objs = self._objs(self._tenant_field(data), "tenant")
        obj = cls.from_dict(data)
        if obj.name in getattr(objs, attr):
            raise ValidationError("name", f"{kind} {obj.name!r} already exists in tenant {obj.tenant!r}")
        return self._named_put(kind, attr, objs, obj)

    def _named_put(self, kind: str, attr: str, objs: TenantObjects, obj) -> dict:
        new = objs.copy(attr)
        getattr(new, attr)[obj.name] = obj
        self._commit(objs, new, lambda tx: tx.put(kind, obj.to_dict()), [("", obj)], users=())
        return obj.to_dict()

    def _named(self, kind: str, attr: str, tenant: str, name: str):
        objs = self._objs(tenant)
        obj = getattr(objs, attr).get(name)
        if obj is None:
            raise NotFoundError(kind, f"{tenant}/{name}")
        return objs, obj

    def _named_update(self, kind: str, cls: type, attr: str, tenant: str, name: str, changes: dict) -> dict:
        objs, obj = self._named(kind, attr, tenant, name)
        return self._named_put(kind, attr, objs, cls.from_dict(_merge(obj.to_dict(), changes, ("tenant", "name"))))

    def _named_delete(self, kind: str, attr: str, tenant: str, name: str) -> dict:
        objs, _ = self._named(kind, attr, tenant, name)
        if kind != "switch":
            self._refuse_if_used(kind, name, objs, "name")
        new = objs.copy(attr)
        del getattr(new, attr)[name]
        self._commit(objs, new, lambda tx: tx.delete(kind, tenant, name), users=())
        return {"tenant": tenant, "name": name, "deleted": True}

    def _named_list(self, attr: str, tenant: str | None) -> list[dict]:
        tenants = [self._objs(tenant)] if tenant is not None else [
            self.directory.objects(t.name) for t in self.directory.tenants()]
        return [o.to_dict() for objs in tenants for o in getattr(objs, attr).values()]

    def group_create(self, data: dict) -> dict:
        return self._named_create("group", Group, "groups", data)

    def group_get(self, tenant: str, name: str) -> dict:
        return self._named("group", "groups", tenant, name)[1].to_dict()

    def group_update(self, tenant: str, name: str, changes: dict) -> dict:
        return self._named_update("group", Group, "groups", tenant, name, changes)

    def group_delete(self, tenant: str, name: str) -> dict:
        return self._named_delete("group", "groups", tenant, name)

    def group_list(self, tenant: str | None = None) -> list[dict]:
        return self._named_list("groups", tenant)

    def trunk_create(self, data: dict) -> dict:
        return self._named_create("trunk", Trunk, "trunks", data)

    def trunk_get(self, tenant: str, name: str) -> dict:
        return self._named("trunk", "trunks", tenant, name)[1].to_dict()

    def trunk_update(self, tenant: str, name: str, changes: dict) -> dict:
        return self._named_update("trunk", Trunk, "trunks", tenant, name, changes)

    def trunk_delete(self, tenant: str, name: str) -> dict:
        return self._named_delete("trunk", "trunks", tenant, name)

    def trunk_list(self, tenant: str | None = None) -> list[dict]:
        return self._named_list("trunks", tenant)

    def switch_create(self, data: dict) -> dict:
        return self._named_create("switch", SpecialSwitch, "switches", data)

    def switch_get(self, tenant: str, name: str) -> dict:
        return self._named("switch", "switches", tenant, name)[1].to_dict()

    def switch_update(self, tenant: str, name: str, changes: dict) -> dict:
        return self._named_update("switch", SpecialSwitch, "switches", tenant, name, changes)

    def switch_delete(self, tenant: str, name: str) -> dict:
        return self._named_delete("switch", "switches", tenant, name)

    def switch_list(self, tenant: str | None = None) -> list[dict]:
        return self._named_list("switches", tenant)

    def switch_set(self, tenant: str, name: str, auto_off_at: str = "") -> dict:
        """Switch on now: it overrides its numbers from the next call on (latest switched on wins)."""
        changes = {"on": True, "switched_on_at": self.clock().isoformat(), "auto_off_at": auto_off_at}
        return self.switch_update(tenant, name, changes)

    def switch_clear(self, tenant: str, name: str) -> dict:
        return self.switch_update(tenant, name, {"on": False, "auto_off_at": ""})

    # -- public numbers

    def _number(self, number: str) -> PublicNumber:
        found = self.directory.number(number) if isinstance(number, str) else None
        if found is None:
            raise NotFoundError("number", number)
        return found

    def _put_number(self, objs: TenantObjects, n: PublicNumber) -> dict:
        new = objs.copy("numbers")
        new.numbers[n.number] = n
        self._commit(objs, new, lambda tx: tx.put("number", n.to_dict()), [("", n)], users=())
        return n.to_dict()

    def number_create(self, data: dict) -> dict:
        objs = self._objs(self._tenant_field(data), "tenant")
        n = PublicNumber.from_dict(data)
        for key in number_keys(n.number):
            taken = self.directory.number(key)
            if taken is not None:
                raise ValidationError("number", f"{n.number} is already provisioned (as {taken.number} "
                                                f"in tenant {taken.tenant!r})")
        return self._put_number(objs, n)

    def number_get(self, number: str) -> dict:
        return self._number(number).to_dict()

    def number_update(self, number: str, changes: dict) -> dict:
        current = self._number(number)
        n = PublicNumber.from_dict(_merge(current.to_dict(), changes, ("tenant", "number")))
        return self._put_number(self._objs(current.tenant), n)

    def number_set_slots(self, number: str, slots: list) -> dict:
        current = self._number(number)
        n = PublicNumber(current.tenant, current.number, current.usage, current.name, current.alert_info,
                         slots_from_list(slots), fax_mail=current.fax_mail)
        return self._put_number(self._objs(current.tenant), n)

    def number_delete(self, number: str) -> dict:
        n = self._number(number)
        objs = self._objs(n.tenant)
        self._refuse_if_used("number", n.number, objs, "number")
        new = objs.copy("numbers")
        del new.numbers[n.number]
        self._commit(objs, new, lambda tx: tx.delete("number", n.number), users=())
        return {"number": n.number, "deleted": True}

    def number_list(self, tenant: str | None = None, filter: str = "") -> list[dict]:
        tenants = [self._objs(tenant)] if tenant is not None else [
            self.directory.objects(t.name) for t in self.directory.tenants()]
        numbers = sorted((n for o in tenants for n in o.numbers.values()), key=lambda n: n.number)
        return [n.to_dict() for n in router.filter_numbers(numbers, filter)]

    def number_find_unused(self, tenant: str) -> list[dict]:
        self._objs(tenant)
        return [n.to_dict() for n in router.find_unused(self.directory, tenant, self.clock())]

    def number_search(self, tenant: str, text: str) -> list[dict]:
        self._objs(tenant)
        return [n.to_dict() for n in router.search_numbers(self.directory, tenant, text)]

    # -- announcements (metadata; the audio file lives in the media directory)

    def announcement_create(self, data: dict) -> dict:
        objs = self._objs(self._tenant_field(data), "tenant")
        if data.get("id") is None:
            data = {**data, "id": max(objs.announcements, default=0) + 1}
        a = Announcement.from_dict(data)
        if a.id in objs.announcements:
            raise ValidationError("id", f"announcement {a.id} already exists in tenant {a.tenant!r}")
        return self._put_announcement(objs, a)

    def _put_announcement(self, objs: TenantObjects, a: Announcement) -> dict:
        new = objs.copy("announcements")
        new.announcements[a.id] = a
        self._commit(objs, new, lambda tx: tx.put("announcement", a.to_dict()), users=())
        return a.to_dict()

    def _announcement(self, tenant: str, announcement_id: int) -> tuple[TenantObjects, Announcement]:
        objs = self._objs(tenant)
        a = objs.announcements.get(announcement_id)
        if a is None:
            raise NotFoundError("announcement", f"{tenant}/{announcement_id}")
        return objs, a

    def announcement_get(self, tenant: str, id: int) -> dict:
        return self._announcement(tenant, id)[1].to_dict()

    def announcement_update(self, tenant: str, id: int, changes: dict) -> dict:
        objs, a = self._announcement(tenant, id)
        return self._put_announcement(objs, Announcement.from_dict(_merge(a.to_dict(), changes, ("tenant", "id"))))

    def announcement_delete(self, tenant: str, id: int) -> dict:
        objs, a = self._announcement(tenant, id)
        self._refuse_if_used("announcement", id, objs, "id")
        new = objs.copy("announcements")
        del new.announcements[id]
        self._commit(objs, new, lambda tx: tx.delete("announcement", tenant, id), users=())
        return {"tenant": tenant, "id": id, "deleted": True}

    def announcement_list(self, tenant: str | None = None) -> list[dict]:
        tenants = [self._objs(tenant)] if tenant is not None else [
            self.directory.objects(t.name) for t in self.directory.tenants()]
        return [a.to_dict() for o in tenants for a in sorted(o.announcements.values(), key=lambda a: a.id)]

    # -- call records

    def cdr_add(self, data: dict) -> dict:
        """Store one call record; its timestamps are kept in UTC so that lists sort and filter
        by time whatever offset the caller used."""
        if not isinstance(data, dict):
            raise ValidationError("params", "must be an object")
        cdr = Cdr.from_dict({**data, "id": 0})
        doc = cdr.to_dict()
        for key in ("start", "answer", "end"):
            if doc[key]:
                doc[key] = _utc(doc[key])
        doc["id"] = self.store.cdr_add(doc)
        return doc

    def cdr_add_many(self, batch: list[dict]) -> list[dict]:
        """Store several call records in one store transaction (the call service's flush: one
        commit per batch instead of one per call). All are checked first; one that does not
        validate raises before anything is written."""
        docs = []
        for data in batch:
            if not isinstance(data, dict):
                raise ValidationError("params", "must be an object")
            doc = Cdr.from_dict({**data, "id": 0}).to_dict()
            for key in ("start", "answer", "end"):
                if doc[key]:
                    doc[key] = _utc(doc[key])
            docs.append(doc)
        for doc, cdr_id in zip(docs, self.store.cdr_add_many(docs)):
            doc["id"] = cdr_id
        return docs

    def cdr_list(self, tenant: str | None = None, since: str = "", until: str = "",
                 limit: int = 100, offset: int = 0) -> list[dict]:
        """Newest first; ``since`` (inclusive) and ``until`` (exclusive) bound the start time."""
        bounds = {}
        for key, value in (("since", since), ("until", until)):
            if value:
                try:
                    bounds[key] = _utc(value)
                except ValueError:
                    raise ValidationError(key, f"{value!r} is not an ISO 8601 timestamp with offset") from None
        return self.store.cdr_list(tenant, bounds.get("since", ""), bounds.get("until", ""), limit, offset)

    def cdr_export(self, tenant: str | None = None, since: str = "", until: str = "",
                   format: str = "csv", limit: int = 100_000) -> dict:
        """CDRs as text (``cdr_export.FORMATS``), oldest first, at most ``limit`` of them."""
        if format not in cdr_export.FORMATS:
            raise ValidationError("format", f"must be one of {', '.join(cdr_export.FORMATS)}")
        rows: list[dict] = []
        while len(rows) < limit:
            page = self.cdr_list(tenant, since, until, min(10_000, limit - len(rows)), len(rows))
            rows += page
            if not page:
                break
        rows.reverse()
        return {"format": format, "rows": len(rows), "text": cdr_export.render(rows, format)}

    def cdr_purge(self, before: str) -> dict:
        """Retention: drop the records of calls that started before ``before``."""
        try:
            cut = _utc(before)
        except (TypeError, ValueError):
            raise ValidationError("before", f"{before!r} is not an ISO 8601 timestamp with offset") from None
        return {"before": cut, "deleted": self.store.cdr_purge(cut)}

    # -- tenant as TOML

    def export_tenant(self, name: str) -> str:
        """The tenant and everything it owns as TOML text (``import_tenant`` reads it back)."""
        objs = self._objs(name)
        doc: dict[str, Any] = {"tenant": objs.tenant.to_dict(compact=True)}
        sections = {
            "trunks": sorted(objs.trunks.values(), key=lambda o: o.name),
            "users": sorted(objs.users.values(), key=lambda o: o.username),
            "groups": sorted(objs.groups.values(), key=lambda o: o.name),
            "announcements": sorted(objs.announcements.values(), key=lambda o: o.id),
            "numbers": sorted(objs.numbers.values(), key=lambda o: o.number),
            "switches": sorted(objs.switches.values(), key=lambda o: o.name),
        }
        for key, items in sections.items():
            if items:
                doc[key] = [o.to_dict(compact=True, with_tenant=False) for o in items]
        return tomli_w.dumps(doc)

    def import_tenant(self, text: str, replace: bool = False) -> dict:
        """Create a tenant with everything in the TOML text, in one transaction.

        ``replace``: an existing tenant of that name is deleted in the same transaction.
        """
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError("toml", f"invalid TOML: {exc}") from None
        for key in doc:
            if key != "tenant" and key not in _EXPORT_SECTIONS:
                raise ValidationError(key, "unknown section")
        tenant = Tenant.from_dict(doc.get("tenant"), "tenant") if "tenant" in doc else None
        if tenant is None:
            raise ValidationError("tenant", "is required")
        old = self.directory.objects(tenant.name)
        if old is not None and not replace:
            raise ValidationError("tenant.name", f"tenant {tenant.name!r} already exists")
        objs = TenantObjects(tenant)
        parsed: list[tuple[str, str, object]] = []
        for section, cls, attr, key, kind in (
            ("trunks", Trunk, "trunks", "name", "trunk"), ("users", User, "users", "username", "user"),
            ("groups", Group, "groups", "name", "group"),
            ("announcements", Announcement, "announcements", "id", "announcement"),
            ("numbers", PublicNumber, "numbers", "number", "number"),
            ("switches", SpecialSwitch, "switches", "name", "switch"),
        ):
            items = doc.get(section, [])
            if not isinstance(items, list):
                raise ValidationError(section, "must be a list of tables")
            for i, item in enumerate(items):
                path = f"{section}[{i}]"
                obj = cls.from_dict(item, path, tenant=tenant.name)
                k = getattr(obj, key)
                if k in getattr(objs, attr):
                    raise ValidationError(f"{path}.{key}", f"{k!r} appears twice")
                getattr(objs, attr)[k] = obj
                parsed.append((path, kind, obj))
        for path, kind, obj in parsed:
            if kind == "user":
                other = self.directory.user(obj.username)
                if other is not None and other.tenant != tenant.name:
                    raise ValidationError(f"{path}.username", f"{obj.username!r} is already taken")
            if kind == "number":
                for k in number_keys(obj.number):
                    other = self.directory.number(k)
                    if other is not None and other.tenant != tenant.name:
                        raise ValidationError(f"{path}.number", f"{obj.number} is already provisioned "
                                                                f"in tenant {other.tenant!r}")
                    if k != obj.number and k in objs.numbers:
                        raise ValidationError(f"{path}.number", f"{obj.number} is listed twice (as {k})")

        def write(tx) -> None:
            if old is not None:
                tx.delete("tenant", tenant.name)
            tx.put("tenant", tenant.to_dict())
            for _, kind, obj in parsed:
                tx.put(kind, obj.to_dict())

        self._commit(old, objs, write, [("tenant", tenant)] + [(p, o) for p, _, o in parsed])
        return {"tenant": tenant.name, **{s: len(doc.get(s, [])) for s in _EXPORT_SECTIONS}}

    def import_file(self, path: str | Path, replace: bool = False) -> dict:
        return self.import_tenant(Path(path).read_text(encoding="utf-8"), replace)

    def provision_if_empty(self, paths: Iterable[str | Path]) -> list[str]:
        """Import the given tenant files when the store holds no tenant yet (first start)."""
        if not self.store.is_empty():
            return []
        return [self.import_file(p)["tenant"] for p in paths]
