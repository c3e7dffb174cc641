import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent, HERE.parent / "sip", HERE.parent / "unit", HERE.parent / "conference"):
    sys.path.insert(0, str(p))
