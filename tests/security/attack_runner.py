"""Real attacker tools (sipvicious: svwar, svcrack, svmap; SIPp as a flooder) against the
real server. Run only inside a fresh loopback-only namespace (test_attack_tools.py starts it
with ``unshare -n``): ``python attack_runner.py SCENARIO WORKDIR`` prints one JSON line.

Every run is bounded: extension ranges, dictionary lines, SIPp -m, --maximumtime, timeouts.
The attacker is 127.0.0.1 (sipvicious cannot bind elsewhere) or 127.0.0.4 (the SIPp flood);
legitimate phones register from 127.0.0.3.

sipvicious is PyPI's 0.3.8 (``sipvicious_svwar`` …, a test extra; exit code 40 when it finds
something) when installed beside this Python, else Debian's 0.3.3 (``svwar`` …).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import (HpbxServer, RawPhone, SippRun, digest_authorization,  # noqa: E402
                     header, sip_options)

SCEN = HERE.parent / "sip" / "scenarios"
FLOOD = HERE / "scenarios" / "register_flood.xml"
USERS = [(str(100 + i), secrets.token_urlsafe(12)) for i in range(20)]
LEGIT = "127.0.0.3"
TOOL_TIMEOUT = 60
BAN_SECS = 16  # longer than an svcrack run (it stops 2 s after its last answer, then lingers 10 s)


def sipvicious(name: str) -> str:
    """The path of sipvicious' ``name`` (svwar, svcrack, svmap): PyPI's if installed."""
    import shutil
    beside = Path(sys.executable).parent / f"sipvicious_{name}"
    if beside.exists():
        return str(beside)
    return shutil.which(f"sipvicious_{name}") or shutil.which(name) or name


def tool(cmd: list[str], timeout: float = TOOL_TIMEOUT) -> dict:
    if cmd[0] in ("svwar", "svcrack", "svmap"):
        cmd = [sipvicious(cmd[0]), *cmd[1:]]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, HOME=os.environ.get("HOME", "/tmp")))
    out = r.stdout + r.stderr
    return {"cmd": " ".join([Path(cmd[0]).name] + [c for c in cmd[1:] if not c.startswith("/")]),
            "rc": r.returncode, "secs": round(time.monotonic() - t0, 2), "out": out[-3000:]}


def table_rows(out: str) -> list[str]:
    """The data rows of a sipvicious result table ("| 100 | reqauth |")."""
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and cells[0] and not cells[0].startswith(("Extension", "SIP Device")):
            rows.append(cells)
    return rows


def security_events(srv: HpbxServer, event: str, src: str) -> list[str]:
    text = srv.log_path.read_text(errors="replace")
    return re.findall(rf"SECURITY event={event} src={re.escape(src)} [^\n]*", text)


def admin(srv: HpbxServer, method: str, **params):
    from hpbx.admin.client import AdminClient
    with AdminClient(str(srv.dir / "hpbx.sock"), timeout=10) as client:
        return client.call(method, params)


def wait_for(predicate, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def options_from(host: str, srv: HpbxServer, timeout: float = 0.5) -> str | None:
    with RawPhone(srv.host, srv.port, host=host) as phone:
        phone.request("OPTIONS", f"sip:{srv.host}:{srv.port}")
        return phone.recv(timeout)


def legit_registrations(srv: HpbxServer, work: Path, count: int, rate: float) -> SippRun:
    user, password = USERS[1]
    return SippRun(SCEN / "register_auth.xml", srv.sip_target, work, local_ip=LEGIT,
                   inf=[(user, password, user, 60)] * count, calls=count, rate=rate,
                   timeout=30, name="legit", trace_msg=False).start()


def legit_call(srv: HpbxServer) -> str | None:
    """An authenticated INVITE from the legitimate address: the status after the 407."""
    user, password = USERS[1]
    callee = USERS[2][0]
    ruri = f"sip:{callee}@{srv.host}:{srv.port}"
    with RawPhone(srv.host, srv.port, host=LEGIT) as phone:
        phone.request("INVITE", ruri, from_user=user)
        first = phone.recv_until(lambda m: not m.startswith("SIP/2.0 100"), 3)
        if first is None or not first.startswith("SIP/2.0 407"):
            return first and first.split("\r\n")[0]
        phone.request("ACK", ruri, from_user=user, cseq=phone.cseq,
                      branch=re.search(r"branch=([^;\s]+)", header(first, "Via")[0]).group(1))
        auth = digest_authorization(header(first, "Proxy-Authenticate")[0], user, password, "INVITE", ruri)
        phone.request("INVITE", ruri, [f"Proxy-Authorization: {auth}"], from_user=user)
        final = phone.recv_until(lambda m: not m.startswith("SIP/2.0 100"), 3)
        return final and final.split("\r\n")[0]


# ---------------------------------------------------------------------- svwar
class LeakyStandIn:
    """A tiny registrar that leaks: 401 for the 20 users, 404 for anyone else (the self-check
    that svwar really finds extensions where the answers differ)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        known = {u for u, _ in USERS}
        while not self.stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            text = data.decode(errors="replace")
            lines = text.split("\r\n")
            if not lines[0] or lines[0].startswith("SIP/"):
                continue
            to = re.search(r"(?im)^To:.*?sip:([^@>;]+)@", text)
            status = "401 Unauthorized" if to and to.group(1) in known else "404 Not Found"
            copy = [line for line in lines[1:] if re.match(r"(?i)(via|from|to|call-id|cseq):", line)]
            reply = "\r\n".join([f"SIP/2.0 {status}", *copy, "Content-Length: 0", "", ""])
            self.sock.sendto(reply.encode(), addr)

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def svwar(work: Path) -> dict:
    # the density ban is lifted here so that the answers themselves are what svwar reads
    srv = HpbxServer(work / "srv", users=USERS, security={"scanner_agents": [], "flood_threshold": 0})
    runs = []
    with srv:
        target = ["-p", str(srv.port), "127.0.0.1"]
        for args in ([], ["--force"], ["-m", "INVITE"], ["-m", "INVITE", "--force"],
                     ["-m", "OPTIONS"], ["-m", "OPTIONS", "--force"]):
            r = tool(["svwar", "-e100-139", "-P", "15060", "-t", "0.005", *args, *target])
            r["found"] = len(table_rows(r["out"]))
            runs.append(r)
    stand_in = LeakyStandIn()
    try:
        check = tool(["svwar", "-e100-139", "-P", "15060", "-p", str(stand_in.port), "127.0.0.1"])
    finally:
        stand_in.close()
    return {"runs": runs, "selfcheck_found": len(table_rows(check["out"])), "selfcheck": check}


