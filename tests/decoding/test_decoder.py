"""ParallelCallDecoder against a scripted llama.cpp-like server (real sockets, no model)."""

from __future__ import annotations

import itertools
import json
import logging
import re

import pytest
from _fake_llamacpp import FakeServer, Script, render
from pydantic import BaseModel

from agentrt.decoding import ParallelCallDecoder, derive_call_syntax, parse_calls_text
from agentrt.decoding._grammar import (
    OBJECT_CLOSE,
    VALUE_END,
    choice_grammar,
    name_grammar,
    optional_tail_grammar,
    outline_grammar,
    unique_prefixes,
    value_grammar,
)
from agentrt.errors import DecodingError
from agentrt.tools import tool

pytestmark = pytest.mark.anyio

WEATHER = {"type": "function", "function": {
    "name": "weather.get", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "default": 1}},
        "required": ["city", "unit"]}}}
PLACE = {"type": "function", "function": {
    "name": "geo.place", "description": "Describe a place",
    "parameters": {"type": "object", "properties": {
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"},
                                                   "tags": {"type": "array", "items": {"type": "string"}}},
                  "required": ["lat", "lon"]},
        "note": {"type": "string"}},
        "required": ["where", "note"]}}}
TRIP = {"type": "function", "function": {
    "name": "trip.plan", "description": "Plan a trip",
    "parameters": {"type": "object", "properties": {
        "origin": {"type": "string"}, "to": {"type": "string"}, "date": {"type": "string"}},
        "required": ["origin", "to", "date"]}}}
REQUIRED = {"weather.get": ["city", "unit"], "geo.place": ["where", "note"], "trip.plan": ["origin", "to", "date"]}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def completions(script: Script) -> list[dict]:
    return [e for e in script.log if e["body"].get("n_predict") != 0]


def test_call_syntax_is_learned_from_the_template() -> None:
    prompt = render(ASK, [WEATHER])
    from agentrt.decoding._template import probe_messages

    syntax = derive_call_syntax(prompt, render(probe_messages(ASK), [WEATHER]))
    assert syntax is not None
    assert syntax.before_name == '<tool_call>\n{"name": "'
    assert syntax.after_name == '", "arguments": '
    assert syntax.call_close == "}\n</tool_call>"
    assert syntax.call_sep == "\n"
    assert (syntax.key_sep, syntax.item_sep) == (": ", ", ")
    assert derive_call_syntax(prompt, prompt + "plain text, no calls") is None


def test_grammars_admit_only_the_tool_names_and_each_argument_schema() -> None:
    g = name_grammar(["weather.get", "geo.place"], '", "arguments": ')
    alternatives = re.search(r"start: \((.*?)\) ", g).group(1)
    assert alternatives == '"weather.get" | "geo.place"'
    v = value_grammar({"type": "string", "enum": ["a", "b\"c"]})
    assert '%json {"type": "string", "enum": ["a", "b\\"c"]}' in v and v.rstrip().endswith(VALUE_END)
    t = optional_tail_grammar([("days", {"type": "integer"}), ("hours", {"type": "integer"})], after_required=True)
    assert f'start: {OBJECT_CLOSE} | ", " t0 | ", " t1' in t
    assert "t0: " in t and '", " t1' in t.split("t0: ")[1].split("\n")[0]


class Address(BaseModel):
    city: str
    zip: str


def test_a_branch_schema_keeps_the_named_definitions_its_refs_point_to() -> None:
    from agentrt.decoding._decoder import _spec

    @tool
    def ship(to: Address, weight_kg: float) -> str:
        """Ship a parcel.

        Args:
            to: where to.
            weight_kg: its weight.
        """
        return "ok"

    value = _spec(ship).value_schema("to")
    assert value["$ref"] == "#/$defs/Address"
    assert value["$defs"]["Address"]["required"] == ["city", "zip"]  # the name survives
    assert set(value["$defs"]["Address"]["properties"]) == {"city", "zip"}


