"""`hpbxctl` — the command-line client of the admin socket, and a small client class.

    hpbxctl [--socket PATH | --config PATH] [--json] METHOD [key=value ...]
    hpbxctl help [METHOD]

Help and argument types come from the method table (hpbx/admin/methods.py): a value given to
a string parameter is sent as typed; any other value is parsed as JSON when it looks like
JSON (numbers, true/false/null, objects, arrays, quoted strings). Exit status: 0 on success,
1 when the server answers an error, 2 for usage errors or when the server cannot be reached.
``obj.key=value`` sets one key of an object parameter: ``details.first_name=Anna``.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from typing import Any

import orjson

from hpbx.admin.methods import METHODS, Method
from hpbx.admin.protocol import RpcError, encode

DEFAULT_CONFIG = "config/hpbx.toml"
DEFAULT_SOCKET = "var/hpbx.sock"
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class AdminClient:
    """A blocking JSON-RPC client on the admin socket (one connection, calls in sequence)."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = bytearray()
        self.next_id = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_line(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 1]
                return line
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk

    def request(self, obj: Any) -> Any:
        """Send any JSON value, return the decoded answer line."""
        try:
            self.send_line(encode(obj))
        except (BrokenPipeError, ConnectionResetError):
            # The server may have refused us (uid not allowed) and said why before closing.
            pass
        return orjson.loads(self.read_line())

    def call(self, method: str, params: dict | list | None = None, **kw: Any) -> Any:
        """Call ``method``; return its result or raise RpcError."""
        if params is None:
            params = kw
        req = {"jsonrpc": "2.0", "method": method, "params": params, "id": self.next_id}
        self.next_id += 1
        answer = self.request(req)
        if "error" in answer:
            err = answer["error"]
            raise RpcError(err["code"], err["message"], err.get("data"))
        return answer["result"]


def socket_path(socket_arg: str | None, config_arg: str | None) -> str:
    """--socket, else $HPBX_ADMIN_SOCKET, else admin.socket from the settings file."""
    if socket_arg:
        return socket_arg
    env = os.environ.get("HPBX_ADMIN_SOCKET")
    if env:
        return env
    from hpbx import settings as settings_mod

    config = config_arg or DEFAULT_CONFIG
    if config_arg is None and not os.path.exists(config):
        return DEFAULT_SOCKET
    return settings_mod.load(config).admin.socket


def parse_value(raw: str, type_: str | None) -> Any:
    if type_ == "str":
        return raw
    looks_json = raw in ("true", "false", "null") or raw[:1] in ("{", "[", '"') or _NUMBER.fullmatch(raw)
    if looks_json:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            if type_ in ("object", "array"):
                raise ValueError(f"not valid JSON: {raw!r}") from None
    return raw


def parse_args(method: Method | None, items: list[str]) -> dict:
    """``key=value`` items; ``obj.key=value`` sets one key inside an object parameter
    (``details.first_name=Anna``, ``flags.cti_access=true``)."""
    types = {p.name: p.type for p in method.params} if method else {}
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        root, dot, inner = key.partition(".")
        try:
            if dot and types.get(root) == "object":
                target = params.setdefault(root, {})
                *path, last = inner.split(".")
                for part in path:
                    target = target.setdefault(part, {})
                    if not isinstance(target, dict):
                        raise ValueError(f"{part} is not an object")
                if not isinstance(target, dict) or not last:
                    raise ValueError("is not an object")
                target[last] = parse_value(raw, None)
            else:
                params[key] = parse_value(raw, types.get(key))
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return params


# -- output ----------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def format_table(rows: list[dict], columns: tuple[str, ...] = ()) -> str:
    if not rows:
        return "(none)"
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    cols = [c for c in columns if c in seen] or list(seen)
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _flatten(obj: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def format_result(result: Any, method: Method | None) -> str:
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        return format_table(result, method.columns if method else ())
    if isinstance(result, dict):
        pairs = _flatten(result)
        if not pairs:
            return "(empty)"
        width = max(len(k) for k, _ in pairs)
        return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in pairs)
    if isinstance(result, str):
        return result.rstrip("\n")
    return _cell(result)


def format_help(name: str | None) -> str:
    if name is None:
        width = max(len(n) for n in METHODS)
        lines = ["usage: hpbxctl [--socket PATH | --config PATH] [--json] METHOD [key=value ...]",
                 "       hpbxctl help [METHOD]", "", "methods:"]
        for n in sorted(METHODS):
            summary = METHODS[n].help.split(". ")[0].rstrip(".")
            lines.append(f"  {n.ljust(width)}  {summary}")
        return "\n".join(lines)
    m = METHODS[name]
    usage = " ".join([f"hpbxctl {name}"] + [f"{p.name}=<{p.type}>" if p.required else f"[{p.name}=<{p.type}>]"
                                            for p in m.params])
    lines = [usage, "", m.help]
    if m.params:
        lines += ["", "parameters:"]
        width = max(len(p.name) for p in m.params)
        for p in m.params:
            extra = []
            if p.required:
                extra.append("required")
            if p.choices:
                extra.append("one of " + "|".join(map(str, p.choices)))
            note = f" ({', '.join(extra)})" if extra else ""
            lines.append(f"  {p.name.ljust(width)}  {p.type:<6}  {p.help}{note}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpbxctl", description="hpbx admin client (JSON-RPC over the admin socket)",
                                     epilog="`hpbxctl help` lists the methods; `hpbxctl help METHOD` describes one.")
    parser.add_argument("--socket", help="admin socket path (default: admin.socket of --config)")
    parser.add_argument("--config", help=f"server settings file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    parser.add_argument("method", help="METHOD, or help")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="key=value parameters")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `hpbxctl ... | head`: the reader has gone; stop quietly as other Unix tools do
        # (stdout is pointed at /dev/null so the interpreter's final flush does not raise again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    rest = [a for a in args.args if a != "--json"]
    as_json = args.json or len(rest) != len(args.args)

    if args.method == "help":
        if len(rest) > 1:
            print("hpbxctl: usage: hpbxctl help [METHOD]", file=sys.stderr)
            return 2
        if rest and rest[0] not in METHODS:
            print(f"hpbxctl: unknown method {rest[0]!r} (hpbxctl help lists them)", file=sys.stderr)
            return 2
        print(format_help(rest[0] if rest else None))
        return 0

    method = METHODS.get(args.method)
    try:
        params = parse_args(method, rest)
    except ValueError as exc:
        print(f"hpbxctl: {exc}", file=sys.stderr)
        return 2
    try:
        path = socket_path(args.socket, args.config)
    except Exception as exc:  # ConfigError: the message names file and key
        print(f"hpbxctl: {exc}", file=sys.stderr)
        return 2
    try:
        with AdminClient(path, timeout=args.timeout) as client:
            result = client.call(args.method, params)
    except RpcError as exc:
        print(f"hpbxctl: {args.method}: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"hpbxctl: cannot talk to the server at {path}: {exc.strerror or exc}"
              if isinstance(exc, OSError) else f"hpbxctl: {path}: {exc}", file=sys.stderr)
        return 2
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        text = format_result(result, method)
        if text:
            print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