# ---------------------------------------------------------------------- svcrack
def crack(srv: HpbxServer, work: Path, user: str, port: int) -> dict:
    real = dict(USERS).get(user, "never-the-password")
    words = [f"guess{i:03d}x" for i in range(200)] + [real]  # the password on line 201
    dictionary = work / f"dict-{user}-{port}.txt"
    dictionary.write_text("\n".join(words) + "\n")
    before = len(security_events(srv, "auth_failed", "127.0.0.1"))
    r = tool(["svcrack", f"-u{user}", "-d", str(dictionary), "-P", str(port), "-p", str(srv.port),
              "--maximumtime", "2", "127.0.0.1"])
    banned = wait_for(lambda: security_events(srv, "banned", "127.0.0.1"), 3)
    r["failures_before_ban"] = len(security_events(srv, "auth_failed", "127.0.0.1")) - before
    r["password_found"] = real in r["out"]
    r["ban_lines"] = banned[-1:] if banned else []
    return r


def svcrack(work: Path) -> dict:
    out = {}
    # digest failures alone (density check off): the ban comes at auth_failures
    srv = HpbxServer(work / "srv-auth", users=USERS,
                     security={"scanner_agents": [], "flood_threshold": 0, "auth_failures": 10,
                               "ban_secs": BAN_SECS})
    with srv:
        legit = legit_registrations(srv, work, 20, 4)
        out["known_user"] = crack(srv, work, USERS[0][0], 15061)
        result = legit.wait()
        out["legit_ok"], out["legit_failed"] = result.successful, result.failed
        out["banned_answers_options"] = options_from("127.0.0.1", srv) is not None
        t0 = time.monotonic()
        served = wait_for(lambda: options_from("127.0.0.1", srv, 0.3), BAN_SECS + 5, 0.2)
        out["served_again_after_secs"] = round(time.monotonic() - t0, 2) if served else None
        out["unknown_user"] = crack(srv, work, "555", 15063)
    # the defaults (16 messages per 2 s, 10 failures per minute, whichever comes first)
    srv = HpbxServer(work / "srv-default", users=USERS, security={"scanner_agents": []})
    with srv:
        out["defaults"] = crack(srv, work, USERS[0][0], 15065)
    return out


