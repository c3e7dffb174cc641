"""hpbxctl as operators run it: a subprocess on the real socket; exit codes, stdout, stderr."""
from __future__ import annotations

import subprocess

import orjson

from adminrig import HPBXCTL
from hpbx.admin.client import format_table, parse_args, parse_value
from hpbx.admin.methods import METHODS


def ctl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([str(HPBXCTL), *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_method_from_the_table():
    out = ctl("help")
    assert out.returncode == 0, out.stderr
    methods_part = out.stdout.split("\nmethods:\n", 1)[1]
    listed = [line.split()[0] for line in methods_part.splitlines()]
    assert listed == sorted(METHODS)


def test_help_of_one_method_shows_its_parameters():
    out = ctl("help", "user.create")
    assert out.returncode == 0
    for p in METHODS["user.create"].params:
        assert f"  {p.name} " in out.stdout
    assert "username=<str>" in out.stdout.splitlines()[0]
    assert "[details=<object>]" in out.stdout.splitlines()[0]
    bad = ctl("help", "user.explode")
    assert bad.returncode == 2 and "unknown method 'user.explode'" in bad.stderr and bad.stdout == ""


def test_result_as_text_and_as_json(admin_server):
    out = ctl("--socket", admin_server.path, "stats.get", "layer=admin")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert lines["admin.clients"] == "1"
    out = ctl("--socket", admin_server.path, "--json", "system.info")
    assert out.returncode == 0, out.stderr
    info = orjson.loads(out.stdout)
    assert info["version"] and info["uptime"] >= 0 and "wan" in info


def test_socket_found_through_config(admin_server, tmp_path):
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(f'[admin]\nsocket = "{admin_server.path}"\n')
    out = ctl("--config", str(cfg), "stats.get")
    assert out.returncode == 0, out.stderr
    bad = ctl("--config", str(tmp_path / "missing.toml"), "stats.get")
    assert bad.returncode == 2 and "missing.toml: file not found" in bad.stderr


def test_errors_exit_nonzero_with_message_on_stderr(admin_server):
    sock = admin_server.path
    out = ctl("--socket", sock, "registration.list", "limit=abc")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == "hpbxctl: registration.list: limit: must be an integer, got string 'abc'"
    out = ctl("--socket", sock, "foo.bar")
    assert out.returncode == 1 and out.stderr.strip() == "hpbxctl: foo.bar: method not found: foo.bar"
    out = ctl("--socket", sock, "call.list")
    assert out.returncode == 1 and "calls is not available" in out.stderr
    out = ctl("--socket", sock, "stats.get", "layer")
    assert out.returncode == 2 and "expected key=value, got 'layer'" in out.stderr
    out = ctl("--socket", sock + ".nothing", "stats.get")
    assert out.returncode == 2 and "cannot talk to the server" in out.stderr


def test_values_typed_by_the_table():
    assert parse_value("0441234567", "str") == "0441234567"
    assert parse_value("101", "str") == "101"
    assert parse_value("10", "int") == 10
    assert parse_value("true", "bool") is True
    assert parse_value('{"a": [1]}', "object") == {"a": [1]}
    assert parse_value("0441", "any") == "0441"  # not JSON: a leading zero keeps it a string
    assert parse_value("-2.5", None) == -2.5
    assert parse_value("hello", "int") == "hello"  # the server names the field and the type


def test_table_is_aligned():
    text = format_table([{"user": "anna", "expires_in": 30, "behind_nat": True},
                         {"user": "bartholomew", "expires_in": 3600, "behind_nat": False, "x": None}],
                        ("user", "behind_nat", "expires_in", "x"))
    lines = text.splitlines()
    assert lines[0].split() == ["USER", "BEHIND_NAT", "EXPIRES_IN", "X"]
    col = lines[0].index("BEHIND_NAT")
    assert lines[1][col:].startswith("yes") and lines[2][col:].startswith("no")
    assert lines[2].split() == ["bartholomew", "no", "3600", "-"]
    assert format_table([]) == "(none)"


def test_import_export_without_a_running_server(tmp_path):
    """No server listening: hpbx import/export work on the store file of the config."""
    from adminrig import REPO

    hpbx = str(REPO / ".venv" / "bin" / "hpbx")
    cfg = tmp_path / "offline.toml"
    cfg.write_text(f'[admin]\nsocket = "{tmp_path / "none.sock"}"\n[store]\npath = "{tmp_path / "db.sqlite3"}"\n')
    demo = REPO / "config" / "demo.toml"
    out = subprocess.run([hpbx, "import", str(demo), "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported tenant demo (")
    first = subprocess.run([hpbx, "export", "demo", "--config", str(cfg), "-o", str(tmp_path / "demo.out.toml")],
                           capture_output=True, text=True, timeout=20)
    assert first.returncode == 0 and first.stdout == ""
    exported = (tmp_path / "demo.out.toml").read_text()
    assert 'name = "demo"' in exported and "alice" in exported
    again = subprocess.run([hpbx, "import", str(demo), "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert again.returncode == 1 and "tenant.name: tenant 'demo' already exists" in again.stderr
    missing = subprocess.run([hpbx, "export", "nope", "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert missing.returncode == 1 and missing.stderr.strip() == "hpbx: export nope: tenant 'nope' not found"
    bad = tmp_path / "bad.toml"
    bad.write_text('[tenant]\nname = "x"\n[[users]]\nusername = "u1"\nsip_password = "pw-1"\ninternal_number = "705"\n')
    out = subprocess.run([hpbx, "import", str(bad), "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and "users[0].internal_number: 705 is reserved" in out.stderr


def test_dotted_keys_fill_object_parameters():
    m = METHODS["user.update"]
    assert parse_args(m, ["username=anna", "details.first_name=Anna", "details.mobile=0791234567",
                          "flags.cti_access=true"]) == {
        "username": "anna", "details": {"first_name": "Anna", "mobile": "0791234567"},
        "flags": {"cti_access": True}}
    # a dot in a key of a string parameter is just a (wrong) name the server will refuse
    assert parse_args(m, ["user.name=x"]) == {"user.name": "x"}


def test_output_into_a_closed_pipe_ends_quietly():
    """`hpbxctl help | head -1`: the reader leaves after one line; hpbxctl stops without a
    BrokenPipeError traceback and with the exit status a shell gives for SIGPIPE."""
    proc = subprocess.Popen([str(HPBXCTL), "help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the "head" is gone before hpbxctl has written everything
    _, err = proc.communicate(timeout=20)
    assert first.strip(), "hpbxctl help printed nothing"
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode in (0, 141), proc.returncode
