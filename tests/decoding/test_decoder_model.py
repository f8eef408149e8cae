"""ParallelCallDecoder on the real local model (llama.cpp through xllamacpp). Few and short."""

from __future__ import annotations

import json

import pytest

from agentrt.decoding import ParallelCallDecoder
from agentrt.llm import OpenAIChatModel

pytestmark = [pytest.mark.anyio, pytest.mark.model]

WEATHER = {"name": "weather.get", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
               "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "unit"]}}
PLACE = {"name": "geo.lookup", "description": "Coordinates and tags of a place",
         "parameters": {"type": "object", "properties": {
             "where": {"type": "object", "properties": {"name": {"type": "string"},
                                                        "tags": {"type": "array", "items": {"type": "string"}}},
                       "required": ["name", "tags"]}}, "required": ["where"]}}


async def test_real_model_name_is_a_known_tool_and_arguments_validate(decoding_base_url: str) -> None:
    async with (OpenAIChatModel(decoding_base_url, "local") as model,
                ParallelCallDecoder(model, [WEATHER, PLACE], max_calls=2) as decoder):
        assert await decoder.supports_parallel() is None
        # the question asks for a tool that does not exist: the name must still be a known one
        result = await decoder.decode_turn([{"role": "user", "content":
                                             "Send an e-mail to Bob about the weather in Oslo, in celsius."}])
    assert result.mode == "parallel" and result.calls
    for call in result.calls:
        assert call.name in {"weather.get", "geo.lookup"}
        args = json.loads(call.arguments)
        assert isinstance(args, dict)
        if call.name == "weather.get":
            assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["city"], str)
        else:
            assert isinstance(args["where"]["tags"], list)
    # an argument branch decodes its value and a delimiter, never the required keys around it (the
    # last one also writes the optional pairs present): fewer tokens than that text has characters
    for b in result.stats.branches:
        if b.label.startswith("arg:"):
            key, index = b.label[4:].split("#")
            call = result.calls[int(index)]
            args = json.loads(call.arguments)
            required = {"weather.get": {"city", "unit"}, "geo.lookup": {"where"}}[call.name]
            optional = {k: v for k, v in args.items() if k not in required}
            assert b.tokens <= len(json.dumps(args[key])) + 3 + len(json.dumps(optional)), (b.label, b.tokens, args)
    # pinned branches continue the prompt already in their slot
    branches = [b for b in result.stats.branches if b.label.startswith("arg:")]
    assert any(b.cache_n > 10 * max(1, b.prompt_n) for b in branches), branches


async def test_real_model_branches_overlap_and_decode_nested_values(decoding_base_url: str) -> None:
    pin = {"name": "map.pin", "description": "Pin a place on the map with a note",
           "parameters": {"type": "object", "properties": {
               "where": PLACE["parameters"]["properties"]["where"], "note": {"type": "string"}},
               "required": ["where", "note"]}}
    async with (OpenAIChatModel(decoding_base_url, "local") as model,
                ParallelCallDecoder(model, [pin], slots="spread", max_calls=1) as decoder):
        args, stats = await decoder.decode_arguments("map.pin", [{"role": "user", "content":
            'Pin the Eiffel Tower with the tags landmark and tower, note: meet at "noon" - café après'}])
    assert isinstance(args["where"]["name"], str) and args["where"]["name"]
    assert isinstance(args["where"]["tags"], list) and all(isinstance(t, str) for t in args["where"]["tags"])
    assert isinstance(args["note"], str) and args["note"]
    where, note = (next(b for b in stats.branches if b.label == f"arg:{k}") for k in ("where", "note"))
    assert where.started < note.ended and note.started < where.ended


