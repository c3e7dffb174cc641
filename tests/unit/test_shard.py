"""Which worker owns a message (hpbx._fast.shard) and the [server] workers settings."""
import pytest

from hpbx._fast import shard, sipmsg
from hpbx.errors import ConfigError
from hpbx.settings import from_dict


def msg(call_id_line: str, start: str = "INVITE sip:a@b SIP/2.0") -> bytes:
    return (f"{start}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n{call_id_line}\r\n"
            f"CSeq: 1 INVITE\r\n\r\nv=0\r\ni=Call-ID: not-this\r\n").encode()


@pytest.mark.parametrize("line", ["Call-ID: abc@host", "call-id:abc@host", "CALL-ID  :  abc@host \t",
                                  "i: abc@host", "I:abc@host"])
def test_every_spelling_of_the_header_gives_the_owner_of_its_value(line):
    for n in (2, 3, 7, 64):
        assert shard.owner(msg(line), n) == shard.owner_of("abc@host", n)
        assert shard.owner(msg(line, "SIP/2.0 200 OK"), n) == shard.owner_of("abc@host", n)


def test_no_call_id_in_the_headers_is_minus_one():
    # the body's "i=Call-ID:" is not a header; "Call-Info" is not Call-ID; "ix:" is not "i:"
    data = b"OPTIONS sip:a SIP/2.0\r\nCall-Info: <x>\r\nix: y\r\n\r\ni: body@x\r\n"
    assert shard.owner(data, 2) == -1
    assert shard.owner(b"", 2) == -1 and shard.owner(b"garbage", 4) == -1


def test_owners_spread_over_the_workers():
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard.owner_of(f"{i}-4711@10.0.0.1", 3)] += 1
    assert all(800 < c < 1200 for c in counts), counts


def test_call_ids_made_in_a_worker_hash_to_it(monkeypatch):
    from hpbx.cluster.workers import Workers

    monkeypatch.setattr(sipmsg, "new_call_id", sipmsg.new_call_id)  # restored after the test
    group = Workers(2, 3, {}, None)
    group._own_call_ids()
    ids = [sipmsg.new_call_id("h") for _ in range(200)]
    assert len(set(ids)) == 200 and all(shard.owner_of(c, 3) == 2 for c in ids)
    assert all(c.endswith("@h") for c in ids)


def test_server_workers_settings():
    base = {"sip": {"listen": ["udp:127.0.0.1:5060"]}, "rtp": {"ports": "20000-20099"}}
    assert from_dict(base).server.workers == 1
    assert from_dict({**base, "server": {"workers": 3}}).server.workers == 3
    with pytest.raises(ConfigError, match="server.workers.*fixed UDP listener ports"):
        from_dict({"sip": {"listen": ["udp:127.0.0.1:0"]}, "server": {"workers": 2}})
    with pytest.raises(ConfigError, match="server.workers.*too small"):
        from_dict({**base, "rtp": {"ports": "20000-20009"}, "server": {"workers": 2}})
    with pytest.raises(ConfigError, match="server.workers"):
        from_dict({**base, "server": {"workers": 65}})
    with pytest.raises(ConfigError, match="server.wrkers: unknown key"):
        from_dict({**base, "server": {"wrkers": 2}})
