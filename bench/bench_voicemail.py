"""Voicemail bench (issue 11): simultaneous recordings, and the mail spool's throughput.

Part 1, recordings. For each count N: a child process runs the media engine (hpbx's relay,
one worker per core) with N sessions whose leg "a" is terminated and recorded to a WAV;
``bench/rtp/rtpgen.c`` sends every stream 50 packets/s of PCMA for ``VM_SECS`` s from one
socket. The sender knows its bytes: each payload carries the stream id and sequence number
(then 0xff), and A-law decode/encode is a bijection, so every 160-sample block of every file
is checked bit for bit: a file is clean when it holds every packet sent, in order, with
nothing altered. Printed: clean files, lost/altered frames, the child's CPU share over the
steady window. Anchor in the same run: the same N streams relayed (not terminated) by the same
relay: what recording costs above plain relaying.

Part 2, spool. ``VM_MAILS`` messages with a 10 s WAV attachment (160 kB) each go to a local
aiosmtpd sink (tests/mail/smtp_sink.py) through the spool (fsync'd to disk, then aiosmtplib),
and, as the anchor, straight through aiosmtplib over one connection (no spool): messages per
minute for both.

    .venv/bin/python bench/bench_voicemail.py        (or pytest -q -s bench/bench_voicemail.py)

Env: VM_RECORDINGS ("250 500 1000"), VM_SECS (10), VM_MAILS (500). Figures on a shared box are noisy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))
from bench_relay import CLK, build_generator, cpu_ticks  # noqa: E402

IP = "127.0.0.1"
GEN_A, GEN_B = 39100, 39102
PORTS = (41000, 49999)
OUT = HERE / "out"


# ------------------------------------------------------------------ child: the engine
def child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--record", type=int, default=1)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--watch", type=int, default=0)
    a = ap.parse_args(argv)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 4 sockets + 1 file per call
    from hpbx.media.engine import MediaEngine

    async def run() -> None:
        engine = MediaEngine(IP, *PORTS, media_timeout=600)
        engine.start()
        keys = []
        for i in range(a.calls):
            key = f"c{i}"
            ms = engine.allocate(key)
            engine.offer(key, IP, GEN_A)
            if a.record:
                engine.terminate(key, "a", codec="PCMA", pt=0, dtmf_pt=None)
                engine.record(key, "a", os.path.join(a.dir, f"{i}.wav"), max_ms=600_000)
                print(f"A {ms.port_a}", flush=True)
            else:
                engine.answer(key, IP, GEN_B)
                if a.watch:  # in-call star codes: both relayed legs' digits watched
                    for leg in ("a", "b"):
                        engine.watch_digits(key, leg, lambda ev: None, dtmf_pts=(101,))
                print(f"A {ms.port_a}", flush=True)
            keys.append(key)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        done = 0
        for key in keys:
            if a.record:
                engine.stop_record(key, "a")
        while a.record and done < len(keys):
            for key in keys:
                if await engine.next_event(key, "record_done", 0.01) is not None:
                    done += 1
        for key in keys:
            engine.delete(key)
        engine.close()

    asyncio.run(run())
    return 0


# ------------------------------------------------------------------ checking a file
def check(path: Path, stream: int, packets: int) -> tuple[int, int]:
    """(frames as sent, frames missing or altered) of one recording."""
    from media_peer import encode
    with wave.open(str(path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    data = encode("PCMA", pcm)
    want = stream.to_bytes(4, "big")
    first = data.find(want)
    if first < 8:
        return 0, packets
    off = first - 8  # the payload starts with 8 bytes of send time
    good = 0
    seq0 = None
    for k in range(packets):
        frame = data[off + 160 * k:off + 160 * (k + 1)]
        if len(frame) < 160:
            break
        seq = int.from_bytes(frame[12:16], "big")
        if seq0 is None:
            seq0 = seq
        if frame[8:12] != want or seq != seq0 + k or frame[16:] != b"\xff" * 144:
            break
        good += 1
    return good, packets - good


def point(gen: Path, n: int, secs: float, record: bool, watch: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="vmbench") as d:
        proc = subprocess.Popen([sys.executable, __file__, "child", "--calls", str(n), "--record",
                                 "1" if record else "0", "--dir", d, "--watch", str(int(watch))],
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        rows = []
        while True:
            line = proc.stdout.readline()
            if not line or line.startswith("ready"):
                break
            side, port = line.split()
            rows.append((side, int(port)))
        OUT.mkdir(exist_ok=True)
        mapf = OUT / "vm-map.txt"
        mapf.write_text("".join(f"{s} {IP} {p}\n" for s, p in rows))
        g = subprocess.Popen([str(gen), "--map", str(mapf), "--porta", str(GEN_A), "--portb", str(GEN_B),
                              "--pps", "50", "--payload", "160", "--secs", str(secs), "--warmup", "1",
                              "--drain-ms", "300"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        c0, t0 = cpu_ticks(proc.pid), time.monotonic()
        time.sleep(max(1.0, secs - 2.5))
        c1, t1 = cpu_ticks(proc.pid), time.monotonic()
        gen_out, _ = g.communicate(timeout=secs + 60)
        time.sleep(0.5)
        proc.communicate(input="", timeout=120)
        cpu = (c1 - c0) / CLK / (t1 - t0)
        res = {"n": n, "record": record, "cpu": cpu}
        try:
            res["sent"] = json.loads(gen_out.strip().splitlines()[-1]).get("sent")
        except (ValueError, IndexError):
            res["sent"] = None
        if record:
            packets = int(secs * 50)
            clean = lost = 0
            for i in range(n):
                good, bad = check(Path(d) / f"{i}.wav", i, packets)
                lost += bad
                clean += bad == 0
            res.update(clean=clean, lost=lost, packets=packets)
        return res


# ------------------------------------------------------------------ part 2: spool
def spool_bench(count: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import reserved_port
    import aiosmtplib
    from email.message import EmailMessage
    from hpbx.mail.spool import Attachment, MailSpool
    from hpbx.settings import SmtpSettings

    wav = bytes(44) + os.urandom(160_000)
    lines = []
    with tempfile.TemporaryDirectory(prefix="vmspool") as d:
        port = reserved_port()
        sink = subprocess.Popen([sys.executable, str(ROOT / "tests" / "mail" / "smtp_sink.py"), "--port", str(port),
                                 "--dir", os.path.join(d, "inbox")], stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "READY"
        inbox = Path(d) / "inbox"

        async def via_spool() -> float:
            spool = MailSpool(SmtpSettings(host=IP, port=port, sender="pbx@example.com", retry_min=1),
                              os.path.join(d, "spool"))
            spool.open()
            await spool.start()
            t0 = time.monotonic()
            for i in range(count):
                spool.submit(to=[f"u{i}@example.com"], subject=f"voice message {i}", body="x",
                             attachments=[Attachment("m.wav", "audio/wav", wav)], tenant="t", kind="voice2mail")
            while len(list(inbox.glob("*.eml"))) < count:
                await asyncio.sleep(0.05)
            t = time.monotonic() - t0
            await spool.stop()
            return t

        async def direct() -> float:
            t0 = time.monotonic()
            smtp = aiosmtplib.SMTP(hostname=IP, port=port)
            await smtp.connect()
            for i in range(count):
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "pbx@example.com", f"u{i}@example.com", f"m {i}"
                msg.set_content("x")
                msg.add_attachment(wav, maintype="audio", subtype="wav", filename="m.wav")
                await smtp.send_message(msg)
            await smtp.quit()
            while len(list(inbox.glob("*.eml"))) < 2 * count:
                await asyncio.sleep(0.05)
            return time.monotonic() - t0

        t_spool = asyncio.run(via_spool())
        t_direct = asyncio.run(direct())
        sink.terminate()
        sink.wait(10)
    lines.append(f"spool: {count} messages of 160 kB to a local aiosmtpd: {60 * count / t_spool:,.0f} per minute "
                 f"(fsync'd spool); anchor aiosmtplib straight, one connection: {60 * count / t_direct:,.0f} per minute")
    return lines


def main() -> int:
    counts = [int(x) for x in os.environ.get("VM_RECORDINGS", "250 500 1000").split()]
    secs = float(os.environ.get("VM_SECS", "10"))
    gen = build_generator()
    print(f"voicemail bench on {os.cpu_count()} cores (shared box: figures are noisy)")
    for n in counts:
        rec = point(gen, n, secs, True)
        relay = point(gen, n, secs, False)
        print(f"{n} recordings x 50 pkt/s, {secs:.0f} s: clean files {rec['clean']}/{n}, frames lost or "
              f"altered {rec['lost']} of {n * rec['packets']}; engine CPU {100 * rec['cpu']:.0f} % "
              f"(anchor: the same streams relayed {100 * relay['cpu']:.0f} %)", flush=True)
    for line in spool_bench(int(os.environ.get("VM_MAILS", "500"))):
        print(line, flush=True)
    return 0


def test_voicemail_bench():
    assert main() == 0


def watch_main() -> int:
    """The cost of watching the digits of relayed legs (call recording's *1): N calls relayed
    at 50 pkt/s with both legs watched, against the same N relayed without a watch, same run."""
    counts = [int(x) for x in os.environ.get("VM_WATCH_CALLS", "1000 2000").split()]
    secs = float(os.environ.get("VM_SECS", "10"))
    gen = build_generator()
    print(f"digit-watch bench on {os.cpu_count()} cores (shared box: figures are noisy)")
    for n in counts:
        plain = point(gen, n, secs, False)
        watched = point(gen, n, secs, False, watch=True)
        print(f"{n} relayed calls x 50 pkt/s, {secs:.0f} s: engine CPU with both legs' digits watched "
              f"{100 * watched['cpu']:.1f} % (anchor: not watched {100 * plain['cpu']:.1f} %); "
              f"sent {watched['sent']} / {plain['sent']}", flush=True)
    return 0


def test_digit_watch_bench():
    assert watch_main() == 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "watch":
        sys.exit(watch_main())
    sys.exit(main())
