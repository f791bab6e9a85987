"""Grammar tests share the scheduler tests' harness (Driver, check_pool_clean)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "scheduler"))
