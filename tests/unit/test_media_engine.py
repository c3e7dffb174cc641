"""The media engine's command set over the real relay: allocate, peers, hold, timeout, delete."""
import asyncio
import socket
import struct
import time

import pytest

from hpbx.errors import NotFoundError, RelayError, ValidationError
from hpbx.media import MediaEngine
from hpbx.settings import RtpSettings

LO = "127.0.0.1"


def rtp(seq, ssrc=1):
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160


def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LO, 0))
    s.settimeout(1.0)
    return s


@pytest.fixture
def timeouts():
    return []


@pytest.fixture
def engine(timeouts):
    e = MediaEngine(LO, 41600, 41699, advertise="198.51.100.7", workers=1, media_timeout=0.2,
                    on_timeout=timeouts.append)
    e.start()
    total = e.free_pairs()
    yield e
    for key in [m["call_id"] for m in e.list()]:
        e.delete(key)
    assert e.free_pairs() == total and e.used_pairs() == 0
    e.close()


def test_a_call_relays_media_and_lists_its_stats(engine):
    caller, callee = udp(), udp()
    try:
        ms = engine.allocate("call-1@host")
        assert ms.address == "198.51.100.7"  # what goes into the rewritten SDP
        assert ms.port("a") == ms.port_a and ms.port_a != ms.port_b
        engine.offer("call-1@host", *caller.getsockname())
        engine.answer("call-1@host", *callee.getsockname())
        caller.sendto(rtp(1), (LO, ms.port_a))
        assert callee.recvfrom(2048)[1] == (LO, ms.port_b)
        callee.sendto(rtp(1, 2), (LO, ms.port_b))
        assert caller.recvfrom(2048)[1] == (LO, ms.port_a)
        (row,) = engine.list()
        assert row["call_id"] == "call-1@host" and row["hold"] is False
        assert row["legs"]["a"]["packets"] == 1 and row["legs"]["b"]["packets"] == 1
        assert row["legs"]["a"]["peer"] == caller.getsockname()
        final = engine.delete("call-1@host")
        assert final["a"]["bytes"] == 172 and final["b"]["bytes"] == 172
        assert engine.delete("call-1@host") is None  # abnormal-end paths may delete twice
        assert len(engine) == 0
    finally:
        caller.close()
        callee.close()


def test_media_timeout_reported_once_and_not_on_hold(engine, timeouts):
    engine.allocate("quiet")
    engine.allocate("held")
    engine.set_hold("held", True)
    time.sleep(0.25)
    assert engine.check_timeouts() == ["quiet"]
    assert timeouts == ["quiet"]
    assert engine.check_timeouts() == []  # reported once
    assert engine.stats("held")["hold"] is True
    engine.set_peer("held", "a", "0.0.0.0", 5000)  # RFC 2543 hold keeps the call on hold
    engine.set_hold("held", False)
    time.sleep(0.05)
    assert engine.check_timeouts() == ["held"]


def test_watch_task_reports_timeouts_and_survives_a_failing_handler(timeouts):
    def handler(key):
        timeouts.append(key)
        raise RuntimeError("call layer bug")

    async def main():
        with MediaEngine(LO, 41700, 41719, workers=1, media_timeout=0.1, on_timeout=handler) as e:
            e.allocate("x")
            task = asyncio.create_task(e.watch(0.05))
            await asyncio.sleep(0.3)
            e.allocate("y")
            await asyncio.sleep(0.3)
            task.cancel()

    asyncio.run(main())
    assert timeouts == ["x", "y"]


def test_bad_commands_name_the_field(engine):
    engine.allocate("c")
    with pytest.raises(ValidationError, match="call_id"):
        engine.allocate("c")
    with pytest.raises(ValidationError) as ei:
        engine.set_peer("c", "a", "239.1.2.3", 4000)
    assert ei.value.field == "sdp.a" and "multicast" in str(ei.value)
    with pytest.raises(ValidationError, match="leg"):
        engine.set_peer("c", "x", LO, 4000)
    with pytest.raises(NotFoundError):
        engine.stats("nope")


def test_from_settings_and_pool_exhaustion():
    rtp_cfg = RtpSettings(port_min=41800, port_max=41807, address=LO, workers=1, media_timeout=5)
    with MediaEngine.from_settings(rtp_cfg) as e:
        assert e.advertise == LO and e.free_pairs() == 4
        e.allocate("one")
        e.allocate("two")
        with pytest.raises(RelayError, match="no free RTP port pair"):
            e.allocate("three")
        e.delete("one")
        e.allocate("three")
        assert e.used_pairs() == 4


def test_dual_stack_settings_give_each_family_its_sdp_address(tmp_path):
    from hpbx.errors import ConfigError
    from hpbx.settings import load
    cfg = tmp_path / "hpbx.toml"
    cfg.write_text('[rtp]\nports = "42100-42119"\naddress = "127.0.0.1"\naddress6 = "::1"\n')
    rtp = load(cfg).rtp
    assert (rtp.address, rtp.address6) == ("127.0.0.1", "::1")
    with MediaEngine.from_settings(rtp) as e:
        ms = e.allocate("dual-1")
        assert ms.address_for("::1") == "::1" and ms.address_for("192.0.2.7") == "127.0.0.1"
        e.offer("dual-1", "::1", 5000)
        e.answer("dual-1", "127.0.0.1", 5002)
        e.delete("dual-1")
    for bad in ('address = "::1"\naddress6 = "::1"', 'address = "127.0.0.1"\naddress6 = "127.0.0.2"'):
        cfg.write_text(f'[rtp]\nports = "42100-42119"\n{bad}\n')
        with pytest.raises(ConfigError, match="rtp.address6"):
            load(cfg)