async def test_required_arguments_decode_in_parallel_branches_that_overlap() -> None:
    trip = {"origin": "Oslo", "to": "Paris", "date": "2026-12-01"}
    script = Script(calls=[("trip.plan", trip)], required=REQUIRED, delay=0.3)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, TRIP], slots="spread",
                                       framing="json_lines") as decoder:
            result = await decoder.decode_turn(ASK)
    assert result.mode == "parallel" and not result.fallback
    assert [(c.name, json.loads(c.arguments)) for c in result.calls] == [("trip.plan", trip)]
    branches = {b.label: b for b in result.stats.branches}
    # the name, then the three arguments at once, then one token: no other call follows
    assert set(branches) == {"name#0", "arg:origin#0", "arg:to#0", "arg:date#0", "more#1"}
    args = [branches[f"arg:{k}#0"] for k in trip]
    assert max(b.started for b in args) < min(b.ended for b in args), "argument branches did not overlap"
    # the skeleton is not decoded: each value branch continues the prefix up to its own key
    prompts = [e["body"]["prompt"] for e in completions(script)]
    for key in trip:
        assert any(p.endswith('"calls": [\n    {"name": "trip.plan", "arguments": {' + f'"{key}":') for p in prompts)
    # each branch carries its own schema, without annotations, and stops at the newline after its value
    values = [e["body"] for e in completions(script) if e["body"]["prompt"].endswith(('"origin":', '"to":', '"date":'))]
    assert len(values) == 3 and all(b["stop"] == ["\n"] and '%json {"type": "string"}' in b["grammar"] for b in values)
    assert not any("city name" in e["body"].get("grammar", "") for e in completions(script))
    assert result.stats.requests == len(completions(script)) == 5


async def test_on_a_pinned_slot_each_argument_continues_the_pairs_before_it() -> None:
    trip = {"origin": "Oslo", "to": "Paris", "date": "2026-12-01"}
    script = Script(calls=[("trip.plan", trip)], required=REQUIRED, delay=0.05)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [TRIP]) as decoder:
            result = await decoder.decode_turn(ASK)
    assert json.loads(result.calls[0].arguments) == trip
    values = [e for e in completions(script) if re.search(r'"\w+":$', e["body"]["prompt"])]
    assert [e["body"]["prompt"].split('"arguments": ')[-1] for e in values] == [
        '{\n        "origin":', '{\n        "origin": "Oslo",\n        "to":',
        '{\n        "origin": "Oslo",\n        "to": "Paris",\n        "date":']
    # they queue on one slot anyway: issued one after another, no overlap, the slot of the first
    assert all(a["ended"] <= b["started"] for a, b in itertools.pairwise(values))
    assert "id_slot" not in values[0]["body"] and all(e["body"]["id_slot"] == 0 for e in values[1:])


