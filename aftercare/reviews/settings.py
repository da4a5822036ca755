"""Settings for the LLM that drafts review replies (AFTERCARE_LLM_*), kept beside the core Settings."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LLMSettings(BaseSettings):
    """Any OpenAI-compatible chat completions endpoint. Unset base URL and model: no LLM, and
    replies are drafted from templates."""

    model_config = SettingsConfigDict(env_prefix="AFTERCARE_LLM_", env_file=".env", extra="ignore")

    base_url: str = ""
    model: str = ""
    # Local servers (Ollama, vLLM, llama.cpp) accept any key; the SDK insists on one.
    api_key: SecretStr = SecretStr("")
    timeout_s: float = Field(default=30.0, gt=0)
    # Retries the SDK makes itself on 408/409/429/5xx and connection errors (honouring Retry-After).
    max_retries: int = Field(default=2, ge=0, le=10)
    # Our own attempts when the answer arrives but is unusable (invalid JSON, refusal, truncated).
    output_attempts: int = Field(default=2, ge=1, le=5)
    temperature: float = Field(default=0.3, ge=0, le=2)
    max_completion_tokens: int = Field(default=800, ge=64)

    @model_validator(mode="after")
    def _both_or_neither(self) -> LLMSettings:
        if bool(self.base_url) != bool(self.model):
            raise ValueError("set both AFTERCARE_LLM_BASE_URL and AFTERCARE_LLM_MODEL, or neither")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.model)
