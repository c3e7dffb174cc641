"""RFC 4475 torture messages and the PROTOS c07-sip suite against the running server.

The messages name foreign hosts (192.0.2.x, a broadcast maddr), so the server runs inside
``unshare -n`` with only loopback up (torture_runner.py), and the answers are checked here
against the server verdicts of EXPECTED.tsv.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent / "torture_runner.py"

# name -> acceptable status codes of the first answer, from EXPECTED.tsv's server column, for a
# registrar/endpoint without an INVITE handler (unknown and unhandled methods answer 405).
VERDICTS = {
    "badvers": {505},
    "bext01": {420},
    "unkscm": {416},
    "novelsc": {416, 404},
    "zeromf": {483, 200},
    "unksm2": {400},
    "badinv01": {400},
    "scalar02": {400},
    "quotbal": {400, 405},
    "ltgtruri": {400},
    "lwsruri": {400},
    "mismatch01": {400},
    "mismatch02": {400, 405, 501},
    "multi01": {400},
    "insuf": {400},
    "regaut01": {401},
    "escnull": {401},
    "dblreq": {401},
    "esc02": {405, 501},
    "intmeth": {405, 501},
    "cparam01": {401},
    "cparam02": {401},
    "regescrt": {401},
}
# responses and stray messages: never answered
SILENT = {"bigcode", "scalarlg", "unreason", "noreason", "bcast"}
# may be refused (400) or tolerated, or dropped
EITHER = {"lwsstart", "trws", "escruri", "baddate", "regbadct", "badaspec", "baddn", "badbranch",
          "clerr", "ncl", "mcl01", "test", "inv2543"}


@pytest.fixture(scope="module")
def torture(shared_testdata, tmp_path_factory):
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("unshare -n needs root")
    work = tmp_path_factory.mktemp("torture")
    out = work / "result.json"
    cases = os.environ.get("HPBX_PROTOS_CASES", "0-4526")
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c",
         f'ip link set lo up && exec "{sys.executable}" "{RUNNER}" "{shared_testdata}" "{work}" "{out}" "{cases}"'],
        capture_output=True, text=True, timeout=420, cwd=RUNNER.parent.parent.parent)
    if not out.exists():
        pytest.fail(f"torture runner produced no result (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text()), shared_testdata


def test_expected_table_is_covered(torture):
    result, data = torture
    with open(data / "rfc4475" / "EXPECTED.tsv") as fh:
        names = {row["name"] for row in csv.DictReader(fh, delimiter="\t")}
    assert names == set(result["rfc4475"])
    assert set(VERDICTS) | SILENT | EITHER <= names


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_rfc4475_verdict(torture, name):
    result, _ = torture
    answers = result["rfc4475"][name]
    assert answers, f"{name}: no answer"
    status = int(answers[0].split()[1])
    assert status in VERDICTS[name], f"{name}: {answers}"


def test_rfc4475_responses_are_not_answered(torture):
    result, _ = torture
    answered = {n: result["rfc4475"][n] for n in SILENT if result["rfc4475"][n]}
    assert not answered


def test_rfc4475_valid_requests_never_get_400(torture):
    result, data = torture
    with open(data / "rfc4475" / "EXPECTED.tsv") as fh:
        valid = [row["name"] for row in csv.DictReader(fh, delimiter="\t") if row["valid_or_invalid"] == "valid"]
    bad = {n: result["rfc4475"][n] for n in valid
           if n not in SILENT and n not in EITHER and 400 not in VERDICTS.get(n, ()) and any(a.startswith("SIP/2.0 400") for a in result["rfc4475"][n])}
    assert not bad


def test_dblreq_handles_only_the_register(torture):
    result, _ = torture
    assert len(result["rfc4475"]["dblreq"]) == 1, result["rfc4475"]["dblreq"]


def test_server_alive_after_every_message(torture):
    result, _ = torture
    dead = [n for n, alive in result["alive_after"].items() if not alive]
    assert not dead


def test_protos_suite_keeps_server_alive(torture):
    result, _ = torture
    assert result["protos_rc"] == 0, result["protos_tail"]
    assert result["alive_end"]
    assert result["exit"] == 0, result["exit"]
