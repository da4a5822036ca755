"""The inventory port: can the shop fulfil these lines? The default trusts the order (Shopify already
reserved the stock at checkout); a shop with its own stock system plugs in an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StockRequest:
    sku: str | None
    title: str
    quantity: int


class InventoryPort(Protocol):
    def shortages(self, lines: list[StockRequest]) -> list[StockRequest]:
        """The lines that cannot be fulfilled from stock (empty when all can)."""
        ...


class TrustOrderInventory:
    """Believes Shopify: every line of a placed order is in stock."""

    def shortages(self, lines: list[StockRequest]) -> list[StockRequest]:
        return []


class FixedStockInventory:
    """Stock levels given up front (per SKU); for shops that export a stock sheet, and for tests."""

    def __init__(self, stock: dict[str, int]):
        self.stock = dict(stock)

    def shortages(self, lines: list[StockRequest]) -> list[StockRequest]:
        return [line for line in lines if line.sku and self.stock.get(line.sku, 0) < line.quantity]
