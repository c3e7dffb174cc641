"""The virtual fax number end to end: a test fax machine (spandsp, in a MediaEngine of the test
process) calls the fax number through SIPp signalling and sends 2 pages over G.711; a real SMTP
server (aiosmtpd) receives one mail whose PDF's pages, rasterised by Ghostscript, match the sent
pages. A fax number without fax_mail is refused with 480 and nothing is mailed."""
from __future__ import annotations

import re
import threading
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "sip"))
sys.path.insert(0, str(HERE.parent / "mail"))

from callrig import CallRig, number, trunk, user  # noqa: E402
from mailsink import SmtpSink  # noqa: E402  (the real aiosmtpd server of tests/mail)
from faxpages import fax_page, make_tiff, read_tiff, similarity  # noqa: E402
from harness import have_sipp, reserved_port  # noqa: E402
from hpbx.media import MediaEngine  # noqa: E402

pytestmark = [pytest.mark.sipp, pytest.mark.fax,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)"),
              pytest.mark.skipif(not (shutil.which("tiff2pdf") and shutil.which("gs")),
                                 reason="libtiff-tools and ghostscript needed")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "fx"\n' + trunk("carrier", CARRIER)
          + number("044555300", usage="fax", fax_mail="office@example.com, boss@example.com")
          + number("044555301", usage="fax")
          + user("ata2") + number("044555302", (30, ["user:ata2"])))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fax")
    sink = SmtpSink(d / "inbox")
    sink.start()
    rig = CallRig(d, TENANT, rtp_ports=(44200, 44299))
    with open(rig.server.config, "a") as f:
        f.write(f'\n[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsender = "pbx@example.com"\n'
                "timeout = 5\nretry_min = 1\nretry_max = 2\n")
    rig.start()
    yield rig, sink, d
    rig.stop()
    sink.stop()


