"""The native fax endpoint (spandsp T.30 over G.711 in the relay's workers): two endpoints of one
engine exchange a real 2-page fax over UDP on loopback; pages compared bit for bit; loss; a sender
that stops mid-way; bad input."""
import time

import pytest

from faxpages import fax_engine, wait_events, make_tiff, read_tiff, similarity, fax_page
from hpbx._fast.relay import CODECS
from hpbx.errors import ValidationError

LO = "127.0.0.1"
pytestmark = pytest.mark.fax


@pytest.fixture
def engine():
    yield from fax_engine(43000, 43199)


def pair(engine, codec="PCMA"):
    """Two sessions whose leg a send to each other: "rx" (receiver) and "tx" (sender)."""
    rx, tx = engine.allocate("rx"), engine.allocate("tx")
    engine.set_peer("rx", "a", LO, tx.port_a)
    engine.set_peer("tx", "a", LO, rx.port_a)
    engine.terminate("rx", "a", codec=codec, dtmf_pt=None)
    engine.terminate("tx", "a", codec=codec, dtmf_pt=None)
    return rx, tx


@pytest.mark.parametrize("codec,ecm", [("PCMA", True), ("PCMU", False)])
def test_two_pages_over_g711(engine, tmp_path, codec, ecm):
    pages = [fax_page(1), fax_page(2)]
    src = make_tiff(tmp_path, pages)
    got = []
    engine.on_event = got.append
    pair(engine, codec)
    out = str(tmp_path / "rx.tif")
    rid = engine.fax_receive("rx", "a", out, ident="+1 555 0100", ecm=ecm)
    sid = engine.fax_send("tx", "a", src, ident="+1 555 0199", ecm=ecm)
    assert rid != sid
    wait_events(engine, got, lambda g: len([e for e in g if e.kind == "fax_done"]) == 2, 120)
    done = {e.key: e for e in got if e.kind == "fax_done"}
    assert set(done) == {"rx", "tx"}, got
    r, s = done["rx"].data, done["tx"].data
    assert r["ok"] and s["ok"], (r, s)
    assert r["pages"] == 2 and s["pages"] == 2
    assert r["id"] == rid and r["path"] == out
    assert r["remote_ident"] == "+1 555 0199" and s["remote_ident"] == "+1 555 0100"
    assert r["ecm"] == ecm and r["bit_rate"] >= 9600
    assert r["transfer_ms"] > 1000 and r["phase"] == "E"
    recv = read_tiff(out, tmp_path)
    assert len(recv) == 2
    for sent, page in zip(pages, recv):
        assert page["bits"].shape[1] == 1728
        assert similarity(sent, page["bits"]) > 0.999
        assert round(page["yres"]) in (196, 195, 98)
    # the pages are not each other's (the comparison could fail)
    assert similarity(pages[0], recv[1]["bits"]) < 0.99


def test_sender_that_stops_mid_way(engine, tmp_path):
    """The sender's side goes away during the first page: the receiver ends on its own (T.30
    timers keep running on fill-in) and reports failure with the pages it has."""
    src = make_tiff(tmp_path, [fax_page(3, rows=2200), fax_page(4, rows=2200)])
    got = []
    engine.on_event = got.append
    pair(engine)
    out = str(tmp_path / "rx.tif")
    engine.fax_receive("rx", "a", out)
    engine.fax_send("tx", "a", src, ecm=False)
    # wait until the receiver reached the page phase, then drop the sender without a word
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = engine.fax.info(next(iter(engine._faxes)))  # the receiver's (first) fax
        if info and info["phase"] in ("B", "C", "D"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("receiver never got to phase B")
    time.sleep(1.0)
    engine.delete("tx")
    wait_events(engine, got, lambda g: any(e.kind == "fax_done" and e.key == "rx" for e in g), 60)
    r = [e for e in got if e.kind == "fax_done" and e.key == "rx"]
    assert r, "the receiver did not end by itself"
    assert not r[0].data["ok"] and r[0].data["status"] != 0
    assert r[0].data["reason"]
    assert r[0].data["pages"] < 2


def test_bad_input(engine, tmp_path):
    pair(engine)
    with pytest.raises(ValidationError) as e:
        engine.fax_send("tx", "a", str(tmp_path / "missing.tif"))
    assert e.value.field == "path"
    with pytest.raises(ValidationError) as e:
        engine.fax_receive("rx", "a", str(tmp_path / "x.tif"), ident="ü" * 3)
    assert e.value.field == "ident"
    engine.fax_receive("rx", "a", str(tmp_path / "x.tif"))
    with pytest.raises(ValidationError, match="already"):
        engine.fax_receive("rx", "a", str(tmp_path / "y.tif"))
    engine.allocate("g")
    with pytest.raises(ValidationError) as e:
        engine.fax_receive("g", "a", str(tmp_path / "z.tif"))  # not terminated
    assert e.value.field == "leg"
    if "G722" in CODECS:
        engine.terminate("g", "a", codec="G722")
        with pytest.raises(ValidationError) as e:
            engine.fax_receive("g", "a", str(tmp_path / "z.tif"))
        assert e.value.field == "codec"
