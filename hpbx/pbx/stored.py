"""Rebuilding provisioned objects from the store's own documents without validating them again.

Every document in the store was written by ``to_dict`` of an object that ``from_dict`` had
validated, so reading it back at start-up does not need the field-by-field checks again
(~50 µs a user; at 1M users that was most of a minute before the server answered). ``rebuild``
constructs the object straight from the document:

- plain fields (str, int, bool, float, optional ones) are taken as they are;
- ``tuple[str, ...]`` fields become tuples;
- nested dataclasses (details, flags, forwarding rules) go through their own ``from_dict``,
  once per distinct content: objects are frozen, so users with the same flags share one
  ``UserFlags``.

Anything this does not know how to rebuild — a key that is not a field, a field of another
type, a missing required field — takes ``from_dict``, so a document written by an older or newer
version is still read (and checked) the careful way. ``tests/unit/test_stored.py`` checks that
``rebuild(User, u.to_dict()) == u`` for varied users, so a field added later that needs more than
this is caught there.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable

import orjson

_SLOW = object()
_MISSING = dataclasses.MISSING


def _nested(cls: type, path: str) -> Callable[[Any], Any]:
    cache: dict[bytes, Any] = {}
    from_dict = cls.from_dict

    def build(value: Any) -> Any:
        key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        obj = cache.get(key)
        if obj is None:
            obj = from_dict(value, path)
            if len(cache) < 65536:
                cache[key] = obj
        return obj

    return build


def _converter(hint: Any, name: str) -> Any:
    """None: take the value as it is; a callable: convert with it; _SLOW: not supported."""
    if hint in (str, int, bool, float):
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and inner[0] in (str, int, bool, float):
            return None
        return _SLOW
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] is str:
        return tuple
    if dataclasses.is_dataclass(hint) and hasattr(hint, "from_dict"):
        return _nested(hint, name)
    return _SLOW


class _Plan:
    __slots__ = ("converters", "required", "defaults")

    def __init__(self, cls: type):
        hints = typing.get_type_hints(cls)
        self.converters: dict[str, Any] = {}
        self.required: frozenset[str] = frozenset(
            f.name for f in dataclasses.fields(cls)
            if f.default is _MISSING and f.default_factory is _MISSING)
        # nested objects a document leaves out: one default instance shared by all (frozen),
        # instead of a default_factory call per object
        self.defaults: list[tuple[str, Any]] = []
        for f in dataclasses.fields(cls):
            self.converters[f.name] = _converter(hints[f.name], f.name)
            if f.default_factory is not _MISSING and dataclasses.is_dataclass(hints[f.name]):
                self.defaults.append((f.name, f.default_factory()))


_plans: dict[type, _Plan] = {}


def rebuild(cls: type, doc: dict) -> Any:
    """``cls`` from a document the store holds (see the module docstring)."""
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = _Plan(cls)
    converters = plan.converters
    kw = {}
    for key, value in doc.items():
        conv = converters.get(key, _SLOW)
        if conv is _SLOW or value is None:
            return cls.from_dict(doc)
        kw[key] = value if conv is None else conv(value)
    if not plan.required <= kw.keys():
        return cls.from_dict(doc)
    for name, default in plan.defaults:
        if name not in kw:
            kw[name] = default
    return cls(**kw)
