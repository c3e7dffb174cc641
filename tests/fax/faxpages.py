"""Test fax pages: 1-bit pages as numpy arrays <-> TIFF-F files (libtiff's tools, no Pillow).

``make_tiff`` writes pages with ppm2tiff (G4, 204x196 dpi) joined by tiffcp, the format spandsp
sends; ``read_tiff`` reads any TIFF spandsp wrote (G3/G4, either fill order) back into arrays by
letting tiffcp decompress it (``-c none -f msb2lsb``) and parsing the plain strips.
"""
import select
import struct
import subprocess
import time

import numpy as np
import pytest

from hpbx.media import MediaEngine

W = 1728


def fax_page(seed: int, rows: int = 1100) -> np.ndarray:
    """A page with structure that differs per seed: bands, blocks and a bar code (True = black)."""
    rng = np.random.default_rng(seed)
    p = np.zeros((rows, W), dtype=bool)
    for _ in range(12):
        y, x = int(rng.integers(0, rows - 80)), int(rng.integers(0, W - 300))
        h, w = int(rng.integers(8, 80)), int(rng.integers(40, 300))
        p[y:y + h, x:x + w] = True
    bars = rng.integers(0, 2, size=W // 8).astype(bool)
    p[rows // 2:rows // 2 + 60, :] = np.repeat(bars, 8)[None, :]
    p[40 + seed * 30:60 + seed * 30, 100:1600] = True  # a band whose place names the page
    return p


def make_tiff(tmp_path, pages, name="send.tif") -> str:
    parts = []
    for i, pg in enumerate(pages):
        pbm, tif = tmp_path / f"_p{i}.pbm", tmp_path / f"_p{i}.tif"
        rows, w = pg.shape
        pbm.write_bytes(f"P4\n{w} {rows}\n".encode() + np.packbits(pg, axis=1).tobytes())
        subprocess.run(["ppm2tiff", "-c", "g4", "-R", "204", str(pbm), str(tif)], check=True)
        subprocess.run(["tiffset", "-s", "283", "196", str(tif)], check=True)  # fine: 196 lpi
        parts.append(str(tif))
    out = tmp_path / name
    subprocess.run(["tiffcp", *parts, str(out)], check=True)
    return str(out)


def _ifds(b: bytes):
    end = "<" if b[:2] == b"II" else ">"
    off = struct.unpack(end + "I", b[4:8])[0]
    while off:
        n = struct.unpack(end + "H", b[off:off + 2])[0]
        tags = {}
        for i in range(n):
            e = b[off + 2 + 12 * i: off + 14 + 12 * i]
            tag, typ, cnt = struct.unpack(end + "HHI", e[:8])
            if typ not in (1, 3, 4, 5):
                continue  # ASCII and others: not needed here
            size = {1: 1, 3: 2, 4: 4, 5: 8}.get(typ, 1)
            fmt = {1: "B", 3: "H", 4: "I"}.get(typ)
            raw = e[8:12] if size * cnt <= 4 else b[struct.unpack(end + "I", e[8:12])[0]:][:size * cnt]
            if typ == 5:
                vals = [struct.unpack(end + "II", raw[8 * k:8 * k + 8]) for k in range(cnt)]
            else:
                vals = list(struct.unpack(end + fmt * cnt, raw[:size * cnt]))
            tags[tag] = vals
        yield tags
        off = struct.unpack(end + "I", b[off + 2 + 12 * n: off + 6 + 12 * n])[0]


def read_tiff(path: str, tmp_path) -> list[dict]:
    """Pages of a TIFF: dicts with "bits" (bool array, True = black), "xres", "yres"."""
    plain = tmp_path / "_plain.tif"
    subprocess.run(["tiffcp", "-c", "none", "-f", "msb2lsb", path, str(plain)], check=True)
    b = plain.read_bytes()
    out = []
    for t in _ifds(b):
        w, h = t[256][0], t[257][0]
        data = b"".join(b[o:o + n] for o, n in zip(t[273], t[279]))
        stride = (w + 7) // 8
        arr = np.unpackbits(np.frombuffer(data[:stride * h], dtype=np.uint8).reshape(h, stride), axis=1)
        bits = arr[:, :w].astype(bool)
        if t.get(262, [0])[0] == 1:  # min-is-black: 1 = white
            bits = ~bits
        xr = t.get(282, [(0, 1)])[0]
        yr = t.get(283, [(0, 1)])[0]
        out.append({"bits": bits, "xres": xr[0] / xr[1], "yres": yr[0] / yr[1]})
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal pixels (over the larger page: missing rows count as different)."""
    rows = max(a.shape[0], b.shape[0])
    w = max(a.shape[1], b.shape[1])
    pa = np.zeros((rows, w), dtype=bool)
    pb = np.zeros((rows, w), dtype=bool)
    pa[:a.shape[0], :a.shape[1]] = a
    pb[:b.shape[0], :b.shape[1]] = b
    return float((pa == pb).mean())


def read_pbm(data: bytes) -> np.ndarray:
    """A raw PBM (P4, "# comment" lines allowed in the header) as a bool array (True = black)."""
    import re
    toks, pos = [], 0
    while len(toks) < 3:
        m = re.compile(rb"\s*(#[^\n]*\n\s*)*(\S+)").match(data, pos)
        toks.append(m.group(2))
        pos = m.end()
    w, h = int(toks[1]), int(toks[2])
    raster = np.frombuffer(data[pos + 1:pos + 1 + h * ((w + 7) // 8)], dtype=np.uint8).reshape(h, (w + 7) // 8)
    return np.unpackbits(raster, axis=1)[:, :w].astype(bool)


def fax_engine(port_min: int, port_max: int):
    """A started media engine with the fax endpoint on its own port range, for a fixture to
    ``yield from`` (skipped when the build has no spandsp); closed afterwards."""
    e = MediaEngine("127.0.0.1", port_min, port_max, workers=2, media_timeout=60, nice=-10)
    if e.fax is None:
        e.close()
        pytest.skip("built without spandsp: no fax")
    e.start()
    try:
        yield e
    finally:
        e.close()


def wait_events(engine, got: list, pred, timeout: float) -> list:
    """Drain the engine's events into ``got`` until ``pred(got)`` or ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not pred(got):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        select.select([engine.media.fileno()], [], [], left)
        engine.drain_events()
    return got
