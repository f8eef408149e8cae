"""Cost of LLM calls (genai-prices) and a run budget that reserves worst-case cost before a call.

Prices come from the ``genai-prices`` package (pydantic; its bundled price data, no network:
`UpdatePrices` is never started here). Partition semantics follow it: ``input_tokens`` is the
total prompt and ``cache_read_tokens`` a part of it; ``output_tokens`` includes reasoning tokens.
A local model costs 0 USD. A model genai-prices does not know has *no* cost (``usd is None``,
status ``unpriced``), never a silent zero, unless a price was registered with `register_price`.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Self

from agentrt.errors import ConfigError, UsageLimitExceeded

__all__ = ["Budget", "Cost", "Reservation", "price", "register_price"]

_MTOK = Decimal(1_000_000)
_overrides: dict[str, tuple[Decimal, Decimal, Decimal]] = {}


@dataclass(frozen=True, slots=True)
class Cost:
    """Cost of one or more LLM calls.

    Attributes:
        usd: total in USD (Decimal), or None when no price is known for the model.
        input_usd, output_usd: the parts for prompt (incl. cached) and generated tokens.
        status: ``priced`` (genai-prices or a registered price), ``local`` (0 USD) or ``unpriced``.
        model, provider: what the price was looked up as (provider as genai-prices resolved it).
    """

    usd: Decimal | None
    input_usd: Decimal | None = None
    output_usd: Decimal | None = None
    status: Literal["priced", "local", "unpriced"] = "priced"
    model: str = ""
    provider: str | None = None


def register_price(model: str, *, input_per_mtok: float | str | Decimal, output_per_mtok: float | str | Decimal,
                   cached_input_per_mtok: float | str | Decimal | None = None) -> None:
    """Price a model genai-prices does not know (private, fine-tuned, self-hosted), in USD per
    million tokens. Cached input defaults to the input price. Takes precedence over genai-prices."""
    inp = Decimal(str(input_per_mtok))
    _overrides[model] = (inp, Decimal(str(output_per_mtok)),
                         inp if cached_input_per_mtok is None else Decimal(str(cached_input_per_mtok)))


def price(model: str, *, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
          reasoning_tokens: int = 0, provider: str | None = None, local: bool = False) -> Cost:
    """The cost of one LLM call with this usage.

    Args:
        model: model name as sent to the endpoint (``gen_ai.request.model``), e.g. ``gpt-4o``.
        input_tokens: prompt tokens, cached ones included.
        output_tokens: generated tokens, reasoning ones included.
        cached_input_tokens: prompt tokens read from the provider's cache (priced at the cache-read
            rate where the model has one).
        reasoning_tokens: reasoning tokens (billed as output; recorded so genai-prices can apply a
            reasoning price where a model has one).
        provider: genai-prices provider id (``openai``, ``anthropic``, ...); None lets it match.
        local: the model runs on this machine: 0 USD.

    Raises:
        ValueError: negative counts, or cached > input, or reasoning > output.
    """
    if min(input_tokens, output_tokens, cached_input_tokens, reasoning_tokens) < 0:
        raise ValueError("token counts must be >= 0")
    if cached_input_tokens > input_tokens or reasoning_tokens > output_tokens:
        raise ValueError("cached_input_tokens is part of input_tokens and reasoning_tokens part of "
                         f"output_tokens (got {cached_input_tokens}>{input_tokens} or "
                         f"{reasoning_tokens}>{output_tokens})")
    if local:
        z = Decimal(0)
        return Cost(z, z, z, "local", model, provider)
    if model in _overrides:
        pin, pout, pcache = _overrides[model]
        inp = ((input_tokens - cached_input_tokens) * pin + cached_input_tokens * pcache) / _MTOK
        out = output_tokens * pout / _MTOK
        return Cost(inp + out, inp, out, "priced", model, provider)
    from genai_prices import Usage, calc_price

    kw: dict[str, int] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cached_input_tokens:
        kw["cache_read_tokens"] = cached_input_tokens
    if reasoning_tokens:
        kw["output_reasoning_tokens"] = reasoning_tokens
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = calc_price(Usage(**kw), model_ref=model, provider_id=provider)
    except LookupError:
        return Cost(None, None, None, "unpriced", model, provider)
    return Cost(calc.total_price, calc.input_price, calc.output_price, "priced", model, calc.provider.id)


class Reservation:
    """A worst-case hold on a `Budget` for one LLM call; settle it with the real usage.

    Use as a context manager: leaving the block without `settle` releases the hold (the call
    failed before using anything). Thread- and task-safe through the budget's lock.
    """

    __slots__ = ("_budget", "_done", "cost", "local", "model", "provider", "tokens", "usd")

    def __init__(self, budget: Budget, usd: Decimal, tokens: int, model: str, provider: str | None,
                 local: bool) -> None:
        self._budget = budget
        self.usd = usd
        self.tokens = tokens
        self.model = model
        self.provider = provider
        self.local = local
        self._done = False
        self.cost: Cost | None = None

    def settle(self, *, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
               reasoning_tokens: int = 0) -> Cost:
        """Replace the hold by the actual cost of the call; returns that cost.

        If the actual usage exceeds the hold (the server ignored ``max_tokens``), the excess is
        still charged: the budget may then be over its limit, and the *next* `Budget.reserve`
        raises. Settling twice raises RuntimeError.
        """
        if self._done:
            raise RuntimeError("this reservation was already settled or released")
        cost = price(self.model, input_tokens=input_tokens, output_tokens=output_tokens,
                     cached_input_tokens=cached_input_tokens, reasoning_tokens=reasoning_tokens,
                     provider=self.provider, local=self.local)
        self.cost = cost
        self._budget._settle(self, cost.usd or Decimal(0), input_tokens + output_tokens)
        self._done = True
        return cost

    def release(self) -> None:
        """Drop the hold without charging anything (the call was never sent or used nothing)."""
        if not self._done:
            self._budget._settle(self, Decimal(0), 0)
            self._done = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Budget:
    """A run's spending limit in USD and/or tokens, enforced by reservation before each LLM call.

    Before a call is sent, `reserve` holds its worst case: ``prompt_tokens x input price +
    max_tokens x output price`` (and ``prompt_tokens + max_tokens`` tokens). The call is refused
    (`UsageLimitExceeded`) when ``spent + held + worst case`` would pass a limit, so calls fanned
    out in parallel cannot together overshoot: each one sees the others' holds. After the call,
    `Reservation.settle` replaces the hold by the real cost. (pydantic-ai's ``UsageLimits``
    checks only *accumulated* cost, so N parallel calls can each pass the check; see
    paperclipai/paperclip#11276 for a run that overshot a "$0.50 hard stop" tenfold.)

    Args:
        usd: limit in USD (Decimal, str or float), or None.
        tokens: limit on input + output tokens, or None.

    Pure and lock-protected: safe from threads and from concurrent anyio tasks (no awaits).
    """

    def __init__(self, usd: Decimal | str | float | None = None, tokens: int | None = None) -> None:
        if usd is None and tokens is None:
            raise ConfigError("a Budget needs a limit: usd=..., tokens=... or both")
        self.limit_usd = None if usd is None else Decimal(str(usd))
        self.limit_tokens = tokens
        if (self.limit_usd is not None and self.limit_usd < 0) or (tokens is not None and tokens < 0):
            raise ConfigError("budget limits must be >= 0")
        self._lock = threading.Lock()
        self.spent_usd = Decimal(0)
        self.spent_tokens = 0
        self.held_usd = Decimal(0)
        self.held_tokens = 0
        self.calls = 0
        self.refused = 0

    @property
    def remaining_usd(self) -> Decimal | None:
        """Limit minus spent minus held (may be negative after an over-long call), or None."""
        with self._lock:
            return None if self.limit_usd is None else self.limit_usd - self.spent_usd - self.held_usd

    @property
    def remaining_tokens(self) -> int | None:
        with self._lock:
            return None if self.limit_tokens is None else self.limit_tokens - self.spent_tokens - self.held_tokens

    def reserve(self, model: str, *, prompt_tokens: int, max_tokens: int, provider: str | None = None,
                local: bool = False) -> Reservation:
        """Hold the worst-case cost of one call before it is sent.

        Args:
            model: model name (priced with genai-prices or `register_price`).
            prompt_tokens: tokens of the prompt as it will be sent (count or upper bound).
            max_tokens: the ``max_tokens`` the request sets (must be set: without it there is no
                worst case).
            provider, local: as for `price`.

        Returns:
            A `Reservation` to settle with the call's usage (or release).

        Raises:
            UsageLimitExceeded: the hold would pass a limit; the message gives spent, held, this
                call's worst case and the limit.
            ConfigError: a USD limit is set but the model has no known price.
        """
        worst = price(model, input_tokens=prompt_tokens, output_tokens=max_tokens, provider=provider, local=local)
        if worst.usd is None and self.limit_usd is not None:
            raise ConfigError(f"cannot enforce a USD budget for model {model!r}: genai-prices has no price for it; "
                              "register one with agentrt.tracing.register_price(...) or use a token budget")
        usd = worst.usd or Decimal(0)
        tokens = prompt_tokens + max_tokens
        with self._lock:
            if self.limit_usd is not None and self.spent_usd + self.held_usd + usd > self.limit_usd:
                self.refused += 1
                raise UsageLimitExceeded(
                    f"USD budget: a call to {model} may cost up to ${usd:.6f} ({prompt_tokens} prompt + "
                    f"{max_tokens} max output tokens); spent ${self.spent_usd:.6f}, held for calls in flight "
                    f"${self.held_usd:.6f}, limit ${self.limit_usd}")
            if self.limit_tokens is not None and self.spent_tokens + self.held_tokens + tokens > self.limit_tokens:
                self.refused += 1
                raise UsageLimitExceeded(
                    f"token budget: a call to {model} may use up to {tokens} tokens ({prompt_tokens} prompt + "
                    f"{max_tokens} max output); spent {self.spent_tokens}, held for calls in flight "
                    f"{self.held_tokens}, limit {self.limit_tokens}")
            self.held_usd += usd
            self.held_tokens += tokens
        return Reservation(self, usd, tokens, model, worst.provider or provider, local)

    def _settle(self, r: Reservation, usd: Decimal, tokens: int) -> None:
        with self._lock:
            self.held_usd -= r.usd
            self.held_tokens -= r.tokens
            self.spent_usd += usd
            self.spent_tokens += tokens
            if tokens or usd:
                self.calls += 1

    def __repr__(self) -> str:
        return (f"Budget(usd={self.limit_usd}, tokens={self.limit_tokens}, spent_usd={self.spent_usd}, "
                f"spent_tokens={self.spent_tokens}, held_usd={self.held_usd}, held_tokens={self.held_tokens})")
