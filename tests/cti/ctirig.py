"""The call rig (tests/sip/callrig.py) with the web face's listener on, so CTI clients can
connect to ``/cti`` while SIPp phones and callers run."""
from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

from harness import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sip"))
from callrig import CallRig, number, trunk, user  # noqa: E402,F401


def cti_user(name: str, internal: str, *, displayed: str = "", groups=(), cti_groups=(),
             flags=("cti_access",)) -> str:
    """A user with CTI password ``<name>-cti`` (and SIP password ``<name>-pw``)."""
    text = user(name, internal, displayed, flags=())
    text += f'cti_password = "{name}-cti"\n'
    if groups:
        text += "presence_groups = [" + ", ".join(f'"{g}"' for g in groups) + "]\n"
    if cti_groups:
        text += "cti_groups = [" + ", ".join(f'"{g}"' for g in cti_groups) + "]\n"
    if flags:
        text += "[users.flags]\n" + "".join(f"{k} = true\n" for k in flags)
    return text


class CtiRig(CallRig):
    def __init__(self, directory: Path, tenant_toml: str, **kw):
        super().__init__(directory, tenant_toml, **kw)
        self.http_port = free_port()
        with open(self.server.config, "a") as f:
            f.write(f'\n[http]\nlisten = ["http:127.0.0.1:{self.http_port}"]\n')

    @property
    def cti_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/cti"


_STAMP = re.compile(r"(?m)^-{5,} (\d{4}-\d\d-\d\d\t?\s*\d\d:\d\d:\d\d\.\d+)")


def message_times(result, first_line_prefix: str, direction: str = "sent") -> list[float]:
    """Wall-clock times (epoch s) of the messages SIPp traced whose first line starts with the
    prefix: SIPp's -trace_msg heads each message with a dashed line ending in its timestamp."""
    out = []
    for block in re.split(r"(?m)^(?=-{5,})", result.messages):
        m = _STAMP.match(block)
        if not m:
            continue
        head, _, text = block.partition("\n\n")
        if (direction in head) and text.strip("\n").startswith(first_line_prefix):
            stamp = re.sub(r"\s+", " ", m.group(1).replace("\t", " "))
            out.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return out
