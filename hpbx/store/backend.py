"""Which store a server opens, from ``[store]``: the embedded SQLite file (the default) or
PostgreSQL for provisioning and CDRs; SQLite or Redis for registrations."""
from __future__ import annotations

import socket


def node_name(store_settings) -> str:
    return store_settings.node or socket.gethostname()


def open_store(store_settings):
    """The provisioning and CDR store: ``Store`` (SQLite) or ``PostgresStore``."""
    if store_settings.backend == "postgres":
        from hpbx.store.postgres import PostgresStore
        return PostgresStore(store_settings.dsn, node_name(store_settings))
    from hpbx.store.sqlite import Store
    return Store(store_settings.path)


def open_registrations(store_settings):
    """The registrar's store: ``RedisRegistrations`` when ``redis`` is set (``open()`` it
    before use), else the registrations table of the SQLite file."""
    if store_settings.redis:
        from hpbx.store.redis_registrations import RedisRegistrations
        return RedisRegistrations(store_settings.redis, node_name(store_settings))
    from hpbx.store.registrations import RegistrationStore
    return RegistrationStore(store_settings.path)
