"""GenerationEngine on CPU, without Triton: batched multi-adapter generation against
vanilla PEFT, the adapter cache, per-request errors, stops, EOS, sampling, streaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serving_reference import peft_forward_greedy, peft_generate

from posttrain.data.chat_template import render_prompt
from posttrain.serving import (
    AdapterCache,
    AdapterLoadError,
    AdapterNotFound,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    SamplingParams,
    install_adapter,
    parse_text_input,
    remove_adapter,
)

PROMPTS = [
    "Hello there, how are",
    "The quick brown fox",
    "a",
    "Once upon a time in a land far away there lived",
]
CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Reverse: red green blue"},
]


@pytest.fixture(scope="module")
def adapter_dir(adapter_sources: dict[str, Path], tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served-adapters")
    for name in ("a1", "a2", "pre", "pro"):
        install_adapter(adapter_sources[name], root, name)
    return root


@pytest.fixture(scope="module")
def engine(serving_base: Path, adapter_dir: Path) -> GenerationEngine:
    return GenerationEngine(serving_base, adapter_dir, adapter_cache_size=4)


def reference(engine, serving_base, adapter_dir, prompt, adapter, max_new_tokens, tools=None):
    if adapter in ("pre", "pro"):
        return peft_forward_greedy(
            serving_base,
            adapter_dir / adapter,
            engine.encode_prompt(prompt, tools),
            max_new_tokens=max_new_tokens,
            eos_ids=engine.eos_ids,
        )
    return peft_generate(
        serving_base,
        adapter_dir / adapter if adapter else None,
        engine.encode_prompt(prompt, tools),
        max_new_tokens=max_new_tokens,
        eos_ids=engine.eos_ids,
        pad_id=engine.pad_id,
    )


def test_mixed_adapter_batch_matches_peft_generate_row_by_row(engine, serving_base, adapter_dir):
    rows = [  # (adapter, prompt, max_tokens): rows leave the batch at different steps
        ("", PROMPTS[0], 10),
        ("a1", PROMPTS[0], 10),
        ("a2", PROMPTS[0], 10),
        ("a1", PROMPTS[3], 4),  # longest prompt: the others are left-padded
        ("a2", PROMPTS[2], 1),
        ("", CHAT, 7),
        ("a2", CHAT, 12),
    ]
    requests = [GenerationRequest(p, a, SamplingParams(max_tokens=n)) for a, p, n in rows]
    results = engine.generate(requests)
    for (adapter, prompt, n), result in zip(rows, results, strict=True):
        assert isinstance(result, GenerationResult), result
        expected = reference(engine, serving_base, adapter_dir, prompt, adapter, n)
        assert result.token_ids == expected, (adapter, prompt)
        assert result.text == engine.decode([t for t in expected if t not in engine.eos_ids])
        assert result.num_input_tokens == len(engine.encode_prompt(prompt))
        assert result.num_output_tokens == len(expected)
    # The adapters really change the output (else this test would prove nothing).
    assert len({tuple(r.token_ids) for r in results[:3]}) == 3


def test_prefix_and_prompt_tuning_adapters_match_peft_next_to_lora_rows(
    engine, serving_base, adapter_dir
):
    rows = [("pre", PROMPTS[1]), ("a1", PROMPTS[1]), ("pro", PROMPTS[1]), ("", PROMPTS[1])]
    results = engine.generate(
        [GenerationRequest(p, a, SamplingParams(max_tokens=8)) for a, p in rows]
    )
    for (adapter, prompt), result in zip(rows, results, strict=True):
        assert result.token_ids == reference(engine, serving_base, adapter_dir, prompt, adapter, 8)
    assert len({tuple(r.token_ids) for r in results}) == 4
    assert results[0].num_input_tokens == len(engine.encode_prompt(PROMPTS[1]))  # no virtual


def test_an_unknown_or_bad_adapter_fails_only_its_own_request(engine, serving_base, adapter_dir):
    requests = [
        GenerationRequest(PROMPTS[0], "a1", SamplingParams(max_tokens=6)),
        GenerationRequest(PROMPTS[0], "no-such-adapter"),
        GenerationRequest(PROMPTS[0], "../a1"),
        GenerationRequest(PROMPTS[0], "a2", SamplingParams(max_tokens=6, top_p=0.0)),
    ]
    ok, missing, bad_name, bad_param = engine.generate(requests)
    assert ok.token_ids == reference(engine, serving_base, adapter_dir, PROMPTS[0], "a1", 6)
    assert isinstance(missing, AdapterNotFound) and "no-such-adapter" in str(missing)
    assert missing.code == "NOT_FOUND"
    assert isinstance(bad_name, InvalidRequest) and bad_param.code == "INVALID_ARG"
    assert "top_p" in str(bad_param)


def test_unsupported_adapters_are_refused_with_the_reason(serving_base, adapter_sources, tmp_path):
    dora = tmp_path / "dora"
    dora.mkdir()
    for f in adapter_sources["a1"].iterdir():
        (dora / f.name).write_bytes(f.read_bytes())
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    engine = GenerationEngine(serving_base, tmp_path)
    dora_result, ia3_result = engine.generate(
        [GenerationRequest("x", "dora"), GenerationRequest("x", "ia3")]
    )
    assert isinstance(dora_result, AdapterLoadError) and "use_dora" in str(dora_result)
    assert isinstance(ia3_result, AdapterLoadError) and "IA3" in str(ia3_result)


def test_adapter_cache_keeps_the_most_recently_used(engine, adapter_dir):
    cache = AdapterCache(adapter_dir, engine.model, capacity=2)
    first = cache.get("a1")
    cache.get("a2")
    assert cache.get("a1") is first  # a hit: not read again
    cache.get("pre")  # evicts a2, the least recently used
    assert cache.names() == ["a1", "pre"]
    assert (cache.stats.hits, cache.stats.loads, cache.stats.evictions) == (1, 3, 1)
    cache.get("a2")
    assert cache.names() == ["pre", "a2"]
    with pytest.raises(AdapterNotFound):
        cache.get("missing")


def test_a_new_or_replaced_adapter_folder_goes_live_on_next_use(
    serving_base, adapter_sources, tmp_path
):
    engine = GenerationEngine(serving_base, tmp_path, adapter_cache_size=2)
    request = GenerationRequest(PROMPTS[0], "live", SamplingParams(max_tokens=6))
    [missing] = engine.generate([request])
    assert isinstance(missing, AdapterNotFound)
    install_adapter(adapter_sources["a1"], tmp_path, "live")
    [as_a1] = engine.generate([request])
    install_adapter(adapter_sources["a2"], tmp_path, "live")  # a new version, same name
    [as_a2] = engine.generate([request])
    [a2] = engine.generate([GenerationRequest(PROMPTS[0], "a2", SamplingParams(max_tokens=6))])
    assert isinstance(a2, AdapterNotFound)  # only "live" is installed here
    expected_a2 = peft_generate(
        serving_base,
        adapter_sources["a2"],
        engine.encode_prompt(PROMPTS[0]),
        max_new_tokens=6,
        eos_ids=engine.eos_ids,
        pad_id=engine.pad_id,
    )
    assert as_a2.token_ids == expected_a2 != as_a1.token_ids
    assert engine.adapters.stats.reloads == 1
    assert remove_adapter(tmp_path, "live")
    assert isinstance(engine.generate([request])[0], AdapterNotFound)
    assert "live" not in engine.adapters  # offline at once, not served from memory


def test_max_tokens_and_stop_strings(engine):
    base = SamplingParams(max_tokens=12)
    [full] = engine.generate([GenerationRequest(PROMPTS[3], "a2", base)])
    assert full.finish_reason == "length" and full.num_output_tokens == 12
    stop = full.text[len(full.text) // 2 :][:3]
    assert stop and full.text.find(stop) > 0
    [stopped, short] = engine.generate(
        [
            GenerationRequest(PROMPTS[3], "a2", SamplingParams(max_tokens=12, stop=("zzzq", stop))),
            GenerationRequest(PROMPTS[3], "a2", SamplingParams(max_tokens=3)),
        ]
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(stop)]
    assert stopped.token_ids == full.token_ids[: stopped.num_output_tokens]
    assert short.token_ids == full.token_ids[:3] and short.finish_reason == "length"


def test_eos_ends_the_row_and_is_counted_but_not_in_the_text(serving_base, adapter_dir):
    engine = GenerationEngine(serving_base, adapter_dir)
    [free] = engine.generate([GenerationRequest(PROMPTS[3], "a2", SamplingParams(max_tokens=12))])
    eos = free.token_ids[4]
    first = free.token_ids.index(eos)
    engine.eos_ids = frozenset({eos})  # as if that token were the model's end of turn
    [ended] = engine.generate([GenerationRequest(PROMPTS[3], "a2", SamplingParams(max_tokens=12))])
    assert ended.finish_reason == "stop"
    assert ended.token_ids == free.token_ids[: first + 1]
    assert ended.num_output_tokens == first + 1
    assert ended.text == engine.decode(free.token_ids[:first])


def test_streamed_deltas_add_up_to_the_text_and_never_show_the_stop_string(engine):
    [full] = engine.generate([GenerationRequest(PROMPTS[0], "a2", SamplingParams(max_tokens=16))])
    stop = full.text[-4:]
    requests = [
        GenerationRequest(PROMPTS[0], "a2", SamplingParams(max_tokens=16, stop=(stop,))),
        GenerationRequest(PROMPTS[1], "pro", SamplingParams(max_tokens=7)),
        GenerationRequest(PROMPTS[2], "", SamplingParams(max_tokens=5)),
    ]
    deltas: dict[int, list[str]] = {0: [], 1: [], 2: []}
    finals: dict[int, GenerationResult] = {}

    def on_update(row, delta, progress, final):
        assert row not in finals  # nothing after the final update
        assert final == (progress.finish_reason != "")
        deltas[row].append(delta)
        assert progress.text.startswith("".join(deltas[row]))
        if final:
            finals[row] = progress

    results = engine.generate(requests, on_update)
    for row, result in enumerate(results):
        assert finals[row] == result
        assert "".join(deltas[row]) == result.text
        assert len(deltas[row]) > 1
    assert stop not in "".join(deltas[0]) and results[0].finish_reason == "stop"


def test_sampling_is_reproducible_with_a_seed_and_leaves_greedy_rows_alone(engine):
    greedy = GenerationRequest(PROMPTS[0], "a1", SamplingParams(max_tokens=10))
    sampled = [
        GenerationRequest(PROMPTS[0], "a1", SamplingParams(10, temperature=1.5, top_p=0.95, seed=s))
        for s in (7, 7, 8)
    ]
    [alone] = engine.generate([greedy])
    g, s7, s7_again, s8 = engine.generate([greedy, *sampled])
    assert g.token_ids == alone.token_ids
    assert s7.token_ids == s7_again.token_ids
    assert s7.token_ids != s8.token_ids
    assert s7.token_ids != g.token_ids


def test_prompt_rule_json_chat_or_raw_text(engine):
    chat = json.dumps({"messages": CHAT})
    prompt, tools = parse_text_input(chat)
    assert prompt == CHAT and tools is None
    assert engine.encode_prompt(prompt) == render_prompt(CHAT, engine.tokenizer)
    assert parse_text_input('{"not": "a chat"}') == ('{"not": "a chat"}', None)
    assert parse_text_input("{ broken json") == ("{ broken json", None)
    with pytest.raises(InvalidRequest):
        parse_text_input('{"messages": [{"content": "no role"}]}')


def test_bad_settings_and_too_long_prompts_are_invalid(serving_base):
    engine = GenerationEngine(serving_base, None, max_context_tokens=16)
    too_long, bad_temperature, no_adapters, ok = engine.generate(
        [
            GenerationRequest("word " * 40),
            GenerationRequest("hi", params=SamplingParams(temperature=-1.0)),
            GenerationRequest("hi", "a1"),
            GenerationRequest("hi there", params=SamplingParams(max_tokens=100)),
        ]
    )
    assert isinstance(too_long, InvalidRequest) and "16-token context" in str(too_long)
    assert isinstance(bad_temperature, InvalidRequest)
    assert isinstance(no_adapters, AdapterNotFound)
    assert ok.finish_reason == "length"
    assert ok.num_input_tokens + ok.num_output_tokens == 16  # clamped to the context
