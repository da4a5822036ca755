"""Small, named errors whose messages say what to do next."""


class AftercareError(Exception):
    """Base of every error aftercare raises on purpose."""


class ConfigError(AftercareError):
    """The settings or a policy file cannot be used as they are."""


class InvalidPayload(AftercareError):
    """A webhook body was authentic but cannot be used; it is kept with this reason."""


class TemplateMissingVariable(AftercareError):
    """A template referenced a variable the renderer was not given."""


class SendError(AftercareError):
    """An email provider did not accept a message."""


class TransientSendError(SendError):
    """Worth retrying later: rate limit, provider outage, timeout."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class AmbiguousSendError(SendError):
    """The request reached the provider but no answer came back (read timeout, connection dropped).
    The provider may have accepted it; with no idempotency key, resending could mail twice."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PermanentSendError(SendError):
    """Retrying cannot help (bad request, auth, too large): the message is marked failed."""

    def __init__(self, reason: str, status_code: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class WarehouseError(AftercareError):
    """The warehouse (or 3PL) did not take a shipping instruction."""

    def __init__(self, reason: str, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.retry_after = retry_after


class TransientWarehouseError(WarehouseError):
    """Worth retrying later with backoff: 5xx, 429, timeout, connection refused."""


class PermanentWarehouseError(WarehouseError):
    """The warehouse refused the instruction (4xx): retrying the same request cannot help; its reason
    is kept for a person to act on."""
