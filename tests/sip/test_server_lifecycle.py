"""The server process: refuses a bad config naming file and key, reloads on SIGHUP without
losing registrations, stops cleanly on SIGTERM (exit 0, asserted by the harness)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from harness import REPO, HpbxServer, RawPhone, digest_authorization, header, sip_options


def serve(config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpbx", "serve", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_missing_config_names_the_file(tmp_path):
    proc = serve(tmp_path / "nope.toml")
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope.toml'}: file not found" in proc.stderr


def test_invalid_config_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[sip]\nlisten = ["udp:127.0.0.1:5999"]\nt1_ms = "fast"\n')
    proc = serve(bad)
    assert proc.returncode == 2
    assert f"{bad}: sip.t1_ms: must be int" in proc.stderr, proc.stderr


def register(phone, srv, user, password, expires=300):
    ruri = f"sip:{srv.host}:{srv.port}"

    def send(extra=()):
        phone.request("REGISTER", ruri, [f"Contact: <sip:{user}@{phone.host}:{phone.port}>",
                                         f"Expires: {expires}", *extra],
                      to_uri=f"sip:{user}@{srv.host}", from_user=user)
        return phone.recv_until(lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12], 2.0)

    challenge = header(send(), "WWW-Authenticate")[0]
    return send([f"Authorization: {digest_authorization(challenge, user, password, 'REGISTER', ruri)}"])


def test_sighup_reload_keeps_registrations(tmp_path):
    srv = HpbxServer(tmp_path, users=[("hup", "hup-secret")], sip_extra={"max_devices": 3})
    with srv:
        with RawPhone(srv.host, srv.port) as phone:
            assert register(phone, srv, "hup", "hup-secret").startswith("SIP/2.0 200")
            srv.config.write_text(srv.config.read_text().replace("max_devices = 3", "max_devices = 1")
                                  .replace("min_expires = 10", "min_expires = 20"))
            srv.signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "settings reloaded" not in srv.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "settings reloaded" in srv.log() and "1 bindings kept" in srv.log(), srv.log()
            assert sip_options(srv.host, srv.port)
            # the new minimum applies at once; the binding made before the reload is still listed
            assert register(phone, srv, "hup", "hup-secret", expires=15).startswith("SIP/2.0 423")
            ok = register(phone, srv, "hup", "hup-secret", expires=300)
            assert ok.startswith("SIP/2.0 200") and len(header(ok, "Contact")) == 1, ok
        # a broken file on SIGHUP keeps the old settings and the server running
        srv.config.write_text("[sip]\nt1_ms = 'x'\n")
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload refused" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload refused" in srv.log() and "sip.t1_ms" in srv.log()
        assert sip_options(srv.host, srv.port)
        assert [b["username"] for b in srv.bindings()] == ["hup"]


def test_deleting_a_user_drops_its_bindings(tmp_path):
    srv = HpbxServer(tmp_path, users=[("gone", "gone-secret"), ("stays", "stays-secret")])
    with srv:
        with RawPhone(srv.host, srv.port) as phone:
            assert register(phone, srv, "gone", "gone-secret").startswith("SIP/2.0 200")
            assert register(phone, srv, "stays", "stays-secret").startswith("SIP/2.0 200")
        proc = subprocess.run([sys.executable, "-m", "hpbx.admin.client", "--socket",
                               str(srv.dir / "hpbx.sock"), "user.delete", "username=gone"],
                              cwd=REPO, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(srv.bindings()) != 1:
            time.sleep(0.1)
        assert [b["username"] for b in srv.bindings()] == ["stays"]
