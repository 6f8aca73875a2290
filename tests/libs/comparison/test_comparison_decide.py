"""The decision framework on fixed measurements: one test per branch of the shipped
rules (full fine-tuning, prompt/prefix, LoRA/QLoRA, the fallback; merged vs adapter
serving), the rules file's errors, and the report built from them."""

from __future__ import annotations

import json

import pytest

from posttrain.comparison import (
    FAILED,
    MEASURED,
    CandidateMeasurement,
    DecisionContext,
    RuleError,
    build_report,
    default_rules,
    load_rules,
    pareto_front,
    recommend,
    render_html,
    write_report,
)
from posttrain.comparison.rules import DEFAULT_RULES_PATH

RULES = default_rules()
BASE_PARAMS = 135_000_000


def candidate(name: str, method: str, quality: float | None, **values) -> CandidateMeasurement:
    trainable = values.pop("trainable", {"full": BASE_PARAMS, "lora": 460_000}.get(method, 9_000))
    defaults = dict(
        method_config={"rank": 8} if method in ("lora", "qlora") else {},
        quality={} if quality is None else {"pass_rate": quality},
        gate_verdict="FAIL",
        wall_time_s={"full": 900.0, "lora": 300.0, "qlora": 420.0}.get(method, 120.0),
        train_tokens=100_000,
        peak_memory_bytes=2 << 30,
        trainable_params=trainable,
        total_params=BASE_PARAMS + (0 if method == "full" else trainable),
        first_loss=2.6,
        final_loss=1.1,
        artifact_kind="full" if method == "full" else "adapter",
        artifact_bytes=trainable * 4,
        latency_p50_s=0.4,
    )
    defaults.update(values)
    return CandidateMeasurement(name=name, method=method, **defaults)


def fired(rec, kind: str) -> list[str]:
    return [o.rule.name for o in rec.outcomes if o.fired and o.kind == kind]


def test_the_shipped_rules_load_and_name_only_known_measures():
    assert [r.name for r in RULES.method_rules] == [
        "full-fine-tuning",
        "prompt-or-prefix-tuning",
        "lora-or-qlora",
        "best-measured-quality",
    ]
    assert RULES.source == DEFAULT_RULES_PATH.name
    assert {r.recommend for r in RULES.serving_rules} == {"merged", "adapter"}


def test_full_fine_tuning_when_data_is_large_the_shift_big_and_the_budget_allows():
    candidates = [
        candidate("full", "full", 0.82),
        candidate("lora-r8", "lora", 0.78),
        candidate("prompt", "prompt", 0.40, first_loss=None),
    ]
    context = DecisionContext(data_rows=50_000, budget_candidate_wall_s=1800)
    rec = recommend(candidates, context, RULES)
    assert (rec.candidate, rec.method, rec.serving) == ("full", "full", "merged")
    assert (rec.method_rule, rec.serving_rule) == ("full-fine-tuning", "whole-model")
    assert rec.measures["full_quality_gain"] == pytest.approx(0.04)
    assert rec.measures["full_budget_share"] == pytest.approx(0.5)
    assert "data_rows >= 20000 (measured 5e+04: yes)" in rec.summary

    # The same numbers over budget: full FT is not allowed, LoRA is close enough.
    tight = DecisionContext(data_rows=50_000, budget_candidate_wall_s=600)
    over = recommend(candidates, tight, RULES)
    assert (over.method_rule, over.candidate) == ("lora-or-qlora", "lora-r8")
    full_rule = next(o for o in over.outcomes if o.rule.name == "full-fine-tuning")
    budget = full_rule.conditions[-1]
    assert (budget.condition.measure, budget.measured, budget.held) == (
        "full_budget_share",
        pytest.approx(1.5),
        False,
    )


def test_little_data_does_not_justify_full_fine_tuning():
    candidates = [candidate("full", "full", 0.82), candidate("lora-r8", "lora", 0.74)]
    rec = recommend(candidates, DecisionContext(data_rows=800, budget_candidate_wall_s=1800), RULES)
    # full's gain (0.08) > the LoRA gap allowance (0.05): no LoRA; the fallback takes the best.
    assert rec.method_rule == "best-measured-quality" and rec.candidate == "full"
    outcome = next(o for o in rec.outcomes if o.rule.name == "full-fine-tuning")
    assert not outcome.fired and not outcome.conditions[0].held


