"""A real SMTP server (aiosmtpd in its own process, tests/mail/smtp_sink.py) that a test can
start, kill mid-queue and start again on the same port; used by tests/mail, tests/mailbox and
tests/conference."""
from __future__ import annotations

import email
import email.policy
import subprocess
import sys
import time
from pathlib import Path

from harness import reserved_port

SINK = Path(__file__).resolve().parent / "smtp_sink.py"


class SmtpSink:
    def __init__(self, directory: Path, port: int | None = None):
        self.dir = Path(directory)
        # below the ephemeral range: still free when the sink is started again on it
        self.port = port or reserved_port()
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str) -> "SmtpSink":
        self.proc = subprocess.Popen([sys.executable, str(SINK), "--port", str(self.port),
                                      "--dir", str(self.dir), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", f"SMTP sink did not start: {line}{self.proc.stdout.read()}"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in sorted(self.dir.glob("*.eml"))]

    def wait_count(self, n: int, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{len(self.messages())} messages arrived within {timeout}s, expected {n}")
