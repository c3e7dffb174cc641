"""A mapping whose copy is cheap: what lets the directory stay an immutable snapshot that is
rebuilt after every provisioning change, even with 100,000 users.

``SharedDict.copy()`` copies a short list of shard references; the copy and the original share
every shard until one of them writes to it, which then copies only that shard. A snapshot that
is never written after its copy (the Directory's rule) is therefore never disturbed.
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Iterable, Iterator

SHARDS = 64


class SharedDict:
    """The dict operations the domain uses (get, [], in, len, iteration, keys/values/items,
    pop, setdefault), with an O(SHARDS) ``copy``."""

    __slots__ = ("_shards", "_owned", "_len")

    def __init__(self, items: Iterable[tuple[Any, Any]] | dict | None = None):
        self._shards: list[dict] = [{} for _ in range(SHARDS)]
        self._owned = [True] * SHARDS
        self._len = 0
        if items:
            for k, v in (items.items() if hasattr(items, "items") else items):
                self[k] = v

    def copy(self) -> "SharedDict":
        c = SharedDict.__new__(SharedDict)
        c._shards = list(self._shards)
        c._owned = [False] * SHARDS
        c._len = self._len
        self._owned = [False] * SHARDS  # the shards are shared now: both sides copy before writing
        return c

    def _writable(self, key: Any) -> dict:
        i = hash(key) % SHARDS
        if not self._owned[i]:
            self._shards[i] = dict(self._shards[i])
            self._owned[i] = True
        return self._shards[i]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._shards[hash(key) % SHARDS].get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self._shards[hash(key) % SHARDS][key]

    def __contains__(self, key: Any) -> bool:
        return key in self._shards[hash(key) % SHARDS]

    def __setitem__(self, key: Any, value: Any) -> None:
        shard = self._writable(key)
        if key not in shard:
            self._len += 1
        shard[key] = value

    def update(self, items: Iterable[tuple[Any, Any]]) -> None:
        """``self[k] = v`` for every pair, without a method call each (start-up indexes 1M)."""
        shards, owned = self._shards, self._owned
        added = 0
        for key, value in items:
            i = hash(key) % SHARDS
            if not owned[i]:
                shards[i] = dict(shards[i])
                owned[i] = True
            shard = shards[i]
            if key not in shard:
                added += 1
            shard[key] = value
        self._len += added

    def __delitem__(self, key: Any) -> None:
        shard = self._writable(key)
        del shard[key]
        self._len -= 1

    def pop(self, key: Any, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator:
        return chain.from_iterable(self._shards)

    def keys(self) -> "_View":
        return _View(self._shards, dict.keys, self._len)

    def values(self) -> "_View":
        return _View(self._shards, dict.values, self._len)

    def items(self) -> "_View":
        return _View(self._shards, dict.items, self._len)

    def missing_from(self, other: Any) -> set:
        """Keys of this mapping that ``other`` lacks. Against a copy of this one only the
        shards either side has written are compared, so a change of one key costs 1/SHARDS of
        the keys, not all of them."""
        if not isinstance(other, SharedDict):
            return {k for k in self if k not in other}
        out: set = set()
        for mine, theirs in zip(self._shards, other._shards):
            if mine is not theirs:
                out.update(k for k in mine if k not in theirs)
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedDict):
            other = dict(other.items())
        return isinstance(other, dict) and len(other) == self._len and all(
            k in other and other[k] == v for k, v in self.items())

    def __repr__(self) -> str:
        return f"SharedDict({dict(self.items())!r})"


class _View:
    """keys()/values()/items(): iterable more than once, with a length, like a dict view."""

    __slots__ = ("_shards", "_part", "_len")

    def __init__(self, shards: list[dict], part, length: int):
        self._shards, self._part, self._len = shards, part, length

    def __iter__(self) -> Iterator:
        return chain.from_iterable(self._part(s) for s in self._shards)

    def __len__(self) -> int:
        return self._len