# ---------------------------------------------------------------------- svmap
def svmap(work: Path) -> dict:
    out = {}
    srv = HpbxServer(work / "srv-on", users=USERS, security={})  # scanner filter: the default list
    with srv:
        r = tool(["svmap", "127.0.0.1", "-p", str(srv.port), "-P", "15062"])
        r["rows"] = table_rows(r["out"])
        wait_for(lambda: security_events(srv, "banned", "127.0.0.1"), 3)
        r["ban_lines"] = security_events(srv, "banned", "127.0.0.1")
        r["guard"] = admin(srv, "stats.get", layer="security")["security"]
        out["filter_on"] = r
    srv = HpbxServer(work / "srv-off", users=USERS, security={"scanner_agents": []})
    with srv:
        r = tool(["svmap", "127.0.0.1", "-p", str(srv.port), "-P", "15062"])
        r["rows"] = table_rows(r["out"])
        out["filter_off"] = r
    return out


# ---------------------------------------------------------------------- flood
def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def flood(work: Path) -> dict:
    out = {}
    srv = HpbxServer(work / "srv", users=USERS, security={"scanner_agents": []})  # defaults
    with srv:
        rss0 = rss_kb(srv.proc.pid)
        legit = legit_registrations(srv, work, 20, 5)
        attacker = SippRun(FLOOD, srv.sip_target, work, local_ip="127.0.0.4", calls=6000,
                           rate=2000, timeout=20, name="flood", trace_msg=False,
                           extra=["-l", "400"]).start()
        res = attacker.wait()
        out["flood_sent"] = res.successful + res.failed
        out["flood_answered"] = res.successful
        leg = legit.wait()
        out["legit_ok"], out["legit_failed"] = leg.successful, leg.failed
        out["legit_call"] = legit_call(srv)
        out["rss_growth_kb"] = rss_kb(srv.proc.pid) - rss0
        out["bans"] = wait_for(lambda: admin(srv, "ban.list"), 3)
        # the operator's view and hands
        out["admin_add"] = admin(srv, "ban.add", host="127.0.0.5", secs=60)
        out["banned_by_admin_answers"] = options_from("127.0.0.5", srv) is not None
        out["admin_remove"] = admin(srv, "ban.remove", host="127.0.0.5")
        out["unbanned_answers"] = options_from("127.0.0.5", srv) is not None
    # bans survive a restart: the flooder stays silenced
    srv2 = HpbxServer(work / "srv", users=USERS, security={"scanner_agents": []}, port=srv.port)
    with srv2:
        out["bans_after_restart"] = admin(srv2, "ban.list")
        out["flooder_answered_after_restart"] = options_from("127.0.0.4", srv2) is not None
        out["legit_after_restart"] = options_from(LEGIT, srv2) is not None
    return out


def main() -> None:
    scenario, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(work)  # sipvicious keeps its sessions under ~/.sipvicious
    result = {"svwar": svwar, "svcrack": svcrack, "svmap": svmap, "flood": flood}[scenario](work)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