async def test_the_skeleton_is_written_never_decoded() -> None:
    script = Script(calls=[("trip.plan", {"origin": "Oslo", "to": "Rome", "date": "d"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, TRIP]) as decoder:
            result = await decoder.decode_turn(ASK)
    name = next(e for e in completions(script) if e["body"]["prompt"].endswith('"name":'))
    # the name: its first tokens only, stopped as soon as they tell the tools apart (at the quote,
    # so a stop string cannot match inside another name)
    assert sorted(name["body"]["stop"]) == [' "t', ' "w'] and name["answer"]["content"] == ""
    assert name["body"]["grammar"].splitlines()[1] == 'start: " \\"" ("weather.get" | "trip.plan") "\\""'
    # no request decodes a key, a brace or the text between a name and its arguments
    for e in completions(script):
        body = e["body"]
        assert body["n_predict"] == 1 or body.get("stop"), body  # a choice (one token) or stopped early
        assert '\\"arguments\\"' not in body.get("grammar", "") and '\\"origin\\"' not in body.get("grammar", "")
    assert [b.label for b in result.stats.branches] == ["name#0", "arg:origin#0", "arg:to#0", "arg:date#0", "more#1"]
    # with one tool the name is written: no request
    one = Script(calls=[("trip.plan", {"origin": "Oslo", "to": "Rome", "date": "d"})], required=REQUIRED)
    with FakeServer(one) as server:
        async with ParallelCallDecoder(server.base_url, [TRIP]) as decoder:
            result = await decoder.decode_turn(ASK)
    assert [b.label for b in result.stats.branches] == ["arg:origin#0", "arg:to#0", "arg:date#0", "more#1"]


async def test_another_call_is_one_token_chosen_at_the_calls_last_word() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER]) as decoder:
            result = await decoder.decode_turn(ASK)
    assert len(result.calls) == 1
    more = next(e["body"] for e in completions(script) if e["body"]["n_predict"] == 1
                and "name" in e["body"]["grammar"])
    # the prompt stops before the call's closing " }": the model writes it merged with what follows
    # (" }\n" or " },\n"); both choices are admitted as the whole text the model writes there
    assert more["prompt"].endswith('"unit": "celsius"\n      }\n   ')
    assert more["grammar"].splitlines()[1] == (
        'start: " }\\n  ]\\n}" | " },\\n    {\\n      \\"name\\": \\""')
    # the template's own syntax: end of generation after </tool_call>, or another <tool_call>
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"}),
                           ("weather.get", {"city": "Rome", "unit": "celsius"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER], framing="template") as decoder:
            result = await decoder.decode_turn(ASK)
    assert [json.loads(c.arguments)["city"] for c in result.calls] == ["Paris", "Rome"]
    last = [e["body"] for e in completions(script) if e["body"]["n_predict"] == 1][-2:]
    # "</tool_call>" begins both choices: one more token (the end of generation) tells them apart
    assert last[0]["prompt"].endswith('"unit": "celsius"}}\n') and "</tool_call>" in last[0]["grammar"]
    assert last[1]["prompt"].endswith("</tool_call>") and last[1]["grammar"].splitlines()[1].endswith(")?")


def test_choice_grammar_admits_each_whole_text_and_the_end() -> None:
    assert choice_grammar(["a b", ",\n"]).splitlines()[1] == 'start: "a b" | ",\\n"'
    assert choice_grammar(["", "\n<c>"]).splitlines()[1] == 'start: ("\\n<c>")?'
    assert unique_prefixes(['kin.calc_d"', 'kin.calc_f"', 'x"']) == {'kin.calc_d"': "kin.calc_d",
                                                                     'kin.calc_f"': "kin.calc_f", 'x"': "x"}
    assert unique_prefixes(['gcd"', 'gcd_ext"']) == {'gcd"': 'gcd"', 'gcd_ext"': "gcd_"}


async def test_optional_arguments_absent_cost_at_most_one_token_and_present_ones_are_decoded() -> None:
    for slots in ("pinned", "spread"):
        out = []
        for days in (None, 3):
            args = {"city": "Paris", "unit": "celsius", **({"days": days} if days else {})}
            script = Script(calls=[("weather.get", args)], required=REQUIRED)
            with FakeServer(script) as server:
                async with ParallelCallDecoder(server.base_url, [WEATHER], slots=slots) as decoder:  # type: ignore[arg-type]
                    result = await decoder.decode_turn(ASK)
            out.append(json.loads(result.calls[0].arguments))
            labels = [b.label for b in result.stats.branches]
            present = ["arg:days#0"] if days else []
            if slots == "pinned":
                # sequential branches: the last required one saw every pair before it, and the
                # delimiter it wrote after "celsius" ("," or a newline) is the choice: no request
                assert labels == ["arg:city#0", "arg:unit#0", *present, "more#1"]
            else:
                # parallel branches did not see each other: one token after the required pairs
                assert sorted(labels[:2]) == ["arg:city#0", "arg:unit#0"]
                assert labels[2:] == ["optional#0", *present, "more#1"]
                choice = next(e["body"] for e in completions(script)
                              if e["body"]["prompt"].endswith('"unit": "celsius"'))
                assert choice["n_predict"] == 1
                assert choice["grammar"].splitlines()[1] == 'start: "\\n      }" | ",\\n        \\""'
        assert out == [{"city": "Paris", "unit": "celsius"}, {"city": "Paris", "unit": "celsius", "days": 3}]


