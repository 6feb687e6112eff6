"""Results written as they arrive, one JSON object per line, so an interrupted run resumes.

Each line carries a `key` (SAE, units, unit, explainer/simulator, prompt version, ...) and a
`status` ("ok" or "failed" with a `reason`). On start the file is read back; the last line for a
key wins, a half-written last line (a killed run) is ignored. `done(key)` is true only for "ok",
so a rerun asks again only for what failed or never finished.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def key_string(key: dict) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


class ResultStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._rows: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a killed run was writing
                self._rows[key_string(row["key"])] = row

    def get(self, key: dict) -> dict | None:
        return self._rows.get(key_string(key))

    def done(self, key: dict) -> bool:
        row = self.get(key)
        return row is not None and row.get("status") == "ok"

    def put(self, key: dict, status: str, **fields) -> dict:
        row = {"key": key, "status": status, **fields}
        line = json.dumps(row) + "\n"
        with self._lock:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._rows[key_string(key)] = row
        return row

    def rows(self) -> list[dict]:
        return list(self._rows.values())
