"""Timed contact: message classes, the send-time rule set, send windows in the customer's own time
zone, and consent. Pure functions over facts and `now`: no database, no Prefect, no web."""