async def test_real_model_splits_a_two_city_question_into_two_calls(decoding_base_url: str) -> None:
    async with (OpenAIChatModel(decoding_base_url, "local") as model,
                ParallelCallDecoder(model, [WEATHER, PLACE], max_calls=4) as decoder):
        result = await decoder.decode_turn([{"role": "user", "content":
                                             "What is the weather in Paris in celsius and in Rome in fahrenheit?"}])
    args = [json.loads(c.arguments) for c in result.calls]
    # the two cities are two calls (in the template's own syntax this model merges them); the 1.5B
    # model may then go on with calls of the other tool (seen here: two geo.lookup calls after them)
    weather = [a for c, a in zip(result.calls, args, strict=True) if c.name == "weather.get"]
    assert [(a["city"], a["unit"]) for a in weather] == [("Paris", "celsius"), ("Rome", "fahrenheit")], args
    # requests after the first continue what their slot holds: the shared prefix is reused (most of
    # them: on a shared engine another client may take the slot in between)
    later = result.stats.branches[1:]
    reused = [b for b in later if b.cache_n > 4 * b.prompt_n]
    assert len(reused) * 2 >= len(later), [(b.label, b.prompt_n, b.cache_n) for b in later]


KINEMATICS = [
    {"name": "kinematics.calculate_displacement", "description": "Calculate displacement based on initial speed, "
     "acceleration, and time interval for a motion in a straight line.",
     "parameters": {"type": "object", "properties": {
         "initial_speed": {"type": "integer", "description": "The initial speed of the moving object in m/s."},
         "acceleration": {"type": "integer", "description": "The rate of change of speed, m/s^2."},
         "time": {"type": "integer", "description": "The time interval during which the acceleration is applied, "
                  "in seconds."},
         "rounding": {"type": "integer", "description": "The number of decimals to round off the result "
                      "(optional).", "default": 2}},
         "required": ["initial_speed", "acceleration", "time"]}},
    {"name": "kinematics.calculate_final_speed", "description": "Calculate the final speed of an object that "
     "starts from an initial speed and then accelerates for a certain duration.",
     "parameters": {"type": "object", "properties": {
         "initial_speed": {"type": "float", "description": "The initial speed of the moving object in m/s."},
         "acceleration": {"type": "float", "description": "The rate of change of speed, m/s^2."},
         "time": {"type": "float", "description": "The time interval during which the acceleration is applied, "
                  "in seconds."},
         "rounding": {"type": "integer", "description": "The number of decimals to round off the result "
                      "(optional).", "default": 2}},
         "required": ["initial_speed", "acceleration", "time"]}},
]


async def test_real_model_makes_one_call_for_a_one_call_question_and_values_cost_their_tokens(
        decoding_base_url: str) -> None:
    """BFCL multiple_4: one call asked; with the another-call choice made mid-token (a prompt
    ending in ' }') the model went on with the other tool's call."""
    import httpx2

    tools = [{**t, "parameters": {**t["parameters"], "properties": {
        k: {**v, "type": "number" if v["type"] == "float" else v["type"]}
        for k, v in t["parameters"]["properties"].items()}}} for t in KINEMATICS]
    async with (OpenAIChatModel(decoding_base_url, "local") as model,
                ParallelCallDecoder(model, tools) as decoder):
        result = await decoder.decode_turn([{"role": "user", "content":
            "Can you calculate the displacement of a car moving at an initial speed of 20 m/s and then "
            "accelerates at 10 m/s^2 for 5 seconds? (assuming a straight line motion)"}])
    assert [c.name for c in result.calls] == ["kinematics.calculate_displacement"], result.calls
    args = json.loads(result.calls[0].arguments)
    assert (args["initial_speed"], args["acceleration"], args["time"]) == (20, 10, 5)
    # a value branch decodes its value's tokens and one delimiter token; a choice decodes one token
    root = decoding_base_url.removesuffix("/v1")
    async with httpx2.AsyncClient() as http:
        for b in result.stats.branches:
            if b.label.startswith("arg:"):
                key = b.label[4:].split("#")[0]
                value = " " + json.dumps(args[key])
                n = len((await http.post(f"{root}/tokenize", json={"content": value})).json()["tokens"])
                assert b.tokens <= n + 1, (b.label, b.tokens, b.text, n)
            elif b.label.startswith(("more#", "optional#")):
                assert b.tokens == 1, (b.label, b.tokens, b.text)
