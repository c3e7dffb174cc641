"""The registrations store on a real Redis (started by the tests): a batch is stored and
announced whole, other stores hear it, rows read back as written, expired rows are deleted
at load unless someone refreshed them meanwhile."""
import asyncio
import time

import pytest

from hpbx.store.redis_registrations import HASH, RedisRegistrations, decode, encode, field
from hpbx.store.registrations import Binding


def binding(user: str, contact: str, expires_in: float = 300, **kw) -> Binding:
    now = time.time()
    values = dict(username=user, contact=contact, tenant="acme", instance_id='"<urn:uuid:1/2>"', reg_id=1,
                  q=0.5, expires_at=now + expires_in, registered_at=now, source_host="192.0.2.7",
                  source_port=5062, transport="tcp", connection_id=12, user_agent="Télé/1.0 \"x\"",
                  path=None, call_id="c1@x", cseq=7, behind_nat=True, node="a")
    values.update(kw)
    return Binding(**values)


def same(a: Binding, b: Binding) -> bool:
    return (a.row()[:6] == b.row()[:6] and a.row()[8:] == b.row()[8:] and a.node == b.node
            and abs(a.expires_at - b.expires_at) < 1e-3 and abs(a.registered_at - b.registered_at) < 1e-3)


def test_batches_round_trip_and_reach_the_other_node(redis_url):
    async def scenario():
        heard = []
        a, b = RedisRegistrations(redis_url, "a"), RedisRegistrations(redis_url, "b")
        await a.open(time.time(), lambda p, d: heard.append(("a", p, d)), lambda loaded: None)
        await b.open(time.time(), lambda p, d: heard.append(("b", p, d)), lambda loaded: None)
        x = binding("anna", "sip:anna@10.0.0.1:5060;transport=tcp;ob")
        y = binding("ben", "sip:ben@[2001:db8::1]:5070", transport="udp", connection_id=0, behind_nat=False)
        await a.write_batch([x, y], [])
        z = binding("anna", x.contact, expires_in=600)
        await a.write_batch([], [("ben", y.contact)], [z])
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.01)
        assert [h[0] for h in heard] == ["b", "b"]  # a does not hear itself
        assert same(heard[0][1][0], x) and same(heard[0][1][1], y) and heard[0][2] == []
        assert heard[1][2] == [("ben", y.contact)] and heard[1][1][0].expires_at > x.expires_at + 200
        stored = await b.read_all(time.time())
        assert len(stored) == 1 and same(stored[0], z)  # as Redis's script wrote it
        await a.aclose()
        await b.aclose()

    asyncio.run(scenario())


def test_expired_rows_are_deleted_at_load_unless_refreshed(redis_server, redis_url):
    client = redis_server.client()
    old = binding("old", "sip:old@10.0.0.2", expires_in=-5)
    live = binding("live", "sip:live@10.0.0.3")
    client.hset(HASH, mapping={field(b.username, b.contact): encode(b) for b in (old, live)})

    async def load():
        s = RedisRegistrations(redis_url, "c")
        await s.open(time.time(), lambda p, d: None, lambda loaded: None)
        got = s.load(time.time())
        await s.aclose()
        return got

    got = asyncio.run(load())
    assert [b.username for b in got] == ["live"] and same(got[0], live)
    assert client.hkeys(HASH) == [field("live", live.contact).encode()]
    assert same(decode(client.hget(HASH, field("live", live.contact)), time.time()), live)


def test_a_row_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="columns"):
        decode(b'["anna", "sip:anna@x", "a"]', time.time())