async def test_several_optional_arguments_the_key_is_chosen_by_its_first_tokens() -> None:
    spec = {"name": "find", "description": "search", "parameters": {"type": "object", "properties": {
        "q": {"type": "string"}, "limit": {"type": "integer"}, "lang": {"type": "string"}},
        "required": ["q"]}}
    script = Script(calls=[("find", {"q": "x", "lang": "en"})], required={"find": ["q"]})
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [spec]) as decoder:
            result = await decoder.decode_turn(ASK)
    assert json.loads(result.calls[0].arguments) == {"q": "x", "lang": "en"}
    key = next(e["body"] for e in completions(script) if "lang" in e["body"].get("grammar", "")
               and e["body"]["n_predict"] > 1)
    # the separator is written up to its last word: the key's request decodes ' "' and its first tokens
    assert key["prompt"].endswith('"q": "x",\n       ') and sorted(key["stop"]) == [' "la', ' "li']
    # the delimiter after "x" chose a pair: its key, its value, whose delimiter closed the object
    assert [b.label for b in result.stats.branches] == ["arg:q#0", "key#0.0", "arg:lang#0", "more#1"]


async def test_nested_objects_arrays_and_hard_strings_round_trip() -> None:
    note = 'He said "hi"\nthen left: café ✓ 東京 \\ end'
    args = {"where": {"lat": 48.85, "lon": 2.35, "tags": ["a \"b\"", "é"]}, "note": note}
    script = Script(calls=[("geo.place", args)], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, PLACE]) as decoder:
            calls = await decoder.decode([{"role": "user", "content": "describe"}])
    assert calls[0].name == "geo.place"
    assert json.loads(calls[0].arguments) == args
    grammar = next(e["body"]["grammar"] for e in completions(script) if e["body"]["prompt"].endswith('"where":'))
    assert '"required": ["lat", "lon"]' in grammar and '"items": {"type": "string"}' in grammar


async def test_several_calls_in_one_turn_every_argument_of_every_call_at_once() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"}),
                           ("weather.get", {"city": "Rome", "unit": "fahrenheit", "days": 2})],
                    required=REQUIRED, delay=0.3)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, PLACE], slots="spread", context="skeleton",
                                       framing="template") as decoder:
            result = await decoder.decode_turn(ASK)
    assert [json.loads(c.arguments) for c in result.calls] == [
        {"city": "Paris", "unit": "celsius"}, {"city": "Rome", "unit": "fahrenheit", "days": 2}]
    # one outline step decided both calls and their cities; then both units at once, then per call
    # one token for the optional arguments and (call 2) the value of "days"
    outline = [e for e in completions(script) if e["body"]["prompt"].endswith('{"name": "')]
    assert len(outline) == 1 and len(completions(script)) == 6
    args = [b for b in result.stats.branches if b.label.startswith("arg:unit")]
    assert len(args) == 2 and max(b.started for b in args) < min(b.ended for b in args), "branches did not overlap"
    # call 2's branches know they are call 2: call 1 is written before them as the outline wrote it
    second = next(e["body"]["prompt"] for e in completions(script) if e["body"]["prompt"].endswith('"unit":')
                  and "Rome" in e["body"]["prompt"])
    assert second.endswith('{"name": "weather.get", "arguments": {"city": "Paris", ...}}\n</tool_call>\n<tool_call>\n'
                           '{"name": "weather.get", "arguments": {"city": "Rome", "unit":')


