"""Timed contact: message classes, the send-time rule set, send windows in the customer's own time
zone, and consent. Pure functions over facts and `now`: no database, no Prefect, no web.

- `policy`: `policies/contact.yaml`, validated (`load_contact_policy`).
- `timezones.customer_zone(shipping, billing, shop_zone)`: the zone messages are timed in, and why.
- `consent.from_webhook(topic, payload, sent_at)` and `consent.apply(held, event)`: Shopify's consent
  events, resolved the same whatever order they arrive in.
- `rules.decide(touchpoint, customer, history, policy, now) -> Verdict`: send now, hold until a
  time, or skip, with every rule's result (`Verdict.as_dict()` is the record kept on the touchpoint,
  `Verdict.line()` the timeline's sentence).

How a dispatcher is meant to use it: decide each due touchpoint right before sending; a customer's
touchpoints one at a time, adding every message sent or claimed to that customer's history before
deciding the next (or the caps cannot see it); keep a hold's `send_at` as the touchpoint's new due
time and pass it back as `held_until` (the stale limit counts from it, so a message we held is never
dropped for having waited).
"""
