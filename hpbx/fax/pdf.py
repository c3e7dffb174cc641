"""Received fax pages (TIFF-F as spandsp writes it) -> one PDF.

libtiff's ``tiff2pdf`` (Debian libtiff-tools) is used rather than img2pdf/Pillow: it is the
reference TIFF reader, already a build dependency of spandsp's own TIFF handling, embeds
G3/G4 strips without re-encoding (bit-exact pages, small files) and honours the fax's
non-square resolution (204x98 / 204x196 dpi) so pages keep their A4 size.
"""
import os
import subprocess
import tempfile


class FaxPdfError(ValueError):
    """The TIFF could not be turned into a PDF; the message names why."""


def tiff_pages(tiff_path: str) -> int:
    """Number of pages (IFDs) in a TIFF, read with libtiff's tiffinfo."""
    out = subprocess.run(["tiffinfo", tiff_path], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise FaxPdfError(f"tiff: not a readable TIFF ({out.stderr.strip()[:200]})")
    return out.stdout.count("TIFF Directory at offset")


def tiff_to_pdf(tiff_path: str, pdf_path: str, title: str = "Fax") -> int:
    """Write ``pdf_path`` from ``tiff_path``; returns the page count. Atomic: a temp file is renamed."""
    pages = tiff_pages(tiff_path)
    if pages == 0:
        raise FaxPdfError("tiff: zero pages")
    d = os.path.dirname(os.path.abspath(pdf_path))
    fd, tmp = tempfile.mkstemp(prefix=".fax", suffix=".pdf", dir=d)
    os.close(fd)
    try:
        out = subprocess.run(["tiff2pdf", "-t", title, "-o", tmp, tiff_path],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise FaxPdfError(f"tiff2pdf failed: {out.stderr.strip()[:200]}")
        os.replace(tmp, pdf_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return pages
