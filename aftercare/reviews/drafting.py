"""Reply drafts for reviews: an LLM drafter (any OpenAI-compatible chat completions endpoint, with
structured output validated by `DraftReply`) and a template drafter that needs nothing but the
templates. Without an LLM the template drafter is used (`source="template"`); when the LLM fails
after its bounded retries, the template draft is used instead (`source="fallback"`, with the reason).

What the model sees is built from a `ReplyRequest` only, which has no personal data fields; the
review text in it has already been redacted of the reviewer's own details (`build_reply_request`).
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import openai
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, UndefinedError
from pydantic import ValidationError

from aftercare.errors import ConfigError, TemplateMissingVariable
from aftercare.rendering import Renderer
from aftercare.reviews.errors import LLMBadOutput, LLMError, LLMUnavailable
from aftercare.reviews.models import (
    CustomerPrivate,
    Draft,
    DraftReply,
    DraftSource,
    OrderFacts,
    OrderFactsModel,
    ProductFacts,
    ReplyRequest,
    Review,
    TriageResult,
)
from aftercare.reviews.policy import Lang, ReviewsPolicy
from aftercare.reviews.settings import LLMSettings
from aftercare.reviews.text import (
    EMAIL_RE,
    PHONE_RE,
    looks_like_phone,
    normalise_lang,
    piece_pattern,
    strip_invisible,
)
from aftercare.settings import PROJECT_ROOT

PROMPTS_DIR = PROJECT_ROOT / "prompts"
LANGUAGE_NAMES = {"ja": "Japanese", "en": "English"}
REDACTED = "[redacted]"


# -- the request: what a drafter may see ----------------------------------------------------------


def redact(text: str, private: CustomerPrivate | None) -> str:
    """The review text as the model gets it: NFKC-normalised (full-width letters and digits become
    ASCII), without invisible characters, and without any email address, phone number, or the
    reviewer's own name and address pieces (when known): none of that is needed to reply."""
    text = unicodedata.normalize("NFKC", strip_invisible(text))
    if private is not None:
        pieces = [
            private.email,
            private.full_name,
            *private.address_parts,
            *(private.full_name or "").split(),
        ]
        pieces = [unicodedata.normalize("NFKC", p).strip() for p in pieces if p and len(p.strip()) >= 2]
        for piece in sorted(pieces, key=len, reverse=True):
            text = piece_pattern(piece).sub(REDACTED, text)
    text = EMAIL_RE.sub(REDACTED, text)
    return PHONE_RE.sub(lambda m: REDACTED if looks_like_phone(m.group(0)) else m.group(0), text)


def clean_display_name(name: str | None) -> str | None:
    """The name the reviewer chose to show, as a drafter may use it: redacted like the review (an
    email or phone number in it goes), on one line, None when nothing is left. It is still
    untrusted: the prompt carries it inside the review's block, never among the instructions."""
    if not name:
        return None
    cleaned = " ".join(redact(name, None).split())
    return cleaned[:100] or None


def build_reply_request(
    review: Review,
    triage: TriageResult,
    *,
    product: ProductFacts,
    order: OrderFacts | None,
    shop_name: str,
    policy: ReviewsPolicy,
    private: CustomerPrivate | None = None,
) -> ReplyRequest:
    """The drafter's input: review text redacted, reply language chosen (the review's language when
    the shop replies in it, else the first of the policy's languages, which the language guardrail
    then flags)."""
    review_lang = normalise_lang(review.lang) or triage.lang
    languages = policy.reply.languages
    language: Lang = review_lang if review_lang in languages else languages[0]  # type: ignore[assignment]
    return ReplyRequest(
        review_id=review.id,
        review_text=redact(review.text, private),
        rating=review.rating,
        language=language,
        review_language=review_lang,
        display_name=clean_display_name(review.display_name),
        negative=triage.negative,
        product_title=product.title,
        order=OrderFactsModel.of(order) if order is not None else None,
        shop_name=shop_name,
    )