def test_prompt_tuning_when_the_change_is_narrow_and_it_does_as_well():
    candidates = [
        candidate("lora-r4", "lora", 0.71, first_loss=1.2),
        candidate("prompt-20", "prompt", 0.70, first_loss=None),
    ]
    rec = recommend(candidates, DecisionContext(data_rows=500, tenants=1), RULES)
    assert (rec.candidate, rec.method_rule) == ("prompt-20", "prompt-or-prefix-tuning")
    # Virtual tokens can't be merged: the single-tenant "merged" rule gives way.
    assert (rec.serving, rec.serving_rule) == ("adapter", "virtual-tokens-need-adapter-serving")
    assert rec.measures["behaviour_shift"] == pytest.approx(1.2)


def test_lora_when_it_is_close_to_the_best_and_the_cheaper_rank_wins_a_tie():
    candidates = [
        candidate("lora-r4", "lora", 0.75, wall_time_s=200.0),
        candidate("lora-r16", "lora", 0.75, wall_time_s=260.0),
        candidate("qlora-r8", "qlora", 0.73),
        candidate("prompt", "prompt", 0.50, first_loss=None),
    ]
    single = recommend(candidates, DecisionContext(data_rows=3000, tenants=1), RULES)
    assert (single.candidate, single.method_rule) == ("lora-r4", "lora-or-qlora")
    assert (single.serving, single.serving_rule) == ("merged", "single-model-low-latency")

    multi = recommend(candidates, DecisionContext(data_rows=3000, tenants=12), RULES)
    assert (multi.serving, multi.serving_rule) == ("adapter", "multi-tenant-platform")
    rollback = recommend(candidates, DecisionContext(data_rows=3000, fast_rollback=True), RULES)
    assert (rollback.serving, rollback.serving_rule) == ("adapter", "fast-rollback")


def served(adapter_ms: float, merged_ms: float) -> dict[str, dict[str, float]]:
    """The evaluator's serving probe, as the comparison reads it."""
    return {
        mode: {"latency_p50_s": ms / 1000, "latency_p95_s": ms * 1.5 / 1000, "requests": 8.0}
        for mode, ms in (("adapter", adapter_ms), ("merged", merged_ms))
    }


def test_a_latency_budget_only_the_merged_model_meets_decides_the_serving():
    candidates = [
        candidate("lora-r8", "lora", 0.75, serving=served(adapter_ms=130, merged_ms=90)),
        candidate("prompt", "prompt", 0.50, first_loss=None),
    ]
    # Twelve tenants would share one base, but the adapter misses the 100 ms budget.
    context = DecisionContext(data_rows=3000, tenants=12, latency_budget_ms=100)
    rec = recommend(candidates, context, RULES)
    assert (rec.serving, rec.serving_rule) == ("merged", "latency-budget-needs-merged")
    assert rec.measures["adapter_budget_ratio"] == pytest.approx(1.3)
    assert rec.measures["merged_budget_ratio"] == pytest.approx(0.9)
    assert rec.measures["chosen_adapter_overhead"] == pytest.approx(130 / 90)
    assert rec.measures["chosen_merged_p50_ms"] == pytest.approx(90)

    # Both meet it: the platform decides (adapters for many tenants).
    fast = [candidate("lora-r8", "lora", 0.75, serving=served(adapter_ms=60, merged_ms=50))]
    assert recommend(fast, context, RULES).serving_rule == "multi-tenant-platform"
    # No probe (nothing measured through Triton): the budget rule can't fire.
    unmeasured = [candidate("lora-r8", "lora", 0.75)]
    rec = recommend(unmeasured, context, RULES)
    assert rec.serving_rule == "multi-tenant-platform"
    assert rec.measures["adapter_budget_ratio"] is None


def test_a_gate_pass_comes_before_a_higher_score():
    candidates = [
        candidate("lora-r4", "lora", 0.78, gate_verdict="FAIL"),
        candidate("lora-r8", "lora", 0.76, gate_verdict="PASS"),
    ]
    assert recommend(candidates, DecisionContext(), RULES).candidate == "lora-r8"


