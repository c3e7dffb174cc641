"""SharedDict: copies share shards until written, and a write never shows in the other copy."""
from hpbx.pbx.snapshot import SHARDS, SharedDict


def test_copy_is_isolated_both_ways():
    a = SharedDict({f"k{i}": i for i in range(1000)})
    b = a.copy()
    b["k1"] = -1
    del b["k2"]
    b["new"] = 5
    a["k3"] = -3
    assert (a["k1"], "k2" in a, "new" in a, a["k3"], len(a)) == (1, True, False, -3, 1000)
    assert (b["k1"], "k2" in b, b["new"], b["k3"], len(b)) == (-1, False, 5, 3, 1000)
    c = b.copy()
    c.pop("new")
    assert "new" in b and "new" not in c and c.pop("nope", 7) == 7


def test_dict_like_views_and_equality():
    d = SharedDict()
    assert not d and len(d.values()) == 0
    for i in range(3 * SHARDS):
        d.setdefault(i, str(i))
    assert sorted(d) == list(range(3 * SHARDS)) and sorted(d.keys()) == sorted(d)
    values = d.values()
    assert sorted(values, key=int) == sorted(values, key=int) == [str(i) for i in range(3 * SHARDS)]
    assert d == {i: str(i) for i in range(3 * SHARDS)} and d == d.copy()
    assert dict(d.items())[5] == "5" and d.get(10 ** 6) is None