# -- drafters ----------------------------------------------------------------------------------


class Drafter(Protocol):
    def draft(self, request: ReplyRequest, *, feedback: Sequence[str] = ()) -> Draft: ...


def _support_email(policy: ReviewsPolicy) -> str | None:
    emails = policy.reply.support_contacts.emails
    return emails[0] if emails else None


class TemplateDrafter:
    """Drafts from `templates/<lang>/review_reply_{negative,positive}.txt`: no LLM, always within
    policy (the templates offer nothing and name only the support email the policy allows).

    Another kind of reply (a private apology) names its own `template` (`{kind}` is replaced by
    negative/positive), the `extra` values it renders with, and the actions it promises."""

    def __init__(
        self,
        policy: ReviewsPolicy,
        templates_dir: Path,
        *,
        template: str = "review_reply_{kind}.txt",
        extra: Mapping[str, Any] | None = None,
        promised_actions: Sequence[str] | None = None,
    ):
        self.policy = policy
        self.renderer = Renderer(templates_dir)
        self.template = template
        self.extra = dict(extra or {})
        self.promised_actions = list(promised_actions) if promised_actions is not None else None

    def draft(
        self,
        request: ReplyRequest,
        *,
        feedback: Sequence[str] = (),
        source: DraftSource = "template",
        fallback_reason: str | None = None,
    ) -> Draft:
        kind = "negative" if request.negative else "positive"
        text = self.renderer.render(
            self.template.format(kind=kind),
            request.language,
            {
                **self.extra,
                "display_name": request.display_name,
                "product_title": request.product_title,
                "shop_name": request.shop_name,
                "order": request.order,
                "support_email": _support_email(self.policy),
            },
        )
        notes = []
        if fallback_reason:
            notes.append(f"LLM not used: {fallback_reason}")
        reply = DraftReply(
            reply_text=re.sub(r"\n{3,}", "\n\n", text).strip(),
            language=request.language,
            apologises=request.negative,
            promised_actions=self.promised_actions
            if self.promised_actions is not None
            else (["share the feedback with the team"] if request.negative else []),
            risk_notes=notes,
        )
        return Draft(
            reply=reply, source=source, fallback_reason=fallback_reason, policy_version=self.policy.version
        )


class PromptTemplates:
    """Jinja2 prompt templates from `prompts/`, strict: a missing variable is a named error."""

    def __init__(self, prompts_dir: Path = PROMPTS_DIR):
        self.env = Environment(
            loader=FileSystemLoader(str(prompts_dir)),
            undefined=StrictUndefined,
            autoescape=False,  # prompts are plain text; the review goes in JSON-encoded instead
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": True}

    def render(self, name: str, context: dict[str, Any]) -> str:
        try:
            return self.env.get_template(name).render(**context)
        except UndefinedError as exc:
            raise TemplateMissingVariable(f"prompt {name}: {exc.message}") from exc
        except TemplateNotFound as exc:
            raise ConfigError(f"prompt template {name} is missing from the prompts directory") from exc


def untrusted_json(request: ReplyRequest) -> str:
    """What the reviewer wrote, as the model gets it: one line of JSON, {"author_display_name": ...,
    "review": ...}. Line and paragraph separators are escaped too, so nothing in it starts a line."""
    encoded = json.dumps(
        {"author_display_name": request.display_name, "review": request.review_text},
        ensure_ascii=False,
    )
    return encoded.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _strict_schema(schema: Any) -> Any:
    """The JSON schema pydantic makes, minus keywords strict structured output does not accept."""
    if isinstance(schema, dict):
        return {
            k: _strict_schema(v)
            for k, v in schema.items()
            if k not in {"title", "default", "minLength", "maxLength"} or isinstance(v, dict)
        }
    if isinstance(schema, list):
        return [_strict_schema(v) for v in schema]
    return schema


DRAFT_REPLY_SCHEMA: dict[str, Any] = _strict_schema(DraftReply.model_json_schema())
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "draft_reply", "strict": True, "schema": DRAFT_REPLY_SCHEMA},
}