def assert_mailed_pages(m, sent, tmp_path: Path) -> list[np.ndarray]:
    """The mail carries one PDF whose pages are the ones sent (rasterised, > 98 % alike)."""
    pdfs = [p for p in m.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert len(pdfs) == 1
    pdf = tmp_path / "got.pdf"
    pdf.write_bytes(pdfs[0].get_content())
    pages = _pdf_pages(pdf, tmp_path)
    assert len(pages) == len(sent)
    for want, got in zip(sent, pages):
        assert similarity(want, got) > 0.98, similarity(want, got)
    return pages


def _pdf_pages(pdf: Path, out: Path) -> list[np.ndarray]:
    """Each PDF page rasterised at the fax resolution (204x196) to a 1-bit array (True = black)."""
    pages = []
    for i in range(1, 10):
        pbm = out / f"r{i}.pbm"
        r = subprocess.run(["gs", "-q", "-dNOPAUSE", "-dBATCH", "-sDEVICE=pbmraw", "-r204x196",
                            f"-dFirstPage={i}", f"-dLastPage={i}", f"-sOutputFile={pbm}", str(pdf)],
                           capture_output=True)
        if r.returncode or not pbm.exists() or pbm.stat().st_size == 0:
            break
        data = pbm.read_bytes()
        toks, pos = [], 0
        while len(toks) < 3:  # P4, width, height; "# comment" lines may come between
            m = re.compile(rb"\s*(#[^\n]*\n\s*)*(\S+)").match(data, pos)
            toks.append(m.group(2))
            pos = m.end()
        w, h = int(toks[1]), int(toks[2])
        raster = data[pos + 1:]
        bits = np.unpackbits(np.frombuffer(raster[:h * ((w + 7) // 8)], dtype=np.uint8)
                             .reshape(h, (w + 7) // 8), axis=1)[:, :w].astype(bool)
        pages.append(bits)
        pbm.unlink()
    return pages


def test_two_page_fax_over_g711_arrives_as_pdf_by_mail(setup, tmp_path):
    rig, sink, d = setup
    sent = [fax_page(5), fax_page(6)]
    src = make_tiff(tmp_path, sent)
    machine = MediaEngine("127.0.0.1", 44400, 44499, workers=1, media_timeout=120)
    machine.start()
    try:
        ms = machine.allocate("fax-machine")
        machine.terminate("fax-machine", "a", codec="PCMA", dtmf_pt=None)
        machine.fax_send("fax-machine", "a", src, ident="+41 31 111 2222")
        caller = rig.sipp("call_uac_service.xml", service="044555300", port=CARRIER, timeout=120,
                          extra=["-key", "rtp_port", str(ms.port_a)], name="fax")
        res = caller.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
        msgs = sink.wait_count(1, timeout=30)
    finally:
        machine.close()
    assert len(msgs) == 1
    m = msgs[0]
    assert "office@example.com" in m["To"] and "boss@example.com" in m["To"]
    assert "2 page(s)" in m["Subject"] and "+41 31 111 2222" in m["Subject"], m["Subject"]
    body = m.get_body(("plain",)).get_content()
    assert "Caller number: 0311112222" in body and "Pages: 2" in body and "204x196 dpi" in body, body
    pages = assert_mailed_pages(m, sent, tmp_path)
    assert similarity(sent[0], pages[1]) < 0.97  # the comparison can tell pages apart
    cdr = [c for c in rig.cdrs(count=1) if c.get("service") == "fax"][-1]
    assert cdr["service_result"] == "fax: 2 page(s) received", cdr
    assert not list((d / "fax").glob("*")) if (d / "fax").exists() else True  # nothing left behind


def test_two_page_fax_over_t38_arrives_as_pdf_by_mail(setup, tmp_path):
    """A fax gateway (SIPp signalling + a T.38 terminal of spandsp in a test-side engine) calls
    in with audio, re-INVITEs to m=image udptl t38 and sends 2 pages as UDPTL."""
    rig, sink, d = setup
    before = len(sink.messages())
    sent = [fax_page(11), fax_page(12)]
    src = make_tiff(tmp_path, sent)
    machine = MediaEngine("127.0.0.1", 44500, 44599, workers=1, media_timeout=120)
    machine.start()
    try:
        ms = machine.allocate("gw")
        machine.terminate("gw", "a", codec="PCMA", dtmf_pt=None)
        machine.fax_send("gw", "a", src, ident="+41 31 111 3333", t38=True)
        caller = rig.sipp(str(HERE / "scenarios" / "call_uac_t38.xml"), service="044555300", port=CARRIER,
                          timeout=120, extra=["-key", "rtp_port", str(ms.port_a)], name="t38")
        res = caller.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
        msgs = sink.wait_count(before + 1, timeout=30)
    finally:
        machine.close()
    assert len(msgs) == before + 1
    m = msgs[-1]
    assert "2 page(s)" in m["Subject"] and "+41 31 111 3333" in m["Subject"], m["Subject"]
    body = m.get_body(("plain",)).get_content()
    assert "Transport: T.38 (UDPTL)" in body and "Pages: 2" in body and "Bit rate: 14400" in body, body
    assert_mailed_pages(m, sent, tmp_path)
    cdr = [c for c in rig.cdrs(count=2) if c.get("service") == "fax"][-1]
    assert cdr["service_result"] == "fax: 2 page(s) received (T.38)", cdr


def test_fax_number_without_mail_address_is_refused(setup):
    rig, sink, _ = setup
    before = len(sink.messages())
    res = rig.call("call_uac_fail.xml", "044555301", port=CARRIER)
    assert res.successful == 1, res.describe()
    assert res.received("SIP/2.0 480"), res.describe()
    time.sleep(1.0)
    assert len(sink.messages()) == before


def test_t38_between_two_fax_machines_is_relayed(setup, tmp_path):
    """Two fax machines (spandsp T.38 terminals in a test-side engine): one calls in through the
    trunk, the other is behind an ATA registered as user ata2. The caller re-INVITEs to T.38,
    hpbx anchors the image stream on its relay (both legs carry UDPTL) and relays it; 2 pages
    pass bit-exact; the admin hangs up."""
    rig, sink, d = setup
    sent = [fax_page(13), fax_page(14)]
    src = make_tiff(tmp_path, sent)
    out = str(tmp_path / "ata.tif")
    machines = MediaEngine("127.0.0.1", 44600, 44699, workers=1, media_timeout=120)
    got = []
    machines.on_event = got.append
    machines.start()
    try:
        a, b = machines.allocate("gw"), machines.allocate("ata")
        for k in ("gw", "ata"):
            machines.terminate(k, "a", codec="PCMA", dtmf_pt=None)
        phone = rig.phone("ata2", str(HERE / "scenarios" / "call_uas_t38.xml"), pause_ms=100, timeout=120,
                          extra=["-key", "rtp_port", str(b.port_a)])
        box = {}
        caller = threading.Thread(target=lambda: box.setdefault("res", rig.sipp(
            str(HERE / "scenarios" / "call_uac_t38.xml"), service="044555302", port=CARRIER, timeout=120,
            extra=["-key", "rtp_port", str(a.port_a)], name="t38gw").finish()))
        caller.start()
        deadline, call = time.monotonic() + 10, None
        while time.monotonic() < deadline:
            calls = [c for c in rig.admin("call.list") if c.get("media")]
            if calls and calls[0]["media"]["a"]["udptl"] and calls[0]["media"]["b"]["udptl"]:
                call = calls[0]
                break
            time.sleep(0.2)
        assert call is not None, rig.admin("call.list")
        assert call["answered_by"] == "ata2"
        # each machine sends to the address its SDP gave: hpbx's relay ports
        machines.set_peer("gw", "a", "127.0.0.1", call["media"]["a"]["port"])
        machines.set_peer("ata", "a", "127.0.0.1", call["media"]["b"]["port"])
        machines.fax_receive("ata", "a", out, ident="+41 44 555 3020", t38=True)
        machines.fax_send("gw", "a", src, ident="+41 31 111 4444", t38=True)
        deadline = time.monotonic() + 120
        while len([e for e in got if e.kind == "fax_done"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            machines.drain_events()
        media = rig.admin("call.list")[0]["media"]
        rig.admin("call.hangup", call_id=call["call_id"])
        caller.join(20)
        res, ph = box["res"], phone.finish()
    finally:
        machines.close()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    done = {e.key: e.data for e in got if e.kind == "fax_done"}
    assert done["ata"]["ok"] and done["gw"]["ok"], done
    assert done["ata"]["pages"] == 2 and done["ata"]["remote_ident"] == "+41 31 111 4444"
    assert done["ata"]["udptl_rx"] > 100 and done["ata"]["udptl_bad"] == 0
    pages = read_tiff(out, tmp_path)
    assert len(pages) == 2
    for want, page in zip(sent, pages):
        assert similarity(want, page["bits"]) > 0.999
    # relayed both ways; nothing taken for RTCP (their second bytes went through as UDPTL)
    assert media["a"]["packets"] > 100 and media["b"]["packets"] > 20, media
    assert media["a"]["rtcp_packets"] == 0 and media["b"]["rtcp_packets"] == 0, media
