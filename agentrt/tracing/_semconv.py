"""Attribute names: OpenTelemetry GenAI semantic conventions plus ``agentrt.*`` for what they lack.

Source: open-telemetry/semantic-conventions-genai, ``docs/registry/attributes/gen-ai.md`` and
``docs/gen-ai/gen-ai-spans.md`` (all ``gen_ai.*`` names are at "Development" stability). The
Python package ``opentelemetry-semantic-conventions`` lags the spec (it lacks ``plan`` and the
memory operations), so the names are defined here as plain strings.

Token partition (as in the spec and in genai-prices): ``gen_ai.usage.input_tokens`` *includes*
cached tokens (``gen_ai.usage.cache_read.input_tokens``), and ``gen_ai.usage.output_tokens``
*includes* reasoning tokens (``gen_ai.usage.reasoning.output_tokens``).
"""

from __future__ import annotations

# -- gen_ai.operation.name values --------------------------------------------------------------
CHAT = "chat"
TEXT_COMPLETION = "text_completion"
GENERATE_CONTENT = "generate_content"
EMBEDDINGS = "embeddings"
EXECUTE_TOOL = "execute_tool"
INVOKE_AGENT = "invoke_agent"
INVOKE_WORKFLOW = "invoke_workflow"
PLAN = "plan"
RETRIEVAL = "retrieval"
SEARCH_MEMORY = "search_memory"
CREATE_MEMORY = "create_memory"
UPDATE_MEMORY = "update_memory"
DELETE_MEMORY = "delete_memory"
#: agentrt's own operations (not in the registry): a sandboxed process run inside a tool call.
SANDBOX_EXEC = "agentrt.sandbox.exec"

#: Operations that are one inference call of a model (they carry usage, cost, model).
INFERENCE_OPERATIONS = frozenset({CHAT, TEXT_COMPLETION, GENERATE_CONTENT, EMBEDDINGS})

# -- gen_ai.* attributes -----------------------------------------------------------------------
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
#: Cost: proposed in open-telemetry/semantic-conventions-genai PR #443 (experimental), on
#: inference spans only, so that rolled-up agent spans do not double-count.
USAGE_COST_AMOUNT = "gen_ai.usage.cost.amount"
USAGE_COST_CURRENCY = "gen_ai.usage.cost.currency"
USAGE_COST_SOURCE = "gen_ai.usage.cost.source"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_DESCRIPTION = "gen_ai.tool.description"
AGENT_NAME = "gen_ai.agent.name"
AGENT_ID = "gen_ai.agent.id"
CONVERSATION_ID = "gen_ai.conversation.id"
ERROR_TYPE = "error.type"

# -- agentrt.* attributes ----------------------------------------------------------------------
COST_USD = "agentrt.cost.usd"  #: USD as a decimal string (exact); unset when no price is known
COST_STATUS = "agentrt.cost.status"  #: "priced" | "local" | "unpriced"
MODEL_LOCAL = "agentrt.model.local"  #: bool: the model runs on this machine (cost 0 USD)
ENERGY_JOULES = "agentrt.energy.joules"
ENERGY_METHOD = "agentrt.energy.method"  #: "measured" | "estimated:<model>"
CPU_SECONDS = "agentrt.cpu.seconds"
MEMORY_PEAK_BYTES = "agentrt.memory.peak_bytes"
WALL_SECONDS = "agentrt.wall.seconds"
CGROUP_PATH = "agentrt.cgroup.path"
OOM_KILLED = "agentrt.oom_killed"
TIMED_OUT = "agentrt.timed_out"
EXIT_STATUS = "agentrt.exit_status"
TASK_ID = "agentrt.task.id"
TASK_DEPS = "agentrt.task.deps"  #: list of task ids this task waited for
QUEUE_WAIT_SECONDS = "agentrt.admission.wait_seconds"  #: ready -> dispatched (admission control)
CRITICAL_PATH = "agentrt.critical_path"  #: bool, set on export for spans on the critical path
RUN_QUESTION = "agentrt.run.question"
