"""Sending faxes (admin ``fax.send``): a PDF is rendered to fax pages (Ghostscript's tiffg4
device, 1728 dots wide at 204x196 dpi, each page fitted to A4), hpbx dials the number through
the tenant's trunk (``media_channel.dial``) and sends the pages with the native fax endpoint:
T.30 over G.711, or T.38 when the far end re-INVITEs to ``m=image udptl t38`` (the same switch
as on reception). Busy, no answer or a failed transfer are retried (``retries`` times,
``retry_delay`` seconds apart). ``fax.status`` / ``fax.list`` give the outcome; a report is
mailed through the spool to ``mail`` (default: the from-number's fax_mail, when it has one).

Jobs live in memory (a restart forgets them; the mail report is what stays).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpbx.errors import HpbxError, ValidationError
from hpbx.fax import t38sdp
from hpbx.pbx import media_channel

log = logging.getLogger("hpbx.fax.send")

MAX_PDF = 20 * 1024 * 1024
MAX_PAGES = 50
MAX_PAGE_MM = 600  # a page longer (or wider) than this is refused: not a fax page
MAX_FAX_SECONDS = 1800
_sender: "FaxSender | None" = None


def current() -> "FaxSender | None":
    return _sender


def _pdf_pages_mm(pdf: str) -> list[tuple[float, float]]:
    """Each page's size in mm (Ghostscript reads the PDF: garbage is an error)."""
    r = subprocess.run(["gs", "-q", "-dNODISPLAY", "-dNOSAFER", "-dNOPAUSE", "-dBATCH",
                        f"-sFile={pdf}", "-c",
                        "File (r) file runpdfbegin 1 1 pdfpagecount { pdfgetpage /MediaBox pget pop "
                        "aload pop exch 4 -1 roll sub = exch sub = } for quit"],
                       capture_output=True, text=True, timeout=60)
    nums = re.findall(r"(?m)^-?\d+(?:\.\d+)?$", r.stdout)
    if r.returncode or len(nums) % 2 or "Error" in r.stdout + r.stderr:
        raise ValidationError("pdf", "is not a readable PDF")
    vals = [abs(float(x)) * 25.4 / 72 for x in nums]
    return list(zip(vals[1::2], vals[0::2]))  # (width, height)


def render(pdf: str, tif: str) -> int:
    """PDF -> multi-page TIFF G4 for T.4/T.6 (1728 wide, 204x196 dpi). Returns the page count;
    ValidationError naming ``pdf`` when it has no pages or a page is too large."""
    with open(pdf, "rb") as f:
        if f.read(5) != b"%PDF-":
            raise ValidationError("pdf", "is not a PDF (no %PDF- header)")
    sizes = _pdf_pages_mm(pdf)
    if not sizes:
        raise ValidationError("pdf", "has no pages")
    if len(sizes) > MAX_PAGES:
        raise ValidationError("pdf", f"has {len(sizes)} pages (at most {MAX_PAGES})")
    for i, (w, h) in enumerate(sizes, 1):
        if w > MAX_PAGE_MM or h > MAX_PAGE_MM or w < 10 or h < 10:
            raise ValidationError("pdf", f"page {i} is {w:.0f} x {h:.0f} mm (a fax page is at most "
                                  f"{MAX_PAGE_MM} mm; A4 and Letter are fitted to the fax width)")
    r = subprocess.run(["gs", "-q", "-dSAFER", "-dNOPAUSE", "-dBATCH", "-sDEVICE=tiffg4", "-r204x196",
                        "-g1728x2292", "-dFIXEDMEDIA", "-dPDFFitPage", f"-sOutputFile={tif}", pdf],
                       capture_output=True, timeout=300)
    if r.returncode or not os.path.exists(tif):
        raise ValidationError("pdf", "could not be rendered: " + r.stderr.decode(errors="replace")[-200:])
    return len(sizes)


