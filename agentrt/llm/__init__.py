"""Chat models: the `ChatModel` protocol, the OpenAI-compatible client and the local engine."""

from agentrt.llm._client import OpenAIChatModel
from agentrt.llm._types import ChatModel, Completion, Delta, Message, ToolCall, Usage

__all__ = ["ChatModel", "Completion", "Delta", "Message", "OpenAIChatModel", "ToolCall", "Usage"]
