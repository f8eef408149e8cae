"""Planner: LLMCompiler plan prompts, streaming plan parsers and validation, joiner and replanning."""