async def test_incremental_calls_each_decided_after_the_earlier_ones_in_full() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"}),
                           ("trip.plan", {"origin": "Oslo", "to": "Rome", "date": "d"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, TRIP], framing="json_lines") as decoder:
            result = await decoder.decode_turn(ASK)
    assert [(c.name, json.loads(c.arguments)) for c in result.calls] == list(script.calls)
    assert [b.label for b in result.stats.branches] == [
        "name#0", "arg:city#0", "arg:unit#0", "more#1",
        "name#1", "arg:origin#1", "arg:to#1", "arg:date#1", "more#2"]
    # the name of call 2 is decided after call 1 in full, in the JSON framing the model splits calls in
    second = [e["body"] for e in completions(script) if e["body"]["prompt"].endswith('"name":')][1]
    assert second["prompt"].split("<|im_start|>assistant\n")[-1] == (
        '{\n  "calls": [\n    {"name": "weather.get", "arguments": {"city": "Paris", "unit": "celsius"}},\n'
        '    {"name":')
    # a turn never has more than max_calls calls: the last step is not even asked
    with FakeServer(Script(calls=script.calls, required=REQUIRED)) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, TRIP], max_calls=1) as decoder:
            result = await decoder.decode_turn(ASK)
    assert [c.name for c in result.calls] == ["weather.get"]
    assert not any(b.label.startswith(("more#", "name#1")) for b in result.stats.branches)


async def test_earlier_calls_are_written_with_their_values_as_the_model_wrote_them() -> None:
    pts = {"name": "dist", "description": "distance", "parameters": {"type": "object", "properties": {
        "a": {"type": "array", "items": {"type": "integer"}}, "b": {"type": "array", "items": {"type": "integer"}}},
        "required": ["a", "b"]}}
    script = Script(calls=[("dist", {"a": [3, 4], "b": [1, 2]}), ("dist", {"a": [5, 6], "b": [7, 8]})],
                    required={"dist": ["a", "b"]})
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [pts]) as decoder:
            calls = await decoder.decode(ASK)
    assert [json.loads(c.arguments) for c in calls] == [c[1] for c in script.calls]
    last = completions(script)[-1]["body"]["prompt"]
    # arrays on one line as the model writes them in pretty-printed calls, not split with the
    # object's separators ("[3,\n        4]")
    assert '"a": [3, 4],\n        "b": [1, 2]\n      }\n    },' in last


async def test_a_value_written_over_several_lines_is_decoded_again_whole() -> None:
    script = Script(calls=[("geo.place", {"where": {"lat": 1, "lon": 2}, "note": "n"})], required=REQUIRED,
                    multiline_key="where")
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [PLACE]) as decoder:
            result = await decoder.decode_turn(ASK)
    assert json.loads(result.calls[0].arguments) == {"where": {"lat": 1, "lon": 2}, "note": "n"}
    where = [e["body"] for e in completions(script) if e["body"]["prompt"].endswith('"where":')]
    assert [b.get("stop") for b in where] == [["\n"], None]  # cut at its first newline, then whole


async def test_default_framing_is_the_pretty_printed_calls_object() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"}),
                           ("weather.get", {"city": "Rome", "unit": "fahrenheit"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER]) as decoder:
            calls = await decoder.decode(ASK)
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    unit = next(e["body"]["prompt"] for e in completions(script) if e["body"]["prompt"].endswith('"unit":')
                and "Rome" in e["body"]["prompt"])
    assert unit.split("<|im_start|>assistant\n")[-1] == (
        '{\n  "calls": [\n    {\n      "name": "weather.get",\n      "arguments": {\n        "city": "Paris",\n'
        '        "unit": "celsius"\n      }\n    },\n    {\n      "name": "weather.get",\n      "arguments": {\n'
        '        "city": "Rome",\n        "unit":')


