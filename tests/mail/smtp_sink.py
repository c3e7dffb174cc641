"""A real SMTP server (aiosmtpd) as its own process, for tests that kill and restart it.

    python smtp_sink.py --port 2525 --dir OUT [--die-before N] [--answer "451 busy" --answer-count K]

Each accepted message is written to OUT as ``NNNNNN.eml`` (written then renamed, so a reader
never sees half a file). ``--die-before N``: the process exits at once (os._exit, like a
crash) when the N-th message's DATA arrives, before it is stored or answered. ``--answer``:
the first ``--answer-count`` messages get that reply instead of 250 (4xx or 5xx), and are not
stored. ``--refuse RCPT``: that recipient gets 550 at RCPT TO. Ready when "READY" is printed.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, out: Path, die_before: int, answer: str, answer_count: int, refuse: list[str]):
        self.out = out
        self.die_before = die_before
        self.answer = answer
        self.answer_left = answer_count
        self.refuse = set(refuse)
        self.seen = 0
        self.stored = len(list(out.glob("*.eml")))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.die_before and self.seen >= self.die_before:
            os._exit(3)
        if self.answer and self.answer_left > 0:
            self.answer_left -= 1
            return self.answer
        self.stored += 1
        path = self.out / f"{os.getpid()}-{self.stored:06d}.eml"
        tmp = path.with_suffix(".tmp")
        head = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        tmp.write_bytes(head.encode() + envelope.original_content)
        os.replace(tmp, path)
        return "250 2.0.0 stored"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--die-before", type=int, default=0)
    ap.add_argument("--answer", default="")
    ap.add_argument("--answer-count", type=int, default=0)
    ap.add_argument("--refuse", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    handler = Sink(out, args.die_before, args.answer, args.answer_count, args.refuse)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, data_size_limit=64 << 20),
                                      args.host, args.port, reuse_address=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
