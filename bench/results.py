"""Writing a benchmark's result: strict JSON, printed and, when asked, saved.

Strict: NaN or infinity raises instead of writing `NaN`, which is not JSON (every JSON we write
must be valid); a value that is missing is `null`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def as_json(result: Any) -> str:
    return json.dumps(result, indent=1, allow_nan=False)


def save_json(result: Any, path: str | Path) -> None:
    """Write `result` to `path` (its folder made if needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(as_json(result) + "\n", encoding="utf-8")


def emit_json(result: Any, path: str | Path | None) -> None:
    """Print `result`, and save it to `path` when one is given."""
    print(as_json(result))
    if path:
        save_json(result, path)