def test_unmeasured_numbers_never_satisfy_a_rule():
    # Not evaluated: no quality numbers, so no gap can be measured; the fallback fires.
    candidates = [candidate("lora", "lora", None), candidate("prompt", "prompt", None)]
    rec = recommend(candidates, DecisionContext(), RULES)
    assert rec.method_rule == "best-measured-quality"
    lora_rule = next(o for o in rec.outcomes if o.rule.name == "lora-or-qlora")
    assert lora_rule.conditions[0].measured is None and not lora_rule.conditions[0].held
    assert "not measured" in lora_rule.conditions[0].text()


def test_nothing_trained_nothing_recommended():
    candidates = [candidate("lora", "lora", None, outcome=FAILED, error="out of memory")]
    rec = recommend(candidates, DecisionContext(), RULES)
    assert (rec.candidate, rec.serving, rec.method_rule) == (None, None, None)
    assert "nothing to recommend" in rec.summary


def test_a_rule_whose_family_was_not_trained_does_not_fire():
    rules = load_rules(
        """
method_rules:
  - {name: always-full, recommend: full, why: x, when: []}
  - {name: else, recommend: any, why: y}
serving_rules:
  - {name: merge, recommend: merged, why: z}
"""
    )
    rec = recommend([candidate("lora", "lora", 0.5)], DecisionContext(), rules)
    first = rec.outcomes[0]
    assert not first.fired and "no full candidate" in first.note
    assert rec.method_rule == "else" and rec.serving == "merged"


def test_rule_file_errors_name_the_place():
    text = """
quality_metric: pass_rate
cost_measure: dollars
colour: blue
method_rules:
  - {name: a, recommend: lora, when: [{measure: data_rows, op: ">=", value: 1}]}
  - {name: a, recommend: sideways}
  - {name: c, recommend: full, when: [{measure: vibes, op: "~", value: high}]}
serving_rules: []
"""
    with pytest.raises(RuleError) as err:
        load_rules(text)
    fields = {v.field for v in err.value.violations}
    assert fields == {
        "colour",
        "cost_measure",
        "method_rules[1].name",
        "method_rules[1].recommend",
        "method_rules[2].when[0].measure",
        "method_rules[2].when[0].op",
        "method_rules[2].when[0].value",
        "serving_rules",
    }
    with pytest.raises(RuleError, match="not valid YAML"):
        load_rules("method_rules: [")


def test_pareto_front_keeps_the_undominated():
    candidates = [
        candidate("cheap-bad", "prompt", 0.4, wall_time_s=50.0),
        candidate("mid", "lora", 0.7, wall_time_s=200.0),
        candidate("dominated", "lora", 0.6, wall_time_s=300.0),
        candidate("expensive-best", "full", 0.8, wall_time_s=900.0),
        candidate("failed", "qlora", None, outcome=FAILED),
    ]
    assert pareto_front(candidates, "pass_rate", "wall_time_s") == [
        "cheap-bad",
        "mid",
        "expensive-best",
    ]


def test_the_report_has_every_part_in_json_and_html(tmp_path):
    candidates = [
        candidate(
            "lora-r4",
            "lora",
            0.75,
            judge_score=3.5,
            gate_verdict="PASS",
            serving=served(adapter_ms=42, merged_ms=31),
        ),
        candidate("prompt", "prompt", 0.5, first_loss=None),
        candidate("qlora", "qlora", None, outcome=FAILED, error="CUDA needed"),
    ]
    header = {"id": "c" * 32, "name": "support", "base_model": "smol", "dataset": "faq"}
    report = build_report(header, candidates, DecisionContext(data_rows=100), RULES)
    assert report["recommendation"]["candidate"] == "lora-r4"
    lora = report["candidates"][0]
    assert lora["trainable_share"] == pytest.approx(460_000 / BASE_PARAMS)
    assert lora["serving_options"] == ["adapter", "merged"]
    assert report["candidates"][1]["serving_options"] == ["adapter"]
    json_path, html_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["pareto_front"] == ["prompt", "lora-r4"]
    page = html_path.read_text()
    assert 'src="data:image/png;base64,' in page
    assert "lora-or-qlora" in page and "<b>FIRED</b>" in page and "CUDA needed" in page
    assert lora["serving"]["merged"]["latency_p50_s"] == pytest.approx(0.031)
    assert "served merged p50 / p95" in page and "42 / 63 ms" in page and "31 / 46 ms" in page
    assert render_html(report) == page
    assert MEASURED == "MEASURED"
