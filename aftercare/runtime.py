"""What a process needs to do aftercare's work, built once from Settings and passed around."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache

from sqlalchemy.engine import Engine

from aftercare.orders.inventory import InventoryPort, TrustOrderInventory
from aftercare.orders.warehouse import WarehousePort, make_warehouse
from aftercare.policies import Policies, load_policies
from aftercare.rendering import Renderer
from aftercare.settings import Settings
from aftercare.spine.db import make_engine
from aftercare.spine.email import EmailBackend, make_backend


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    policies: Policies
    renderer: Renderer
    backend: EmailBackend
    inventory: InventoryPort
    warehouse: WarehousePort | None = None  # None: the files port under settings.warehouse_dir

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        inventory: InventoryPort | None = None,
        warehouse: WarehousePort | None = None,
    ) -> Runtime:
        return cls(
            settings=settings,
            engine=make_engine(settings),
            policies=load_policies(settings.policies_dir),
            renderer=Renderer(settings.templates_dir),
            backend=make_backend(settings),
            inventory=inventory or TrustOrderInventory(),
            warehouse=warehouse or make_warehouse(settings),
        )


@cache
def _from_environment() -> Runtime:
    return Runtime.build(Settings())


_current: ContextVar[Runtime | None] = ContextVar("aftercare_runtime", default=None)


def current() -> Runtime:
    """The runtime in use: the one given with `use_runtime`, else one built from the environment.
    Flows run as deployments (parameters must be JSON), so they find their runtime here."""
    return _current.get() or _from_environment()


@contextmanager
def use_runtime(rt: Runtime) -> Iterator[Runtime]:
    """Run flows and tasks in this block against `rt` (tests, benchmarks, the CLI)."""
    token = _current.set(rt)
    try:
        yield rt
    finally:
        _current.reset(token)
