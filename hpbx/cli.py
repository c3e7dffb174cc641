"""`hpbx serve|check-config|import|export` — the server's command line."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from hpbx import settings as settings_mod
from hpbx.errors import ConfigError


def _cmd_check_config(args) -> int:
    settings_mod.load(args.config)
    print(f"{args.config}: ok")
    return 0


def _cmd_serve(args) -> int:
    from hpbx import app

    cfg = settings_mod.load(args.config)
    return app.run(cfg)


def _admin_client(cfg):
    """A client on the running server's admin socket, or None when no server is listening."""
    from hpbx.admin.client import AdminClient

    try:
        return AdminClient(cfg.admin.socket)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


@contextmanager
def _offline_provisioning(cfg):
    """The provisioning service straight on the store file, for when no server is running."""
    from hpbx.pbx.provisioning import Provisioning
    from hpbx.store.backend import open_store

    store = open_store(cfg.store)
    try:
        yield Provisioning(store)
    finally:
        store.close()


def _cmd_import(args) -> int:
    """Through the running server when there is one (its dial plans change at once), else
    straight into the store."""
    from hpbx.admin.protocol import RpcError
    from hpbx.errors import HpbxError

    cfg = settings_mod.load(args.config)
    try:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        print(f"hpbx: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        client = _admin_client(cfg)
        if client is not None:
            with client:
                result = client.call("tenant.import", {"toml": text})
        else:
            with _offline_provisioning(cfg) as prov:
                result = prov.import_tenant(text)
    except RpcError as exc:
        print(f"hpbx: {args.file}: {exc.message}", file=sys.stderr)
        return 1
    except HpbxError as exc:
        print(f"hpbx: {args.file}: {exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{v} {k}" for k, v in result.items() if k != "tenant" and v)
    print(f"imported tenant {result['tenant']}" + (f" ({counts})" if counts else ""))
    return 0


def _cmd_export(args) -> int:
    from hpbx.admin.protocol import RpcError
    from hpbx.errors import HpbxError

    cfg = settings_mod.load(args.config)
    try:
        client = _admin_client(cfg)
        if client is not None:
            with client:
                text = client.call("tenant.export", {"name": args.tenant})
        else:
            with _offline_provisioning(cfg) as prov:
                text = prov.export_tenant(args.tenant)
    except RpcError as exc:
        print(f"hpbx: export {args.tenant}: {exc.message}", file=sys.stderr)
        return 1
    except HpbxError as exc:
        print(f"hpbx: export {args.tenant}: {exc}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpbx", description="hosted PBX and SIP/RTP media switch")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the server in the foreground")
    p.add_argument("--config", default="config/hpbx.toml")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("check-config", help="validate a settings file and exit")
    p.add_argument("--config", default="config/hpbx.toml")
    p.set_defaults(func=_cmd_check_config)
    p = sub.add_parser("import", help="create a tenant from a TOML file (through the running server if any)")
    p.add_argument("file")
    p.add_argument("--config", default="config/hpbx.toml")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("export", help="print a tenant as TOML (the import format)")
    p.add_argument("tenant")
    p.add_argument("--config", default="config/hpbx.toml")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hpbx: config error: {exc}", file=sys.stderr)
        return 2
