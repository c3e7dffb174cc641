"""fax.send end to end: the admin sends a PDF; hpbx renders it with Ghostscript, dials the
number through the tenant's trunk (SIPp answering as the far end) and sends the pages over G.711
to a test fax receiver (spandsp in a test-side engine) whose pages match the PDF rendered
independently; the report is mailed (aiosmtpd). A busy far end is retried and reported; bad
input gets errors naming the field and queues nothing."""
from __future__ import annotations

import base64
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

from callrig import CallRig, number, trunk  # noqa: E402
from faxpages import fax_page, make_tiff, read_pbm, read_tiff, similarity  # noqa: E402
from harness import have_sipp, reserved_port  # noqa: E402
from mailsink import SmtpSink  # noqa: E402
from hpbx.admin.protocol import RpcError as RpcCallError  # noqa: E402
from hpbx.fax.pdf import tiff_to_pdf  # noqa: E402
from hpbx.media import MediaEngine  # noqa: E402

pytestmark = [pytest.mark.sipp, pytest.mark.fax,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)"),
              pytest.mark.skipif(not (shutil.which("tiff2pdf") and shutil.which("gs")),
                                 reason="libtiff-tools and ghostscript needed")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "fs"\ntrunk = "carrier"\n' + trunk("carrier", CARRIER)
          + number("044555400", usage="fax", fax_mail="sender@example.com"))
SCEN = HERE / "scenarios"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("faxsend")
    sink = SmtpSink(d / "inbox")
    sink.start()
    rig = CallRig(d, TENANT, rtp_ports=(44700, 44799))
    with open(rig.server.config, "a") as f:
        f.write(f'\n[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsender = "pbx@example.com"\n'
                "timeout = 5\nretry_min = 1\nretry_max = 2\n")
    rig.start()
    yield rig, sink, d
    rig.stop()
    sink.stop()


