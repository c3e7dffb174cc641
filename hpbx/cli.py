"""`hpbx serve|check-config|import|export` — the server's command line."""
from __future__ import annotations

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpbx", description="hosted PBX and SIP/RTP media switch")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the server in the foreground")
    p.add_argument("--config", default="config/hpbx.toml")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("check-config", help="validate a settings file and exit")
    p.add_argument("--config", default="config/hpbx.toml")
    p.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hpbx: config error: {exc}", file=sys.stderr)
        return 2
