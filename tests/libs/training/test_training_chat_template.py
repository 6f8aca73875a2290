"""Chat rows -> ids and labels with the base model's template (SmolLM2's ChatML, on the
tiny model's tokenizer, which keeps SmolLM2's template and special tokens)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from posttrain.data.chat_template import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    ChatTemplateError,
    encode_chat,
    encode_rows,
    render_prompt,
    truncate_left,
)


def _labelled_runs(encoded) -> list[list[int]]:
    """The labelled tokens, one list per contiguous run."""
    runs, current = [], []
    for label in encoded.labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Reverse: red green blue"},
    {"role": "assistant", "content": "blue green red"},
    {"role": "user", "content": "And: a  b\n"},
    {"role": "assistant", "content": " b a\n\nDone."},
]


def test_labels_are_exactly_the_assistant_turns_plus_eos(tiny_tokenizer) -> None:
    encoded = encode_chat(CONVERSATION, tiny_tokenizer)
    eos = tiny_tokenizer.eos_token
    assert eos == "<|im_end|>"
    runs = _labelled_runs(encoded)
    decoded = [tiny_tokenizer.decode(run) for run in runs]
    assert decoded == ["blue green red" + eos, " b a\n\nDone." + eos]
    # Each turn's last labelled token is the EOS, and labels equal the inputs where set.
    assert all(run[-1] == tiny_tokenizer.eos_token_id for run in runs)
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        assert label in (IGNORE_INDEX, token)
    # The "\n" ChatML puts after <|im_end|> is not learned; prompts are not learned.
    unlabelled = [
        t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab == IGNORE_INDEX
    ]
    assert "Reverse: red green blue" in tiny_tokenizer.decode(unlabelled)
    assert encoded.num_label_tokens == sum(len(r) for r in runs)


def test_piecewise_ids_equal_the_whole_rendered_text(tiny_tokenizer) -> None:
    encoded = encode_chat(CONVERSATION, tiny_tokenizer)
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert encoded.input_ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_render_prompt_is_the_training_prefix(tiny_tokenizer) -> None:
    encoded = encode_chat(CONVERSATION, tiny_tokenizer)
    prompt = render_prompt(CONVERSATION[:2], tiny_tokenizer)
    first_label = encoded.assistant_spans[0][0]
    assert prompt == encoded.input_ids[:first_label]
    assert tiny_tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    # The template's default system prompt applies (SmolLM2 adds one when none is given).
    plain = render_prompt([{"role": "user", "content": "hi"}], tiny_tokenizer)
    assert "You are a helpful AI assistant named SmolLM" in tiny_tokenizer.decode(plain)


def test_trailing_user_turn_and_no_assistant(tiny_tokenizer) -> None:
    with_tail = CONVERSATION + [{"role": "user", "content": "thanks"}]
    assert encode_chat(with_tail, tiny_tokenizer) == encode_chat(CONVERSATION, tiny_tokenizer)
    with pytest.raises(ChatTemplateError, match="no assistant"):
        encode_chat([{"role": "user", "content": "hi"}], tiny_tokenizer)


def test_tool_turns_render_and_only_assistant_learns(tiny_tokenizer) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": {}}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    runs = [tiny_tokenizer.decode(r) for r in _labelled_runs(encode_chat(messages, tiny_tokenizer))]
    # SmolLM2's template ignores tool_calls: the first turn is its (empty) content + EOS.
    assert runs == ["<|im_end|>", "It is sunny.<|im_end|>"]


def test_fallback_template_for_tokenizers_without_one(tiny_tokenizer) -> None:
    bare = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    assert bare.chat_template is None
    encoded = encode_chat(CONVERSATION[1:3], bare)
    text = bare.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>user\nReverse")
    assert [bare.decode(r) for r in _labelled_runs(encoded)] == ["blue green red<|endoftext|>"]
    assert "{% for message in messages %}" in FALLBACK_CHAT_TEMPLATE


def test_template_without_eos_gets_one_appended(tiny_tokenizer) -> None:
    plain = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    plain.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    encoded = encode_chat(CONVERSATION[1:3], plain)
    assert [plain.decode(r) for r in _labelled_runs(encoded)] == ["blue green red\n<|endoftext|>"]
    assert encoded.input_ids[-1] == plain.eos_token_id


def test_prefix_unstable_template_is_refused(tiny_tokenizer) -> None:
    odd = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>"
    )
    # Renders the message count first: no prefix of the conversation is a prefix of it.
    odd.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    with pytest.raises(ChatTemplateError, match="prefix-stable"):
        encode_chat(CONVERSATION, odd)


def test_template_exceptions_drop_the_row_not_the_job(tiny_tokenizer) -> None:
    strict = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>"
    )
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role here') }}{% endif %}{% endfor %}"
        + FALLBACK_CHAT_TEMPLATE
    )
    rows = [
        {"messages": CONVERSATION[1:3]},
        {"messages": CONVERSATION[:3]},  # a system turn: this template raises
        {"messages": CONVERSATION[2:3]},  # only an assistant turn: nothing to condition on
    ]
    kept, stats = encode_rows(rows, strict, max_seq_len=512)
    assert (stats.kept, stats.dropped_template_error) == (1, 2)
    assert "no system role here" in stats.dropped_examples[0][1]
    assert "starts with an assistant turn" in stats.dropped_examples[1][1]


def test_truncation_policies_and_counts(tiny_tokenizer) -> None:
    long_row = {"messages": CONVERSATION}
    short_row = {
        "messages": [
            {"role": "system", "content": "x"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok"},
        ]
    }
    no_answer = {"messages": CONVERSATION[:2]}
    full = encode_chat(CONVERSATION, tiny_tokenizer)
    first_turn_start = full.assistant_spans[0][0]
    limit = len(full) - (first_turn_start + 3)  # the window starts inside the first turn
    assert len(encode_chat(short_row["messages"], tiny_tokenizer)) <= limit

    kept, stats = encode_rows(
        [long_row, short_row, no_answer], tiny_tokenizer, max_seq_len=limit, truncation="drop"
    )
    assert (stats.rows, stats.kept, stats.dropped_too_long, stats.dropped_no_assistant) == (
        3,
        1,
        1,
        1,
    )
    assert stats.dropped == 2 and [i for i, _ in stats.dropped_examples] == [0, 2]

    kept, stats = encode_rows(
        [long_row, short_row], tiny_tokenizer, max_seq_len=limit, truncation="truncate_left"
    )
    assert (stats.kept, stats.truncated, stats.dropped_too_long) == (2, 1, 0)
    cut = kept[0]
    assert len(cut) == limit and cut.input_ids == full.input_ids[-limit:]
    # The last turn is whole; the first turn, split by the window, is no longer learned.
    runs = [tiny_tokenizer.decode(r) for r in _labelled_runs(cut)]
    assert runs == [" b a\n\nDone.<|im_end|>"]

    # When even the last turn's prompt would be cut, the row is dropped, not mangled.
    last_turn = len(full) - full.prompt_starts[-1]
    assert truncate_left(full, last_turn - 1) is None
    assert truncate_left(full, last_turn) is not None
