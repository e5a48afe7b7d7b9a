"""Make the shared toy module/DataModule (``callback_toys``) importable under
``--import-mode=importlib``, which puts no test directory on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