def make_openai_client(settings: LLMSettings) -> openai.OpenAI:
    """The SDK client: it retries 408/409/429/5xx and connection errors itself (`max_retries`,
    honouring Retry-After), each attempt bounded by `timeout_s`."""
    return openai.OpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key.get_secret_value() or "not-needed",
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


class LLMDrafter:
    """Drafts with a chat completions model; raises `LLMUnavailable` / `LLMBadOutput` when it
    cannot, after the SDK's retries and `output_attempts` tries at a usable answer."""

    def __init__(
        self,
        client: openai.OpenAI,
        settings: LLMSettings,
        policy: ReviewsPolicy,
        prompts: PromptTemplates | None = None,
        *,
        prompt: str = "review_reply",
        extra: Mapping[str, Any] | None = None,
    ):
        self.client = client
        self.settings = settings
        self.policy = policy
        self.prompts = prompts or PromptTemplates()
        # `<prompt>.system.j2` and `<prompt>.user.j2` under prompts/; `extra`: more values for both
        # (a private apology's survey facts). Never personal data: the templates send all of it.
        self.prompt = prompt
        self.extra = dict(extra or {})

    def messages(self, request: ReplyRequest, feedback: Sequence[str] = ()) -> list[dict[str, str]]:
        """System and user messages for one request. Everything the reviewer wrote (the review and
        the display name they chose) goes in the user message as one JSON object on one line,
        between markers carrying a fresh random nonce, so it can neither close the block nor guess
        it; the system message holds only the shop's instructions and policy."""
        untrusted = untrusted_json(request)
        nonce = secrets.token_hex(6)
        while nonce in untrusted:
            nonce = secrets.token_hex(6)
        open_marker, close_marker = f"<<<REVIEW {nonce}", f"REVIEW {nonce}>>>"
        remedies = self.policy.reply.remedies
        allowed = [k for k in ("refund", "replacement", "discount", "compensation") if remedies.allows(k)]
        if remedies.discount_percent_max and "discount" in allowed:
            allowed[allowed.index("discount")] = f"a discount of at most {remedies.discount_percent_max}%"
        contacts = self.policy.reply.support_contacts
        common = {
            **self.extra,
            "shop_name": request.shop_name,
            "language": request.language,
            "language_name": LANGUAGE_NAMES[request.language],
            "open_marker": open_marker,
            "close_marker": close_marker,
        }
        system = self.prompts.render(
            f"{self.prompt}.system.j2",
            {
                **common,
                "length": self.policy.reply.length[request.language],
                "policy_version": self.policy.version,
                "allowed_remedies": allowed,
                "forbidden_remedies": [
                    {
                        "refund": "a refund",
                        "replacement": "a replacement",
                        "discount": "a discount or coupon",
                        "compensation": "compensation, gifts or credit",
                    }[k]
                    for k in ("refund", "replacement", "discount", "compensation")
                    if not remedies.allows(k)
                ],
                "support_contacts": [*contacts.emails, *contacts.urls, *contacts.phones],
            },
        )
        user = self.prompts.render(
            f"{self.prompt}.user.j2",
            {
                **common,
                "product_title": request.product_title,
                "rating": request.rating,
                "negative": request.negative,
                "order": request.order,
                "review_json": untrusted,
                "feedback": list(feedback),
            },
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def draft(self, request: ReplyRequest, *, feedback: Sequence[str] = ()) -> Draft:
        messages = self.messages(request, feedback)
        problem = ""
        for attempt in range(1, self.settings.output_attempts + 1):
            try:
                completion = self.client.chat.completions.create(
                    model=self.settings.model,
                    messages=messages,  # type: ignore[arg-type]
                    response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
                    temperature=self.settings.temperature,
                    max_completion_tokens=self.settings.max_completion_tokens,
                )
            except openai.APITimeoutError as exc:
                raise LLMUnavailable(
                    f"LLM timed out ({self.settings.timeout_s:g} s, {self.settings.max_retries} retries)",
                    attempt,
                ) from exc
            except openai.APIStatusError as exc:
                raise LLMUnavailable(
                    f"LLM answered HTTP {exc.status_code} (after {self.settings.max_retries} retries): "
                    f"{exc.message}",
                    attempt,
                ) from exc
            except openai.APIError as exc:
                raise LLMUnavailable(f"LLM unreachable ({type(exc).__name__}): {exc}", attempt) from exc
            reply, problem = _read_completion(completion)
            if reply is not None:
                return Draft(
                    reply=reply, source="llm", llm_attempts=attempt, policy_version=self.policy.version
                )
        raise LLMBadOutput(
            f"no usable answer in {self.settings.output_attempts} attempts; last: {problem}",
            self.settings.output_attempts,
        )


def _read_completion(completion: Any) -> tuple[DraftReply | None, str]:
    """The validated reply, or None and what was wrong with the answer."""
    if not getattr(completion, "choices", None):
        return None, "answer has no choices"
    choice = completion.choices[0]
    message = choice.message
    if getattr(message, "refusal", None):
        return None, f"model refused: {message.refusal[:200]}"
    if choice.finish_reason == "length":
        return None, "answer truncated (finish_reason=length)"
    if choice.finish_reason == "content_filter":
        return None, "answer withheld by the provider's content filter"
    if not message.content:
        return None, "answer is empty"
    try:
        return DraftReply.model_validate_json(message.content), ""
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "<answer>"
        return None, f"answer is not a valid draft ({exc.error_count()} errors; {where}: {first['msg']})"


class FallbackDrafter:
    """The LLM drafter, and the template drafter when the LLM fails (labelled `fallback`)."""

    def __init__(self, primary: LLMDrafter, fallback: TemplateDrafter):
        self.primary = primary
        self.fallback = fallback

    def draft(self, request: ReplyRequest, *, feedback: Sequence[str] = ()) -> Draft:
        try:
            return self.primary.draft(request, feedback=feedback)
        except LLMError as exc:
            draft = self.fallback.draft(request, source="fallback", fallback_reason=exc.reason)
            return draft.model_copy(update={"llm_attempts": exc.attempts})


def build_drafter(
    llm: LLMSettings,
    policy: ReviewsPolicy,
    *,
    templates_dir: Path,
    prompts_dir: Path = PROMPTS_DIR,
    client: openai.OpenAI | None = None,
    prompt: str = "review_reply",
    template: str = "review_reply_{kind}.txt",
    extra: Mapping[str, Any] | None = None,
    promised_actions: Sequence[str] | None = None,
) -> Drafter:
    """The LLM drafter with template fallback when an LLM is configured, else the template drafter.
    `prompt`, `template`, `extra` and `promised_actions` choose another kind of reply (see
    `LLMDrafter`, `TemplateDrafter`); the defaults draft a public reply to a review."""
    templates = TemplateDrafter(
        policy, templates_dir, template=template, extra=extra, promised_actions=promised_actions
    )
    if not llm.configured:
        return templates
    client = client or make_openai_client(llm)
    llm_drafter = LLMDrafter(client, llm, policy, PromptTemplates(prompts_dir), prompt=prompt, extra=extra)
    return FallbackDrafter(llm_drafter, templates)


__all__ = [
    "Drafter",
    "FallbackDrafter",
    "LLMDrafter",
    "PromptTemplates",
    "TemplateDrafter",
    "build_drafter",
    "build_reply_request",
    "clean_display_name",
    "make_openai_client",
    "redact",
    "untrusted_json",
]
