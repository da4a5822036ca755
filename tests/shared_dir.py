"""Where the team's ../shared (real Shopify fixtures, SendGrid's OpenAPI document) is, if anywhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _looks_shared(path: Path) -> bool:
    return (path / "fixtures" / "shopify").is_dir() or (path / "contracts" / "sendgrid").is_dir()


def find_shared() -> Path | None:
    """AFTERCARE_SHARED_DIR; else a `shared` folder beside the project or an ancestor (../shared);
    else, for a clone of a local checkout (CI clones into a temporary folder), the one beside the
    checkout it was cloned from. None in a user's clone, where contract tests skip."""
    if env := os.environ.get("AFTERCARE_SHARED_DIR"):
        return Path(env)
    for parent in [PROJECT_ROOT, *PROJECT_ROOT.parents]:
        if _looks_shared(parent / "shared"):
            return parent / "shared"
    try:
        origin = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except OSError:
        origin = ""
    if origin.startswith("file://"):
        origin = origin.removeprefix("file://")
    if origin.startswith("/") and _looks_shared(Path(origin).resolve().parent / "shared"):
        return Path(origin).resolve().parent / "shared"
    return None
