"""The spine: what every wing stands on. The database and its claims (`db`), the inbox every delivery
enters through (`inbox`), the outbox every mail leaves through (`outbox`), the mail backends
(`email`) and what a customer's address is to us (`addresses`). It imports no wing, no Prefect and
no web.
"""
