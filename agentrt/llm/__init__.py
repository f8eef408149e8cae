"""Chat models: the `ChatModel` protocol, the OpenAI-compatible client and the local engine."""

from agentrt.llm._client import OpenAIChatModel
from agentrt.llm._engine import (
    EngineState,
    LocalEngine,
    read_state,
    resolve_endpoint,
    running_engine,
    stop_registered,
)
from agentrt.llm._model import ModelStatus, ensure_model, find_parts, model_path, model_status, verify_model
from agentrt.llm._types import ChatModel, Completion, Delta, Message, ToolCall, Usage

__all__ = ["ChatModel", "Completion", "Delta", "Message", "OpenAIChatModel", "ToolCall", "Usage"]
__all__ += [
    "EngineState", "LocalEngine", "ModelStatus", "ensure_model", "find_parts", "model_path",
    "model_status", "read_state", "resolve_endpoint", "running_engine", "stop_registered",
    "verify_model",
]
