"""Published JSON without the server's paths.

The loop's ``config.json`` and ``report.json`` name the files it read by their paths on the
worker (the tenant's assets in the inline scene, its target sets and detector weights, its own
output folder). A tenant downloads them, so before they are published every such path becomes relative:
to the job's working folder (the artifacts' own layout: ``dataset``, ``plots/map.png``), to the
job's folder, or to the tenant's space (``targets/<id>/annotations.json``, ``assets/<id>/object``).
The files in ``work/`` keep their absolute paths: a resumed run compares its config with them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def server_prefixes(job_dir: Path, storage_root: Path) -> list[str]:
    """The folders whose paths are taken out, innermost first: the job's working folder, the
    job's folder, the tenant's folder (``<root>/tenants/<tenant>``), the storage root."""
    job_dir = job_dir.resolve()
    tenant_dir = job_dir.parent.parent
    return [str(job_dir / "work"), str(job_dir), str(tenant_dir), str(storage_root.resolve())]


def without_prefixes(value: Any, prefixes: list[str]) -> Any:
    """``value`` (parsed JSON) with every string's server paths made relative."""
    if isinstance(value, str):
        for prefix in prefixes:
            if value == prefix:
                return "."
            value = value.replace(prefix + "/", "")
        return value
    if isinstance(value, list):
        return [without_prefixes(item, prefixes) for item in value]
    if isinstance(value, dict):
        return {key: without_prefixes(item, prefixes) for key, item in value.items()}
    return value


def copy_portable(source: Path, target: Path, prefixes: list[str]) -> None:
    """Copy ``source`` to ``target``; a JSON file with server paths in it is rewritten without them."""
    if source.suffix == ".json":
        try:
            data = json.loads(source.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None  # not the loop's JSON: published as it is
        if data is not None:
            portable = without_prefixes(data, prefixes)
            if portable != data:
                target.write_text(json.dumps(portable, indent=2))
                return
    shutil.copy2(source, target)