async def test_decoded_context_writes_earlier_calls_in_full() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"}),
                           ("geo.place", {"where": {"lat": 1, "lon": 2}, "note": "n"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, PLACE], context="decoded",
                                       framing="template") as decoder:
            calls = await decoder.decode(ASK)
        with pytest.raises(ValueError, match="context must be"):
            ParallelCallDecoder(server.base_url, [WEATHER], context="guess")  # type: ignore[arg-type]
    assert [c.name for c in calls] == ["weather.get", "geo.place"]
    note = next(e["body"]["prompt"] for e in completions(script) if e["body"]["prompt"].endswith('"note":'))
    assert '"arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n<tool_call>' in note


async def test_outline_is_one_request_bounded_by_max_calls() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"})], required=REQUIRED,
                    names_cut=True)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, PLACE], max_calls=3, context="skeleton",
                                       framing="template") as decoder:
            with pytest.raises(DecodingError, match="outline step was cut"):
                await decoder.decode(ASK)
    grammar = completions(script)[0]["body"]["grammar"]
    # the two names only, and at most two more calls after the first
    assert "c: c0 | c1\n" in grammar and [ln.split('" ')[0] for ln in grammar.splitlines()[-2:]] == [
        'c0: "weather.get', 'c1: "geo.place']
    assert grammar.count('"<tool_call>\\n{\\"name\\": \\"" c') == 2
    g1 = outline_grammar([("a", '"}"')], call_sep="\n", before_name="<c>", max_calls=1)
    assert "<c>" not in g1 and g1.rstrip().endswith('c0: "a" "}"')


async def test_unknown_tool_name_is_an_error_never_a_call() -> None:
    script = Script(calls=[("email.send", {"to": "x"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER, TRIP]) as decoder:
            with pytest.raises(DecodingError, match="no known tool name"):
                await decoder.decode(ASK)


async def test_a_failed_branch_raises_a_clear_error_naming_the_argument() -> None:
    for kw, pattern in (({"fail_key": "unit"}, r"unit: branch arg:unit#0 failed: .*HTTP 500"),
                        ({"truncate_key": "unit"}, r"unit: branch arg:unit#0 was cut")):
        script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"})], required=REQUIRED, **kw)
        with FakeServer(script) as server:
            async with ParallelCallDecoder(server.base_url, [WEATHER]) as decoder:
                with pytest.raises(DecodingError, match=pattern):
                    await decoder.decode(ASK)


async def test_arguments_that_do_not_validate_raise() -> None:
    @tool
    def count(n: int, label: str) -> int:
        """Count."""
        return n

    script = Script(calls=[("count", {"n": "many", "label": "x"})], required={"count": ["n", "label"]})
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [count]) as decoder:
            with pytest.raises(DecodingError, match="do not validate"):
                await decoder.decode(ASK)


async def test_fallback_to_ordinary_decoding_is_logged_and_flagged(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(calls=[("weather.get", {"city": "Oslo", "unit": "celsius"})], raw=False)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER]) as decoder:
            with caplog.at_level(logging.WARNING, logger="agentrt.decoding._decoder"):
                result = await decoder.decode_turn(ASK)
                assert await decoder.supports_parallel() is not None
            with pytest.raises(DecodingError, match="cannot decode arguments in parallel"):
                await decoder.decode_arguments("weather.get", ASK)
    assert result.fallback and result.mode == "fallback" and "apply-template" in result.fallback_reason
    assert [json.loads(c.arguments) for c in result.calls] == [{"city": "Oslo", "unit": "celsius"}]
    assert any("falling back to ordinary tool-call decoding" in r.message for r in caplog.records)


