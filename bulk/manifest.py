"""The manifest: one JSON line per input and attempt, appended as results arrive (a killed driver loses nothing
written so far); the last line of a path wins. A row: path, status (done / failed / skipped), reason, sha256,
outputs, seconds (of audio) and what the worker did (windows through the model, model loads)."""
from __future__ import annotations

import json
from pathlib import Path

STATUSES = ("done", "failed", "skipped")


def read_manifest(path: str | Path) -> dict[str, dict]:
    """path -> its latest row; a missing manifest is empty, a torn last line (a killed driver) is ignored."""
    rows: dict[str, dict] = {}
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "path" in row:
            rows[row["path"]] = row
    return rows


def completed(previous: dict | None) -> tuple[str, float]:
    """(sha256, seconds) of an earlier row that counts as done (done or skipped), else ("", 0.0)."""
    if previous and previous.get("status") in ("done", "skipped") and previous.get("sha256"):
        return previous["sha256"], float(previous.get("seconds") or 0.0)
    return "", 0.0


class Manifest:
    """Append-only JSON lines, flushed per row."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole job, closed by close()

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
