"""The wings' arrows point down: the spine imports no wing; the core (spine, orders, reviews'
pure parts, contact, surveys) imports no Prefect and no web; only `processing` routes between
wings. Read from the source with `ast`, so a new import that breaks a rule fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aftercare"
WINGS = ("orders", "reviews", "contact", "surveys", "recovery")
CORE = ("spine", "orders", "contact", "surveys", "recovery")


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(wing: str) -> list[Path]:
    return sorted((PACKAGE / wing).rglob("*.py"))


def test_every_wing_exists_as_a_package() -> None:
    for wing in ("spine", *WINGS):
        assert (PACKAGE / wing / "__init__.py").is_file(), wing


@pytest.mark.parametrize("path", modules("spine"), ids=lambda p: p.name)
def test_the_spine_imports_no_wing(path: Path) -> None:
    upward = {
        m
        for m in imports_of(path)
        if m.startswith(tuple(f"aftercare.{w}" for w in WINGS)) or m.startswith("aftercare.processing")
    }
    assert not upward, f"{path.name} imports {sorted(upward)}"


@pytest.mark.parametrize(
    "path", [p for w in CORE for p in modules(w)], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_the_core_imports_no_prefect_and_no_web(path: Path) -> None:
    outward = {
        m
        for m in imports_of(path)
        if m.split(".")[0] in {"prefect", "fastapi", "starlette", "uvicorn"} or m.startswith("aftercare.web")
    }
    assert not outward, f"{path.relative_to(PACKAGE)} imports {sorted(outward)}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from aftercare.orders import shipping\nimport prefect\n")
    assert {"aftercare.orders", "aftercare.orders.shipping", "prefect"} <= imports_of(bad)