async def test_decode_arguments_for_a_known_tool_with_partial_arguments() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius"})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER]) as decoder:
            args, stats = await decoder.decode_arguments("weather.get", ASK, partial={"city": "Paris"})
    assert args == {"city": "Paris", "unit": "celsius"}
    branch_prompts = [e["body"]["prompt"] for e in completions(script)]
    assert len(branch_prompts) == 1 and branch_prompts[0].endswith('"arguments": {"city": "Paris", "unit":')
    assert stats.requests == 1  # the unit branch, whose delimiter also said that "days" is absent


def test_parse_calls_text_reads_tool_call_blocks_and_bare_json() -> None:
    calls, errors = parse_calls_text('<tool_call>\n{"name": "a.b", "arguments": {"x": 1}}\n</tool_call>\n'
                                     '<tool_call>\n{"name": "c", "arguments": {}}\n</tool_call>')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a.b", {"x": 1}), ("c", {})] and not errors
    calls, _ = parse_calls_text('{"calls": [{"name": "a", "arguments": {"y": "z"}}]}')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"y": "z"})]
    calls, errors = parse_calls_text("I cannot help")
    assert not calls and errors


async def test_a_repeated_call_is_dropped() -> None:
    same = ("weather.get", {"city": "Paris", "unit": "celsius"})
    script = Script(calls=[same, same, same], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER]) as decoder:
            calls = await decoder.decode(ASK)
    assert len(calls) == 1


async def test_auto_slots_pin_nothing() -> None:
    script = Script(calls=[("weather.get", {"city": "Paris", "unit": "celsius", "days": 2})], required=REQUIRED)
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [WEATHER], slots="auto") as decoder:
            calls = await decoder.decode(ASK)
        with pytest.raises(ValueError, match="slots must be"):
            ParallelCallDecoder(server.base_url, [WEATHER], slots="anywhere")  # type: ignore[arg-type]
    assert json.loads(calls[0].arguments)["days"] == 2
    # city and unit, the optional choice, days, the another-call choice
    assert len(completions(script)) == 5 and all("id_slot" not in e["body"] for e in completions(script))


async def test_a_call_repeating_an_earlier_one_ends_the_turn() -> None:
    fact = {"name": "math.factorial", "description": "n!", "parameters": {
        "type": "object", "properties": {"number": {"type": "integer"}, "exact": {"type": "boolean"}},
        "required": ["number"]}}
    script = Script(calls=[("math.factorial", {"number": 5}), ("math.factorial", {"number": 10, "exact": True}),
                           ("math.factorial", {"number": 10, "exact": True}), ("math.factorial", {"number": 1})],
                    required={"math.factorial": ["number"]})
    with FakeServer(script) as server:
        async with ParallelCallDecoder(server.base_url, [fact]) as decoder:
            result = await decoder.decode_turn(ASK)
    # call 3 repeats call 2 (greedy decoding looping): dropped, and the turn ends there
    assert [json.loads(c.arguments) for c in result.calls] == [{"number": 5}, {"number": 10, "exact": True}]
    assert result.stats.branches[-1].label == "arg:exact#2"
    assert not any(b.label.startswith("more#3") for b in result.stats.branches)


async def test_decode_calls_for_the_planner_returns_validated_calls_or_a_clear_error() -> None:
    from agentrt.decoding import decode_calls
    from agentrt.tools import ToolRegistry

    @tool
    def count(n: int, label: str) -> int:
        """Count."""
        return n

    script = Script(calls=[("count", {"n": 3, "label": "x"})], required={"count": ["n", "label"]})
    with FakeServer(script) as server:
        calls = await decode_calls(server.base_url, ASK, ToolRegistry([count]))
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("count", {"n": 3, "label": "x"})]
    plain = Script(calls=[("count", {"n": 3, "label": "x"})], raw=False)
    with FakeServer(plain) as server:
        with pytest.raises(DecodingError, match="cannot decode calls in parallel"):
            await decode_calls(server.base_url, ASK, [count])
        calls = await decode_calls(server.base_url, ASK, [count], allow_fallback=True)
    assert [c.name for c in calls] == ["count"]
