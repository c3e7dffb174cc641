"""An immutable snapshot of everything provisioned, indexed for the lookups of every call.

Provisioning builds a new ``Directory`` after each change and swaps its reference in one
assignment, so a call or a REGISTER always sees one consistent state. Readers must not mutate
what they get. A change in one tenant re-indexes only that tenant (and, for a user change,
only that user), so the swap stays cheap with many users.
"""
from __future__ import annotations

from typing import Iterable
from zoneinfo import ZoneInfo

from hpbx.pbx.model import (
    Announcement, Group, PublicNumber, SpecialSwitch, Tenant, TenantObjects, Trunk, User, number_keys,
)
from hpbx.pbx.schedule import zone
from hpbx.pbx.snapshot import SharedDict


class Directory:
    __slots__ = ("_tenants", "_users", "_numbers", "_internal", "_switches", "generation")

    def __init__(self) -> None:
        self._tenants: dict[str, TenantObjects] = {}
        self._users: SharedDict = SharedDict()  # username -> user, server-wide
        self._numbers: dict[str, PublicNumber] = {}  # every spelling -> number
        self._internal: SharedDict = SharedDict()  # (tenant, internal number) -> user or group
        self._switches: dict[str, tuple[SpecialSwitch, ...]] = {}  # number -> switches affecting it
        self.generation = 0

    @classmethod
    def build(cls, tenants: Iterable[TenantObjects]) -> "Directory":
        d = cls()
        for objs in tenants:
            d._index_tenant(objs)
            d._index_users(objs.users.values())
        return d

    # -- lookups the call path uses

    def auth_user(self, username: str) -> User | None:
        """The user a REGISTER/INVITE digest username names (server-wide), or None."""
        return self._users.get(username)

    user = auth_user

    def tenant(self, name: str) -> Tenant | None:
        objs = self._tenants.get(name)
        return None if objs is None else objs.tenant

    def objects(self, name: str) -> TenantObjects | None:
        """Every object of a tenant (read-only), or None."""
        return self._tenants.get(name)

    def tenants(self) -> list[Tenant]:
        return [o.tenant for o in self._tenants.values()]

    def zone(self, tenant: str) -> ZoneInfo:
        return zone(self._tenants[tenant].tenant.timezone)

    def internal(self, tenant: str, number: str) -> User | Group | None:
        return self._internal.get((tenant, number))

    def user_by_internal(self, tenant: str, number: str) -> User | None:
        found = self._internal.get((tenant, number))
        return found if isinstance(found, User) else None

    def number(self, dialled: str) -> PublicNumber | None:
        """A public number by any spelling (0441234567, +41441234567, 0041441234567)."""
        return self._numbers.get(dialled)

    def group(self, tenant: str, name: str) -> Group | None:
        objs = self._tenants.get(tenant)
        return None if objs is None else objs.groups.get(name)

    def trunk(self, tenant: str, name: str | None = None) -> Trunk | None:
        """A trunk by name, or (no name) the tenant's trunk for external numbers."""
        objs = self._tenants.get(tenant)
        if objs is None:
            return None
        return objs.trunks.get(name if name is not None else objs.tenant.trunk)

    def switches_for(self, number: str) -> tuple[SpecialSwitch, ...]:
        return self._switches.get(number, ())

    def announcement(self, tenant: str, announcement_id: int) -> Announcement | None:
        objs = self._tenants.get(tenant)
        return None if objs is None else objs.announcements.get(announcement_id)

    def users_of(self, tenant: str) -> Iterable[User]:
        objs = self._tenants.get(tenant)
        return () if objs is None else objs.users.values()

    def __len__(self) -> int:
        return len(self._users)

    # -- building new snapshots

    def replace_tenant(self, old: TenantObjects | None, new: TenantObjects | None,
                       users: Iterable[tuple[User | None, User | None]] | None = None) -> "Directory":
        """A new snapshot with one tenant replaced (``new`` None: removed, ``old`` None: added).

        ``users``: the (before, after) pairs of the users that changed, when only those did;
        None re-indexes every user of the tenant.
        """
        d = Directory()
        d._tenants = dict(self._tenants)
        # An empty ``users``: no user changed, the server-wide user index is shared.
        d._users = self._users if users is not None and not users else self._users.copy()
        d._internal = self._internal.copy()
        d.generation = self.generation + 1
        if (old is not None and new is not None and old.numbers is new.numbers
                and old.groups is new.groups and old.switches is new.switches):
            # Numbers, groups and switches are shared: their indexes stay as they are.
            d._numbers, d._switches = self._numbers, self._switches
            d._tenants[new.tenant.name] = new
        else:
            d._numbers = dict(self._numbers)
            d._switches = dict(self._switches)
            if old is not None:
                d._unindex_tenant(old)
            if new is not None:
                d._index_tenant(new)
        if users is None:
            if old is not None:
                d._unindex_users(old.users.values())
            if new is not None:
                d._index_users(new.users.values())
        else:
            d._unindex_users(before for before, _ in users if before is not None)
            d._index_users(after for _, after in users if after is not None)
        return d

    def _index_tenant(self, objs: TenantObjects) -> None:
        name = objs.tenant.name
        self._tenants[name] = objs
        for n in objs.numbers.values():
            for key in number_keys(n.number):
                self._numbers[key] = n
        for g in objs.groups.values():
            if g.internal_number:
                self._internal[(name, g.internal_number)] = g
        for sw in objs.switches.values():
            for n in sw.numbers:
                self._switches[n] = self._switches.get(n, ()) + (sw,)

    def _unindex_tenant(self, objs: TenantObjects) -> None:
        name = objs.tenant.name
        self._tenants.pop(name, None)
        for n in objs.numbers.values():
            for key in number_keys(n.number):
                if self._numbers.get(key) is n:
                    del self._numbers[key]
        for g in objs.groups.values():
            if g.internal_number and self._internal.get((name, g.internal_number)) is g:
                del self._internal[(name, g.internal_number)]
        for sw in objs.switches.values():
            for n in sw.numbers:
                left = tuple(s for s in self._switches.get(n, ()) if s is not sw)
                if left:
                    self._switches[n] = left
                else:
                    self._switches.pop(n, None)

    def _index_users(self, users: Iterable[User]) -> None:
        users = list(users)
        self._users.update((u.username, u) for u in users)
        self._internal.update(((u.tenant, u.internal_number), u) for u in users if u.internal_number)

    def _unindex_users(self, users: Iterable[User]) -> None:
        for u in users:
            if self._users.get(u.username) is u:
                del self._users[u.username]
            key = (u.tenant, u.internal_number)
            if u.internal_number and self._internal.get(key) is u:
                del self._internal[key]
