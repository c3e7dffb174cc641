"""Runs inside ``unshare -n`` (only loopback up): starts hpbx, sends every RFC 4475 message from
127.0.0.1:5060 (so answers addressed to the foreign Via hosts' default port come back here, and
nothing can leave the machine), replays PROTOS c07-sip with liveness probes, stops hpbx.

    unshare -n sh -c 'ip link set lo up && exec python torture_runner.py TESTDATA WORKDIR OUT.json'

Writes {"rfc4475": {name: [first lines of the answers]}, "alive_after": {name: bool},
"protos_rc": int, "protos_tail": str, "exit": int} to OUT.json.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import HpbxServer, sip_options  # noqa: E402

REPLY_WAIT = 0.25
T1_MS = 10  # short timers: a transaction ends (timer J = 64*T1) before a reused branch comes


def call_id(message: bytes) -> bytes | None:
    found = re.search(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)", message)
    return found.group(1) if found else None


def transaction_key(message: bytes):
    via = re.search(rb"(?im)^(?:via|v)[ \t]*:[ \t]*([^,\r\n]*)", message)
    cseq = re.search(rb"(?im)^cseq[ \t]*:[ \t]*\d*[ \t]*(\S*)", message)
    return (via.group(1) if via else b"", cseq.group(1) if cseq else b"")


def exchange(sock, target, payload: bytes) -> list[str]:
    """First lines of the answers to ``payload`` (matched by Call-ID: retransmissions of earlier
    answers are skipped)."""
    wanted = call_id(payload)
    sock.sendto(payload, target)
    out = []
    deadline = time.monotonic() + REPLY_WAIT
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(70000)
        except (socket.timeout, TimeoutError):
            break
        if wanted is None or call_id(data) == wanted:
            out.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
    return out


def main(testdata: Path, workdir: Path, out_path: Path, protos_cases: str) -> int:
    result: dict = {"rfc4475": {}, "alive_after": {}}
    srv = HpbxServer(workdir, users=[("j.user", "secret")],
                     sip_extra={"t1_ms": T1_MS, "t2_ms": 4 * T1_MS, "t4_ms": 5 * T1_MS})
    srv.start()
    try:
        target = ("127.0.0.1", srv.port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 5060))
        seen = set()
        for path in sorted((testdata / "rfc4475").glob("*.dat")):
            name = path.stem
            data = path.read_bytes()
            # several messages reuse one branch and sent-by: RFC 3261 §17.2.3 makes the second
            # a retransmission of the first unless that transaction has ended
            key = transaction_key(data)
            if key in seen:
                time.sleep(64 * T1_MS / 1000 + 0.2)
                seen.clear()
            seen.add(key)
            result["rfc4475"][name] = exchange(sock, target, data)
            result["alive_after"][name] = sip_options("127.0.0.1", srv.port, 1.0) is not None
        sock.close()
        proc = subprocess.run(
            [sys.executable, str(testdata / "protos" / "protos_run.py"), "send",
             "--target", f"127.0.0.1:{srv.port}", "--to", f"1000@127.0.0.1:{srv.port}",
             "--cases", protos_cases, "--probe-every", "500", "--probe-timeout", "0.5", "--reply-wait", "0.002",
             "--report", str(workdir / "protos.tsv")],
            capture_output=True, text=True, timeout=300)
        result["protos_rc"] = proc.returncode
        result["protos_tail"] = (proc.stdout + proc.stderr)[-2000:]
        result["alive_end"] = sip_options("127.0.0.1", srv.port, 2.0) is not None
    finally:
        try:
            srv.stop()
            result["exit"] = 0
        except AssertionError as exc:
            result["exit"] = str(exc)[-3000:]
        out_path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
                  sys.argv[4] if len(sys.argv) > 4 else "0-4526"))
