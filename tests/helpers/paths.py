"""Where the tests find the repository and the shared dataset copy."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASET = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"
