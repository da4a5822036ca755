"""The demo's own sample orders, in Shopify's documented orders/create webhook shape."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load(name: str) -> dict[str, Any]:
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
