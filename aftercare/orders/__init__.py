"""Orders: Shopify's payloads read (`shopify`), an order received and confirmed (`receipt`), its
shipments and notices (`shipping`), the warehouse hand-off (`warehouse`), stock (`inventory`) and
what happened to it, in order (`timeline`). Stands on the spine; no Prefect, no web.
"""
