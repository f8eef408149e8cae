"""`agentrt chat "PROMPT"`: one streamed completion, printed as it arrives, then its usage."""

from __future__ import annotations

import contextlib
import sys

import anyio
import typer
from rich.console import Console
from rich.markup import escape

from agentrt.cli._app import app
from agentrt.cli._engine import ModelProgress
from agentrt.config import get_settings
from agentrt.errors import AgentrtError
from agentrt.llm import Completion, Message, OpenAIChatModel, resolve_endpoint

console = Console()
err_console = Console(stderr=True)


@app.command()
def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    model: str | None = typer.Option(None, help="Model name sent to the endpoint."),
    base_url: str | None = typer.Option(
        None, help="OpenAI-compatible endpoint (.../v1); default: the local engine."),
    max_tokens: int = typer.Option(256, min=1, help="Cap on generated tokens."),
    system: str | None = typer.Option(None, help="System message."),
    temperature: float = typer.Option(0.0, min=0.0, help="Sampling temperature."),
) -> None:
    """Send one prompt and stream the answer; then print token usage and speed.

    Without --base-url (or AGENTRT_BASE_URL) it uses the running local engine
    (`agentrt engine start`), or starts one for this call only.
    """
    settings = get_settings(base_url=base_url, model=model)
    messages = ([Message(role="system", content=system)] if system else [])
    messages.append(Message(role="user", content=prompt))
    bar = ModelProgress()

    async def go() -> Completion | None:
        waiting = (err_console.status("connecting to the local engine (starting it if needed)...")
                   if settings.uses_local_engine else contextlib.nullcontext())
        with waiting:
            try:
                url, engine = await resolve_endpoint(settings)
            finally:
                bar.close()
        try:
            async with OpenAIChatModel.from_settings(settings, base_url=url) as llm:
                stream = await llm.complete(messages, stream=True, max_tokens=max_tokens,
                                            temperature=temperature)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for delta in stream:  # type: ignore[union-attr]
                        if delta.content:
                            sys.stdout.write(delta.content)
                            sys.stdout.flush()
                        if delta.done:
                            return delta.completion
            return None
        finally:
            if engine is not None:
                await engine.stop()

    try:
        completion = anyio.run(go)
    except AgentrtError as exc:
        err_console.print(f"\n[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    sys.stdout.write("\n")
    if completion is None:
        return
    u = completion.usage
    ttft = completion.time_to_first_token
    decode_s = completion.wall_seconds - (ttft or 0.0)
    # The first token arrives at ttft; the other output_tokens - 1 are decoded after it.
    rate = (u.output_tokens - 1) / decode_s if decode_s > 0 and u.output_tokens > 1 else None
    err_console.print(
        f"[dim]tokens: {u.input_tokens} in ({u.cached_tokens} cached), {u.output_tokens} out"
        f" | time to first token: {f'{ttft:.2f} s' if ttft is not None else 'n/a'}"
        f" | {f'{rate:.1f} tokens/s' if rate else 'n/a tokens/s'}"
        f" | total {completion.wall_seconds:.2f} s | finish: {completion.finish_reason}[/]"
    )
