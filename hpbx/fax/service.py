"""The virtual fax number: a call to a number of usage ``fax`` is answered through the media
channel, the fax is received by the native fax endpoint (spandsp T.30 over G.711 in the relay
workers, hpbx/_fast/media_fax.h), the pages become one PDF (hpbx.fax.pdf) and are mailed through
the spool (server.mail.submit) to the number's ``fax_mail`` address(es). A failed or partial
reception mails an error report with the pages received so far, the T.30 phase and reason.

A fax number without ``fax_mail`` is refused with 480 before it is answered (nothing queued).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path

from hpbx.fax import t38sdp
from hpbx.fax.pdf import FaxPdfError, tiff_to_pdf
from hpbx.mail.spool import Attachment
from hpbx.pbx import media_channel

log = logging.getLogger("hpbx.fax")

MAX_FAX_SECONDS = 3600  # a reception longer than this is stopped (reported as failed)
_PHASES = {"A": "A (call set-up)", "B": "B (negotiation)", "C": "C (page transfer)",
           "D": "D (post-page)", "E": "E (release)"}
_pending: set = set()  # mail deliveries running in threads (tests wait on them)


def _ppm_to_dpi(v: int) -> int:
    return round(v * 0.0254) if v else 0


def _addresses(number) -> list[str]:
    return [a.strip() for a in (getattr(number, "fax_mail", "") or "").split(",") if a.strip()]


def admit(svc, plan):
    if not _addresses(plan.number):
        log.warning("fax number %s has no fax_mail: call refused", plan.dialled)
        return 480, "Fax Number Has No Mail Address (fax_mail)"
    return None


def report(info: dict, caller: str, number: str) -> tuple[str, str]:
    """Subject and body of the mail for a reception's outcome (fax_done data)."""
    remote = info.get("remote_ident") or "unknown"
    pages = info.get("pages", 0)
    res = f"{_ppm_to_dpi(info.get('x_resolution', 0))}x{_ppm_to_dpi(info.get('y_resolution', 0))} dpi"
    secs = info.get("transfer_ms", 0) / 1000
    lines = [f"Fax to {number}", f"Caller number: {caller or 'unknown'}", f"Sender CSID: {remote}",
             f"Pages: {pages}", f"Resolution: {res}", f"Transfer time: {secs:.1f} s",
             f"Bit rate: {info.get('bit_rate', 0)} bit/s, ECM: {'yes' if info.get('ecm') else 'no'}",
             f"Transport: {'T.38 (UDPTL)' if info.get('t38') else 'G.711 audio'}"]
    if info.get("ok"):
        subject = f"Fax from {remote if remote != 'unknown' else caller}: {pages} page(s)"
    else:
        subject = f"Fax from {remote if remote != 'unknown' else caller} FAILED after {pages} page(s)"
        lines += ["", "The reception failed.", f"T.30 phase: {_PHASES.get(info.get('phase', 'A'), info.get('phase'))}",
                  f"Reason: {info.get('reason', 'unknown')} (code {info.get('status')})",
                  f"Pages received: {pages}" + (" (attached)" if pages else "")]
    return subject, "\n".join(lines) + "\n"


def deliver(mail, tenant: str, to: list[str], info: dict, caller: str, number: str) -> str:
    """PDF + mail into the spool (runs in a thread: tiff2pdf is a subprocess). Returns the id."""
    tif = info.get("path", "")
    attachments = []
    pdf = tif[:-4] + ".pdf" if tif.endswith(".tif") else tif + ".pdf"
    try:
        if info.get("pages", 0) > 0 and os.path.exists(tif):
            try:
                tiff_to_pdf(tif, pdf, title=f"Fax to {number}")
                attachments.append(Attachment(f"fax-{time.strftime('%Y%m%d-%H%M%S')}.pdf",
                                              "application/pdf", Path(pdf).read_bytes()))
            except FaxPdfError as e:
                info = dict(info, ok=False, reason=f"{info.get('reason')}; PDF: {e}")
        subject, body = report(info, caller, number)
        return mail.submit(to=to, subject=subject, body=body, attachments=attachments, tenant=tenant,
                           kind="fax")
    finally:
        for p in (tif, pdf):
            try:
                os.unlink(p)
            except OSError:
                pass


def make_service(app):
    folder = Path(app.settings.store.path).parent / "fax"

    async def receive_fax(ch) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        number = ch.plan.number
        to = _addresses(number)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", ch.id)[:80]
        path = str(folder / f"{time.time_ns()}-{safe}.tif")
        ident = re.sub(r"[^0-9+ ]", "", ch.dialled)[:20]
        engine = ch.engine
        cur = {"fid": engine.fax_receive(ch.id, "a", path, ident=ident), "t38": False}

        def on_reoffer(body: bytes):
            # the sender's gateway switches to T.38 (re-INVITE m=image udptl t38): the audio
            # fax is replaced by a T.38 one on the same port
            offer = t38sdp.image_offer(body)
            if offer is None:
                return None
            engine.set_peer(ch.id, "a", offer.host, offer.port)
            engine.relatch(ch.id, "a")
            if not cur["t38"]:
                cur["fid"] = engine.fax_receive(ch.id, "a", path, ident=ident, t38=True)
                cur["t38"] = True
                ch.result = "fax: receiving (T.38)"
                log.info("[%s] fax switched to T.38 (peer %s:%d)", ch.id, offer.host, offer.port)
            session, _ = ch.session_lines()
            return t38sdp.answer(body, offer, session, ch.media.port_a)

        ch.on_reoffer = on_reoffer
        ch.result = "fax: receiving"
        info = None
        try:
            ev = await ch.next_event("fax_done", timeout=MAX_FAX_SECONDS)
            if ev is not None:
                info = ev.data
            else:
                engine.fax_stop(ch.id, "a")  # too long: fax_done comes with the pages so far
        finally:
            if info is None:
                # the caller hung up (the endpoint is gone: its fax_done is in the table)
                info = dict(engine.fax.info(cur["fid"]) or {"status": -1, "reason": "unknown", "pages": 0})
                info["path"] = path
                info["ok"] = info.get("status") == 0
            ch.on_reoffer = None
            ch.result = (f"fax: {info.get('pages', 0)} page(s) received" + (" (T.38)" if info.get("t38") else "")
                         if info.get("ok")
                         else f"fax failed: {info.get('reason')} after {info.get('pages', 0)} page(s)")
            mail = getattr(app, "mail", None)
            if mail is None:
                log.error("[%s] fax received but no mail spool: kept at %s", ch.id, path)
            else:
                fut = asyncio.get_running_loop().run_in_executor(
                    None, deliver, mail, ch.tenant, to, info, ch.caller, ch.dialled)
                _pending.add(fut)
                fut.add_done_callback(_done)

    return receive_fax


def _done(fut) -> None:
    _pending.discard(fut)
    if fut.exception() is not None:
        log.error("fax mail not spooled: %s", fut.exception())


def install(app) -> None:
    """app.py: numbers of usage fax are answered by the virtual fax (when spandsp is built in)."""
    if getattr(app.media, "fax", None) is None:
        log.warning("no fax in this build (spandsp missing): fax numbers answer 480")
        return
    media_channel.register_service("fax", make_service(app), name="fax", admit=admit)
    from hpbx.fax import send
    send.install(app)  # fax.send
