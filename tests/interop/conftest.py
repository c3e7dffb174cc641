"""The interop suite: real SIP clients (baresip, linphone-daemon, SIPp) against the real server.
Every test here is marked ``interop`` (run alone with ``pytest -m interop tests/interop``)."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "sip"))


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


# ---- the interop matrix: outcomes of test_matrix.py's cells, written as a markdown table
_CELLS: dict[tuple[str, str], str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "client" not in params or "feature" not in params:
        return
    key = (params["client"], params["feature"])
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.passed:
            _CELLS[key] = "pass"
        elif report.skipped:
            reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
            _CELLS[key] = "not supported" if "not supported by the client" in reason else "skipped"
        else:
            _CELLS[key] = "fail"


def matrix_markdown() -> str:
    clients = sorted({c for c, _ in _CELLS}, key=lambda c: ("baresip", "linphone", "sipp").index(c)
                     if c in ("baresip", "linphone", "sipp") else 9)
    features = []
    for _, f in _CELLS:
        if f not in features:
            features.append(f)
    lines = ["| client | " + " | ".join(features) + " |",
             "|---" * (len(features) + 1) + "|"]
    for c in clients:
        lines.append(f"| {c} | " + " | ".join(_CELLS.get((c, f), "-") for f in features) + " |")
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter):
    if not _CELLS:
        return
    table = matrix_markdown()
    out = HERE.parent.parent / "var" / "interop-matrix.md"
    try:
        out.parent.mkdir(exist_ok=True)
        out.write_text(table)
    except OSError:
        pass
    terminalreporter.write_sep("-", f"interop matrix (also in {out})")
    terminalreporter.write(table)
