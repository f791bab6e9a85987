import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "engine", HERE.parent / "scheduler", HERE.parent / "server"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