def wait_job(rig, jid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rig.admin("fax.status", id=jid)
        if job["state"] in ("sent", "failed"):
            return job
        time.sleep(0.3)
    return rig.admin("fax.status", id=jid)


def rendered(pdf: Path, out: Path) -> list[np.ndarray]:
    """The PDF rendered the way a fax page is (an independent Ghostscript run, pbm)."""
    pages = []
    subprocess.run(["gs", "-q", "-dSAFER", "-dNOPAUSE", "-dBATCH", "-sDEVICE=pbmraw", "-r204x196",
                    "-g1728x2292", "-dFIXEDMEDIA", "-dPDFFitPage", f"-sOutputFile={out}/ref%d.pbm", str(pdf)],
                   check=True)
    for i in range(1, 10):
        f = out / f"ref{i}.pbm"
        if not f.exists():
            break
        pages.append(read_pbm(f.read_bytes()))
    return pages


@pytest.mark.parametrize("t38", [False, True], ids=["g711", "t38"])
def test_fax_send_reaches_the_far_fax(setup, tmp_path, t38):
    """G.711 to a fax behind the trunk; and to a T.38 gateway that re-INVITEs to image/t38."""
    rig, sink, _ = setup
    before = len(sink.messages())
    originals = [fax_page(21, rows=2200), fax_page(22, rows=2200)]  # portrait, like a letter
    pdf = tmp_path / "doc.pdf"
    tiff_to_pdf(make_tiff(tmp_path, originals), str(pdf), title="test")
    want = rendered(pdf, tmp_path)
    assert len(want) == 2
    out = str(tmp_path / "far.tif")
    far = MediaEngine("127.0.0.1", 44800, 44899, workers=1, media_timeout=120)
    got = []
    far.on_event = got.append
    far.start()
    try:
        ms = far.allocate("far")
        far.terminate("far", "a", codec="PCMA", dtmf_pt=None)
        far.fax_receive("far", "a", out, ident="+41 21 999 0000", t38=t38)
        uas = rig.sipp(str(SCEN / ("trunk_uas_t38.xml" if t38 else "trunk_uas_fax.xml")), port=CARRIER, pause_ms=200, timeout=120,
                       extra=["-key", "rtp_port", str(ms.port_a)], name="far")
        time.sleep(0.3)
        to = "0219990009" if t38 else "0219990000"
        job = rig.admin("fax.send", tenant="fs", to=to, **{"from": "044555400"},
                        pdf=base64.b64encode(pdf.read_bytes()).decode(), header="hpbx test fax", retries=0)
        assert job["state"] in ("queued", "dialling") and job["pages"] == 2, job
        job = wait_job(rig, job["id"], 120)
        res = uas.finish()
        deadline = time.monotonic() + 10
        while not any(e.kind == "fax_done" for e in got) and time.monotonic() < deadline:
            far.drain_events()
            time.sleep(0.1)
    finally:
        far.close()
    assert job["state"] == "sent" and job["pages_sent"] == 2 and job["attempts"] == 1, (job["history"], rig.server.log()[-1500:])
    assert res.successful == 1, res.describe() + rig.server.log()
    invite = res.received("INVITE")[0]
    assert f"INVITE sip:{to}@" in invite and "044555400" in invite
    done = [e.data for e in got if e.kind == "fax_done"]
    assert done and done[0]["ok"] and done[0]["pages"] == 2 and done[0]["t38"] == t38, done
    assert job["t38"] == t38
    assert done[0]["remote_ident"] == "044555400"
    pages = read_tiff(out, tmp_path)
    assert len(pages) == 2
    for ref, page, orig in zip(want, pages, originals):
        bits = page["bits"]
        # spandsp puts the header line on top of each page (its rows come first)
        top = bits.shape[0] - ref.shape[0]
        assert bits.shape[1] == ref.shape[1] and 16 <= top <= 64, (bits.shape, ref.shape)
        assert bits[:top].any()  # the header line is there
        bits = bits[top:]
        assert similarity(ref, bits) > 0.999
        # and the page is the original document (fitted: same width, centred on A4)
        off = max(range(0, ref.shape[0] - orig.shape[0] + 1, 2),
                  key=lambda o: (bits[o:o + orig.shape[0]] == orig).mean())
        off = max((o for o in (off - 1, off, off + 1) if 0 <= o <= ref.shape[0] - orig.shape[0]),
                  key=lambda o: (bits[o:o + orig.shape[0]] == orig).mean())
        assert similarity(orig, bits[off:off + orig.shape[0]]) > 0.99
    assert similarity(want[0], pages[1]["bits"][-want[0].shape[0]:]) < 0.99
    msgs = sink.wait_count(before + 1, timeout=30)
    m = msgs[-1]
    assert "sender@example.com" in m["To"] and m["Subject"] == f"Fax to {to} sent: 2 page(s)", m["Subject"]
    body = m.get_body(("plain",)).get_content()
    assert "Pages: 2 of 2 sent" in body and ("Transport: T.38 (UDPTL)" if t38 else "Transport: G.711 audio") in body
    cdr = [c for c in rig.cdrs(count=1) if c.get("service") == "fax-send" and c.get("called") == to]
    assert cdr and cdr[-1]["service_result"] == "fax: 2 page(s) sent" + (" (T.38)" if t38 else ""), rig.cdrs()
    listed = rig.admin("fax.list", tenant="fs")
    listed = listed if isinstance(listed, list) else listed["items"]
    assert job["id"] in [j["id"] for j in listed] and all(j["state"] == "sent" for j in listed)


def test_busy_far_end_is_retried_then_reported(setup, tmp_path):
    rig, sink, _ = setup
    before = len(sink.messages())
    pdf = tmp_path / "one.pdf"
    tiff_to_pdf(make_tiff(tmp_path, [fax_page(23)]), str(pdf), title="test")
    uas = rig.sipp(str(SCEN / "trunk_uas_busy.xml"), port=CARRIER, calls=2, timeout=30, name="busy")
    time.sleep(0.3)
    job = rig.admin("fax.send", tenant="fs", to="0219990001", **{"from": "044555400"},
                    pdf=base64.b64encode(pdf.read_bytes()).decode(), retries=1, retry_delay=1)
    job = wait_job(rig, job["id"], 30)
    res = uas.finish()
    assert res.successful == 2, res.describe()
    assert job["state"] == "failed" and job["attempts"] == 2, job
    assert job["history"] == ["attempt 1: call failed: 486", "attempt 2: call failed: 486"], job
    m = sink.wait_count(before + 1, timeout=30)[-1]
    assert m["Subject"] == "Fax to 0219990001 FAILED"
    assert "call failed: 486" in m.get_body(("plain",)).get_content()


def test_bad_input_names_the_field_and_queues_nothing(setup, tmp_path):
    rig, _, d = setup
    jobs = rig.admin("fax.list")
    n = len(jobs if isinstance(jobs, list) else jobs.get("items", []))
    big = tmp_path / "big.pdf"
    subprocess.run(["gs", "-q", "-sDEVICE=pdfwrite", "-dDEVICEWIDTHPOINTS=2000", "-dDEVICEHEIGHTPOINTS=2000",
                    "-o", str(big), "-c", "showpage"], check=True)
    zero = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    cases = [
        ({"pdf": base64.b64encode(b"hello, not a pdf").decode()}, "pdf", "not a PDF"),
        ({"pdf": base64.b64encode(b"%PDF-1.4 garbage").decode()}, "pdf", "not a readable PDF"),
        ({"pdf": base64.b64encode(zero).decode()}, "pdf", "no pages"),
        ({"pdf": base64.b64encode(big.read_bytes()).decode()}, "pdf", "page 1 is 706 x 706 mm"),
        ({"pdf": "!!!"}, "pdf", "base64"),
        ({"path": "../../etc/passwd"}, "path", "under the media directory"),
        ({}, "pdf", "give pdf"),
        ({"pdf": "JVBERi0=", "to": "sip:x"}, "to", "not an external number"),
        ({"pdf": "JVBERi0=", "header": "ü"}, "header", "ASCII"),
    ]
    for extra, fieldname, text in cases:
        params = {"tenant": "fs", "to": "0219990002", **extra}
        with pytest.raises(RpcCallError) as e:
            rig.admin("fax.send", **params)
        assert e.value.data.get("field") == fieldname and text in str(e.value), (extra, e.value, e.value.data)
    with pytest.raises(RpcCallError) as e:
        rig.admin("fax.send", tenant="nope", to="0219990002", pdf="JVBERi0=")
    assert e.value.data.get("field") == "tenant"
    jobs = rig.admin("fax.list")
    assert len(jobs if isinstance(jobs, list) else jobs.get("items", [])) == n
    assert not list((d / "fax-out").glob("*")) if (d / "fax-out").exists() else True
