"""A content-addressed cache of judge answers, one JSON file per prompt.

The key is the sha256 of the whole request: provider, base URL, template version, every setting
that shapes the answer (temperature, max tokens, thinking, effort, structured-output mode) and the
request body actually sent (model, prompt, output schema). A rerun with the same judge over the same
replies finds every answered turn and calls no API; any change to the judge, a setting, the schema,
the endpoint, the template or a reply is a miss. Only valid answers are stored; an error is never
cached, so a rerun asks again.

Writes go to a temporary file in the same folder and are then renamed over the target
(``os.replace`` is atomic on POSIX), so a killed run never leaves a half-written entry and
concurrent runs sharing the folder at worst write the same answer twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from posttrain.records import write_json


def cache_key(request: Mapping[str, Any]) -> str:
    """sha256 hex of a whole request: ``{provider, base_url, template_version, settings, body}``.

    Keys are sorted, so the same request always hashes the same whatever order it was built in.
    """
    payload = json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Folder of ``<key[:2]>/<key>.json`` entries (the two-letter shards keep folders small)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None when absent or unreadable (a corrupt file counts as a miss)."""
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("answer"), dict) else None

    def put(self, key: str, answer: dict[str, Any], *, input_tokens: int, output_tokens: int, cost_usd: float,
            n_parse_failures: int = 0, n_api_errors: int = 0, meta: dict[str, Any] | None = None) -> None:
        """Store a valid answer with what making it cost and how many failed attempts preceded it.

        A hit reports these figures again, so a score row built from the cache equals the row of the
        run that paid for it; a hit itself calls nothing and spends nothing.
        """
        entry = {"key": key, "answer": answer, "input_tokens": input_tokens, "output_tokens": output_tokens,
                 "cost_usd": cost_usd, "n_parse_failures": n_parse_failures, "n_api_errors": n_api_errors,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 **(meta or {})}
        write_json(self._path(key), entry)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None
