"""Where the repository and the shared real data are."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MEDSEG_DATA_ROOT", REPO.parent / "shared" / "data")).absolute()  # links from tmp
