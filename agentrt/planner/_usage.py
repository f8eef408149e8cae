"""`UsageLimits`: what one run may spend (tokens, LLM calls, tool calls, wall time, cost)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agentrt.llm import Usage

__all__ = ["UsageLimits"]


class UsageLimits(BaseModel):
    """Per-run limits; ``None`` means no limit. A run that reaches one stops at once (running tool
    calls are cancelled) and raises `agentrt.errors.UsageLimitExceeded` carrying the partial result.

    Token, LLM-call and cost limits are checked when an LLM call ends (its usage is exact only
    then); a call is not started once a limit is already reached. Tool calls are checked before
    each dispatch, so ``max_tool_calls`` is never exceeded. Wall time is a deadline over the
    whole run.

    Attributes:
        max_input_tokens: prompt tokens over all LLM calls.
        max_output_tokens: completion tokens over all LLM calls.
        max_total_tokens: input + output tokens.
        max_llm_calls: number of LLM calls (planner, joiner).
        max_tool_calls: number of tool calls dispatched.
        max_wall_seconds: end-to-end seconds.
        max_cost_usd: cost in USD, where the model's price is known (the local model costs 0).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_input_tokens: int | None = Field(None, ge=0)
    max_output_tokens: int | None = Field(None, ge=0)
    max_total_tokens: int | None = Field(None, ge=0)
    max_llm_calls: int | None = Field(None, ge=0)
    max_tool_calls: int | None = Field(None, ge=0)
    max_wall_seconds: float | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, ge=0)

    def exceeded(self, usage: Usage, llm_calls: int, cost_usd: float | None) -> str | None:
        """Which limit ``usage`` has reached, as a message, or ``None``.

        A limit counts as reached when the amount used is above it, so a run may use exactly
        its limit.
        """
        checks = (
            ("input tokens", usage.input_tokens, self.max_input_tokens),
            ("output tokens", usage.output_tokens, self.max_output_tokens),
            ("total tokens", usage.input_tokens + usage.output_tokens, self.max_total_tokens),
            ("LLM calls", llm_calls, self.max_llm_calls),
            ("cost (USD)", cost_usd, self.max_cost_usd),
        )
        for what, used, limit in checks:
            if limit is not None and used is not None and used > limit:
                return f"usage limit reached: {what} {used:g} > {limit:g}"
        return None

    def exhausted(self, usage: Usage, llm_calls: int, cost_usd: float | None) -> str | None:
        """Which limit leaves no room for another LLM call (used >= limit), or ``None``."""
        checks = (
            ("input tokens", usage.input_tokens, self.max_input_tokens),
            ("output tokens", usage.output_tokens, self.max_output_tokens),
            ("total tokens", usage.input_tokens + usage.output_tokens, self.max_total_tokens),
            ("LLM calls", llm_calls, self.max_llm_calls),
            ("cost (USD)", cost_usd, self.max_cost_usd),
        )
        for what, used, limit in checks:
            if limit is not None and used is not None and used >= limit:
                return f"usage limit reached: {what} {used:g} of {limit:g} used, no room for another LLM call"
        return None
