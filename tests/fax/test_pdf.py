"""TIFF-F (G4, fax resolution) -> PDF: page count and page content survive (rasterised by Ghostscript)."""
import re
import shutil
import subprocess

import pytest

from hpbx.fax.pdf import FaxPdfError, tiff_to_pdf

pytestmark = pytest.mark.skipif(not (shutil.which("tiff2pdf") and shutil.which("gs")),
                                reason="libtiff-tools and ghostscript needed")

W, H = 1728, 400


def _pbm(path, stripe):
    """A 1-bit page: a black band at rows stripe..stripe+40 (distinct per page)."""
    rows = []
    for y in range(H):
        bit = 1 if stripe <= y < stripe + 40 else 0
        rows.append(bytes([0xFF if bit else 0x00]) * (W // 8))
    with open(path, "wb") as f:
        f.write(f"P4\n{W} {H}\n".encode() + b"".join(rows))


def _tiff(tmp_path, stripes):
    parts = []
    for i, s in enumerate(stripes):
        pbm, tif = tmp_path / f"p{i}.pbm", tmp_path / f"p{i}.tif"
        _pbm(pbm, s)
        subprocess.run(["ppm2tiff", "-c", "g4", "-R", "204x196", str(pbm), str(tif)], check=True)
        parts.append(str(tif))
    out = tmp_path / "fax.tif"
    subprocess.run(["tiffcp", *parts, str(out)], check=True)
    return out


def _band(pgm_bytes):
    """Rows (as fraction of height) whose mean is dark, from a PGM rendered by gs."""
    # P5 header: magic, width, height, maxval, each token possibly preceded by # comments
    toks, i = [], 0
    while len(toks) < 4:
        m = re.compile(rb"\s*(#[^\n]*\n\s*)*(\S+)").match(pgm_bytes, i)
        toks.append(m.group(2)); i = m.end()
    data = pgm_bytes[i + 1:]
    w, h = int(toks[1]), int(toks[2])
    dark = [y for y in range(h) if sum(data[y * w:(y + 1) * w]) / w < 128]
    return min(dark) / h, max(dark) / h


def test_two_pages_keep_count_and_content(tmp_path):
    tif = _tiff(tmp_path, [50, 300])
    pdf = tmp_path / "fax.pdf"
    assert tiff_to_pdf(str(tif), str(pdf)) == 2
    assert pdf.read_bytes()[:5] == b"%PDF-"
    bands = []
    for page in (1, 2):
        png = tmp_path / f"r{page}.pgm"
        subprocess.run(["gs", "-q", "-dNOPAUSE", "-dBATCH", "-sDEVICE=pgmraw", "-r50",
                        f"-dFirstPage={page}", f"-dLastPage={page}", f"-sOutputFile={png}", str(pdf)],
                       check=True)
        bands.append(_band(png.read_bytes()))
    # page 1: band at 50/400 = 12.5 %, page 2: at 300/400 = 75 % (±3 % for rendering)
    assert abs(bands[0][0] - 0.125) < 0.03 and abs(bands[0][1] - 0.225) < 0.03
    assert abs(bands[1][0] - 0.75) < 0.03 and abs(bands[1][1] - 0.85) < 0.03


def test_not_a_tiff_is_refused_naming_it(tmp_path):
    bad = tmp_path / "x.tif"
    bad.write_bytes(b"%PDF-1.4 not a tiff")
    with pytest.raises(FaxPdfError, match="tiff"):
        tiff_to_pdf(str(bad), str(tmp_path / "x.pdf"))
    assert not (tmp_path / "x.pdf").exists()
