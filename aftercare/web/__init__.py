"""The web app: webhooks in, health out. Wakes Prefect through `wake`; never imports flows/."""
