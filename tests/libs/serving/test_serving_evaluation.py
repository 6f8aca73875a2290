"""Evaluation through Triton: TritonGenerator against the in-process LocalHFGenerator on the
same tiny model (the base and a LoRA), and an LLM judge served by Triton (kind "triton"):
its grades, its comparisons and a calibration on anchors."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient

from posttrain.evaluation import (
    AnchorItem,
    JudgeConfig,
    LocalHFGenerator,
    TritonGenerator,
    build_judge,
    calibrate_judge,
)
from posttrain.evaluation.judge import (
    CompareRequest,
    GradeRequest,
    grade_messages,
    parse_score,
)
from posttrain.serving import LLMModelConfig, ensure_llm_model, install_adapter, unload_model
from posttrain.training.inference import load_trained_model

LLM = "evalgen_llm"
PROMPTS = [
    [{"role": "user", "content": "How do I reset my router?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What does a blinking blue light mean on the X2 router?"}],
    [{"role": "user", "content": "Reverse: red green blue"}],
]


@pytest.fixture(scope="module")
def served(triton, serving_base, adapter_sources, tmp_path_factory) -> str:
    """evalgen_llm over the tiny base, adapter a1 installed; the gRPC url."""
    adapter_dir = tmp_path_factory.mktemp("evalgen-adapters")
    install_adapter(adapter_sources["a1"], adapter_dir, "a1")
    config = LLMModelConfig(
        base_model=serving_base, adapter_dir=adapter_dir, max_batch_size=8, torch_threads=1
    )
    assert ensure_llm_model(triton.triton_grpc_url, triton.triton_model_repository, LLM, config)
    # Served already: written and loaded again only when Triton lacks it.
    assert not ensure_llm_model(triton.triton_grpc_url, triton.triton_model_repository, LLM, config)
    yield triton.triton_grpc_url
    unload_model(grpcclient.InferenceServerClient(triton.triton_grpc_url), LLM)


@pytest.mark.parametrize("lora", ["", "a1"])
def test_triton_generator_gives_the_local_generators_greedy_output(
    served, serving_base, adapter_sources, lora
):
    model, tokenizer = load_trained_model(
        adapter_sources["a1"] if lora else serving_base, serving_base if lora else None
    )
    local = LocalHFGenerator(model, tokenizer, batch_size=2).generate(PROMPTS, 8, seed=0)
    remote = TritonGenerator(served, LLM, lora, concurrency=4)
    first = remote.generate(PROMPTS, 8, seed=0)
    assert [(g.text, g.prompt_tokens, g.completion_tokens) for g in first] == [
        (g.text, g.prompt_tokens, g.completion_tokens) for g in local
    ]
    assert all(g.latency_s > 0 for g in first)
    assert len({g.text for g in first}) > 1  # the tiny model answers each prompt otherwise
    # One at a time, or again: the same outputs (greedy, whatever Triton batched).
    alone = TritonGenerator(served, LLM, lora, concurrency=1).generate(PROMPTS, 8, seed=0)
    assert [g.text for g in alone] == [g.text for g in first]
    remote.close()


def test_a_judge_served_by_triton_grades_compares_and_calibrates(served):
    config = JudgeConfig(
        kind="triton", triton_url=served, triton_model=LLM, lora_name="a1", max_tokens=12
    )
    judge = build_judge(config)
    assert judge.id == f"triton:{LLM}/a1@{served}"
    request = GradeRequest(
        prompt=PROMPTS[0], answer="Hold the reset button.", reference="Hold reset.", rubric="r"
    )
    grade = judge.grade(request)
    # The raw reply is the served model's greedy answer to the grading prompt; the score
    # is what parses out of it (None for a random model's words), never an error.
    reply = TritonGenerator(served, LLM, "a1").generate([grade_messages(request)], 12, seed=0)
    assert grade.raw == reply[0].text and grade.score == parse_score(grade.raw)
    assert grade.score is None or 1 <= grade.score <= 5
    assert judge.compare(CompareRequest(PROMPTS[0], "a", "b")) in ("A", "B", "tie")

    anchors = [
        AnchorItem(f"anc-{i}", prompt, answer, score, reference="Hold reset.")
        for i, (prompt, answer, score) in enumerate(
            [
                (PROMPTS[0], "Hold reset.", 5),
                (PROMPTS[3], "blue green red", 4),
                (PROMPTS[1], "No.", 1),
            ]
        )
    ]
    calibration = calibrate_judge(judge, anchors, rubric="r")
    assert calibration.n == 3 and calibration.judge_id == judge.id
    assert not calibration.trusted and calibration.reasons  # 3 anchors, a random model
    # Another adapter under the same model is another judge version.
    other = build_judge(JudgeConfig(kind="triton", triton_url=served, triton_model=LLM))
    assert other.id == f"triton:{LLM}@{served}" and other.version != judge.version
