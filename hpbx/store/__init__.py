"""Persistent state: the embedded SQLite store (``Store``) of provisioned objects and CDRs."""
from hpbx.store.sqlite import SCHEMA_VERSION, Store, Transaction

__all__ = ["SCHEMA_VERSION", "Store", "Transaction"]