@dataclass
class FaxJob:
    id: str
    tenant: str
    from_number: str
    to_number: str
    header: str
    pages: int
    path: str
    mail: list[str]
    retries: int
    retry_delay: float
    state: str = "queued"  # queued, dialling, sending, retry_wait, sent, failed
    attempts: int = 0
    result: str = ""
    t38: bool = False
    pages_sent: int = 0
    created: float = field(default_factory=time.time)
    finished: float = 0.0
    history: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"id": self.id, "tenant": self.tenant, "from": self.from_number, "to": self.to_number,
                "state": self.state, "pages": self.pages, "pages_sent": self.pages_sent,
                "attempts": self.attempts, "result": self.result, "t38": self.t38,
                "created": self.created, "finished": self.finished, "history": list(self.history)}


class FaxSender:
    def __init__(self, app):
        self.app = app
        self.jobs: dict[str, FaxJob] = {}
        self.folder = Path(app.settings.store.path).resolve().parent / "fax-out"
        self._n = 0

    # ---------------------------------------------------------------- admin
    def submit(self, p: dict) -> dict:
        app = self.app
        tenant, to, frm = p["tenant"], p["to"], p.get("from", "")
        directory = app.calls.provisioning.directory
        if directory.tenant(tenant) is None:
            raise ValidationError("tenant", f"no tenant {tenant!r}")
        if not re.fullmatch(r"(0|\+)[0-9]{3,20}", to or ""):
            raise ValidationError("to", f"{to!r} is not an external number (0... or +...)")
        if frm and not re.fullmatch(r"\+?[0-9]{2,20}", frm):
            raise ValidationError("from", f"{frm!r} is not a number")
        header = p.get("header", "")
        if not isinstance(header, str) or len(header) > 50 or not header.isascii() or not header.isprintable():
            raise ValidationError("header", "must be printable ASCII of at most 50 characters")
        retries, delay = p.get("retries", 2), p.get("retry_delay", 60)
        mail = p.get("mail")
        if mail is None:
            num = directory.number(frm) if frm else None
            mail = getattr(num, "fax_mail", "") if num is not None and num.tenant == tenant else ""
        mail = [a.strip() for a in (mail or "").split(",") if a.strip()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._n += 1
        jid = f"fax-{int(time.time())}-{self._n}"
        pdf = self.folder / f"{jid}.pdf"
        if p.get("pdf") is not None:
            try:
                data = base64.b64decode(p["pdf"], validate=True)
            except (ValueError, TypeError):
                raise ValidationError("pdf", "is not base64") from None
            if len(data) > MAX_PDF:
                raise ValidationError("pdf", f"is larger than {MAX_PDF} bytes")
            pdf.write_bytes(data)
        elif p.get("path"):
            base = Path(app.settings.media.media_dir(app.settings.store.path)).resolve()
            src = (base / p["path"]).resolve()
            if base not in src.parents or not src.is_file():
                raise ValidationError("path", f"no file {p['path']!r} under the media directory")
            pdf.write_bytes(src.read_bytes())
        else:
            raise ValidationError("pdf", "give pdf (base64) or path (under the media directory)")
        tif = str(self.folder / f"{jid}.tif")
        try:
            pages = render(str(pdf), tif)
        except Exception:
            for f in (str(pdf), tif):
                try:
                    os.unlink(f)
                except OSError:
                    pass
            raise
        os.unlink(pdf)
        job = FaxJob(jid, tenant, frm, to, header, pages, tif, mail, retries, float(delay))
        self.jobs[jid] = job
        app.calls.loop.create_task(self._run(job))
        log.info("%s: %d page(s) for %s queued (tenant %s)", jid, pages, to, tenant)
        return job.as_dict()

    # ---------------------------------------------------------------- the job
    async def _run(self, job: FaxJob) -> None:
        try:
            while True:
                job.attempts += 1
                ok, why = await self._attempt(job)
                job.history.append(f"attempt {job.attempts}: {why}")
                if ok:
                    job.state, job.result = "sent", why
                    break
                if job.attempts > job.retries:
                    job.state, job.result = "failed", why
                    break
                job.state = "retry_wait"
                await asyncio.sleep(job.retry_delay)
        except Exception as exc:  # noqa: BLE001 - a job's error must not be lost silently
            log.exception("%s failed", job.id)
            job.state, job.result = "failed", f"internal error: {exc}"
        job.finished = time.time()
        self._report(job)
        try:
            os.unlink(job.path)
        except OSError:
            pass

    async def _attempt(self, job: FaxJob) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future = loop.create_future()
        app = self.app

        def on_failed(ch, status):
            if not outcome.done():
                outcome.set_result((False, f"call failed: {status}"))

        async def send_fax(ch) -> None:
            engine = ch.engine
            job.state = "sending"
            ident = re.sub(r"[^0-9+ ]", "", job.from_number)[:20]
            cur = {"t38": False}

            def on_reoffer(body: bytes):
                offer = t38sdp.image_offer(body)
                if offer is None:
                    return None
                engine.set_peer(ch.id, "a", offer.host, offer.port)
                engine.relatch(ch.id, "a")
                if not cur["t38"]:
                    engine.fax_send(ch.id, "a", job.path, ident=ident, header=job.header, t38=True)
                    cur["t38"] = True
                    ch.result = "fax send (T.38)"
                session, _ = ch.session_lines()
                return t38sdp.answer(body, offer, session, ch.media.port_a)

            ch.on_reoffer = on_reoffer
            engine.fax_send(ch.id, "a", job.path, ident=ident, header=job.header)
            ch.result = "fax send"
            info = None
            try:
                ev = await ch.next_event("fax_done", timeout=MAX_FAX_SECONDS)
                info = ev.data if ev is not None else None
            finally:
                ch.on_reoffer = None
                if info is None:
                    info = {"ok": False, "reason": "call ended before the fax", "pages": 0}
                job.t38 = bool(info.get("t38"))
                job.pages_sent = info.get("pages", 0)
                what = (f"{info.get('pages', 0)} page(s) sent" + (" (T.38)" if job.t38 else "")
                        if info.get("ok") else f"failed: {info.get('reason')} after {info.get('pages', 0)} page(s)")
                ch.result = f"fax: {what}"
                if not outcome.done():
                    outcome.set_result((bool(info.get("ok")), what))

        job.state = "dialling"
        try:
            media_channel.dial(app.calls, job.to_number, job.tenant, job.from_number, send_fax,
                               name="fax-send", on_failed=on_failed)
        except HpbxError as exc:
            return False, f"not dialled: {exc}"
        try:
            return await asyncio.wait_for(outcome, MAX_FAX_SECONDS + 120)
        except asyncio.TimeoutError:
            return False, "no outcome in time"

    def _report(self, job: FaxJob) -> None:
        mail = getattr(self.app, "mail", None)
        if not job.mail or mail is None:
            return
        ok = job.state == "sent"
        subject = (f"Fax to {job.to_number} sent: {job.pages_sent} page(s)" if ok
                   else f"Fax to {job.to_number} FAILED")
        body = "\n".join([f"Fax job {job.id}", f"To: {job.to_number}", f"From: {job.from_number or '-'}",
                          f"Pages: {job.pages_sent} of {job.pages} sent",
                          f"Transport: {'T.38 (UDPTL)' if job.t38 else 'G.711 audio'}",
                          f"Result: {job.result}", f"Attempts: {job.attempts}", "", *job.history]) + "\n"
        try:
            mail.submit(to=job.mail, subject=subject, body=body, tenant=job.tenant, kind="fax")
        except HpbxError as exc:
            log.error("%s: report not spooled: %s", job.id, exc)

    def status(self, jid: str) -> dict:
        job = self.jobs.get(jid)
        if job is None:
            from hpbx.errors import NotFoundError
            raise NotFoundError("fax", jid)
        return job.as_dict()

    def list(self, tenant: str | None) -> list[dict]:
        return [j.as_dict() for j in self.jobs.values() if tenant in (None, j.tenant)]


def install(app) -> None:
    global _sender
    _sender = FaxSender(app)
