"""The evaluator with generator "triton": it makes the model under test servable in the
session's tritonserver itself (its own LLM model over the base, the adapter as a lora)
and generates there. The outputs are the in-process generator's; perplexity still comes
from a local copy; a model Triton refuses gets a FAIL report that says why."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from evaluator_helpers import KIND_ADAPTER, KIND_MERGED, FakeRegistry, suite_files
from sqlalchemy import Engine

from posttrain.db import create_db_engine, session_scope
from posttrain.evaluation import EvaluationResult
from posttrain.evaluator import (
    EvaluationRequest,
    Evaluator,
    ModelLoader,
    ModelUnderTest,
    SuiteCatalog,
    reports,
)
from posttrain.evaluator.serving import TritonOptions
from posttrain.serving.synthetic import make_random_adapter, make_tiny_base
from posttrain.storage import ArtifactRef, ArtifactStore
from posttrain.v1 import registry_pb2
from services.evaluator.servicer import migrate
from services.evaluator.settings import EvaluatorSettings

BASE = "tiny-served"


@pytest.fixture(scope="module")
def registry(store: ArtifactStore, model_folders, tmp_path_factory) -> FakeRegistry:
    """bot:v1, a LoRA on BASE (weights at std 0.2: outputs that differ per prompt),
    prompted:v1, a prompt-tuning adapter on it, and broken:v1, a folder no runtime can load."""
    root = tmp_path_factory.mktemp("served-models")
    base = make_tiny_base(root / BASE, seed=0)
    adapter = make_random_adapter(base, root / "lora", kind="lora", seed=1)
    prompted = make_random_adapter(base, root / "prompt", kind="prompt", seed=2)
    registry = FakeRegistry()
    weights = store.put_folder(base, f"base-models/{BASE}")
    registry.bases[BASE] = registry_pb2.BaseModel(name=BASE, weights=weights.to_proto())
    for vid, folder, kind in (
        ("bot:v1", adapter, KIND_ADAPTER),
        ("prompted:v1", prompted, KIND_ADAPTER),
        ("broken:v1", model_folders.broken, KIND_MERGED),
    ):
        ref = store.put_folder(folder, f"models/acme/{vid.replace(':', '-')}/merged")
        registry.add_version(vid, ref, kind=kind).base_model = BASE
    return registry


def make(
    engine: Engine,
    store: ArtifactStore,
    cache: Path,
    triton,
    generator: str,
    serving_probe_requests: int = 0,
) -> Evaluator:
    migrate(engine)
    settings = EvaluatorSettings(suite="smoke-ppl", review_sample_size=0, max_seq_len=512)
    config = replace(
        settings.evaluator_config(),
        generator=generator,
        triton=TritonOptions(
            url=triton.triton_grpc_url,
            model_repository=str(triton.triton_model_repository),
            torch_threads=1,
        ),
        serving_probe_requests=serving_probe_requests,
    )
    catalog = SuiteCatalog(store, engine)
    files = suite_files("smoke-ppl")
    header = yaml.safe_load(files["suite.yaml"])
    header["run_metrics"] = ["latency", "cost", "perplexity"]
    files["suite.yaml"] = yaml.safe_dump(header).encode()
    with session_scope(engine) as session:
        catalog.upload(session, files, uploaded_by="setup")
    loader = ModelLoader(store, cache)
    return Evaluator(engine, store, catalog, loader, config, code_version="test")


def result_of(evaluator: Evaluator, row) -> EvaluationResult:
    return EvaluationResult.from_json(evaluator.store.get_bytes(reports.ref_of(row.json_report)))


def test_generator_triton_serves_the_candidate_and_matches_local_generation(
    triton, store, registry, tmp_path
):
    cache = tmp_path / "cache"  # Triton reads the folders here: the same machine
    served = make(
        create_db_engine(f"sqlite:///{tmp_path / 'a.sqlite3'}"), store, cache, triton, "triton"
    )
    local = make(
        create_db_engine(f"sqlite:///{tmp_path / 'b.sqlite3'}"), store, cache, triton, "local"
    )
    model = ModelUnderTest.from_version(registry.versions["bot:v1"])
    remote = result_of(served, served.run(EvaluationRequest(model), registry))
    here = result_of(local, local.run(EvaluationRequest(model), registry))
    assert remote.verdict == "PASS" and remote.provenance.generator == "triton"
    assert here.provenance.generator == "local-hf"
    assert remote.provenance.adapter == here.provenance.adapter != ""
    assert [(c.case_id, c.output, c.completion_tokens) for c in remote.cases] == [
        (c.case_id, c.output, c.completion_tokens) for c in here.cases
    ]
    assert len({c.output for c in remote.cases}) > 1
    # Perplexity from a local copy of the model: the same number.
    assert remote.metrics["overall"]["perplexity"] == pytest.approx(
        here.metrics["overall"]["perplexity"]
    )

    # The base model itself is served by the same Triton model, without a lora.
    base = ModelUnderTest.from_base(registry.get_base_model(BASE), "acme")
    base_result = result_of(served, served.run(EvaluationRequest(base), registry))
    assert base_result.provenance.model_version_id == f"base:{BASE}"
    assert base_result.provenance.generator == "triton" and base_result.cases
    models = [
        p.name for p in Path(triton.triton_model_repository).iterdir() if p.name.startswith("eval_")
    ]
    weights = ArtifactRef.from_proto(registry.bases[BASE].weights)
    assert f"eval_{weights.sha256[:16]}" in models
    assert (
        cache
        / "triton-adapters"
        / f"eval_{weights.sha256[:16]}"
        / f"eval-{remote.provenance.adapter[:16]}"
    ).exists()


def test_a_model_triton_refuses_gets_a_fail_report(triton, store, registry, tmp_path):
    evaluator = make(
        create_db_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}"),
        store,
        tmp_path / "c",
        triton,
        "triton",
    )
    model = ModelUnderTest.from_version(registry.versions["broken:v1"])
    row = evaluator.run(EvaluationRequest(model), registry)
    assert row.verdict == "FAIL" and not row.loaded
    assert row.reasons[0].startswith("model could not be loaded: Triton could not load it")


def test_the_serving_probe_times_the_candidate_as_adapter_and_merged(
    triton, store, registry, tmp_path
):
    """With the probe on, a LoRA candidate evaluated locally is also served through Triton
    twice: as a lora on its base's model and folded into one merged model. The merged model
    is the same function (greedy outputs equal the adapter's); a prompt-tuning adapter can't
    be merged: adapter only, and a note says why."""
    cache = tmp_path / "cache"
    evaluator = make(
        create_db_engine(f"sqlite:///{tmp_path / 'p.sqlite3'}"), store, cache, triton, "local", 3
    )
    model = ModelUnderTest.from_version(registry.versions["bot:v1"])
    row = evaluator.run(EvaluationRequest(model), registry)
    result = result_of(evaluator, row)
    assert [s.mode for s in result.serving] == ["adapter", "merged"]
    adapter, merged = result.serving
    for served in result.serving:
        assert served.requests == 3
        assert 0 < served.latency_p50_s <= served.latency_p95_s
        assert served.completion_tokens_per_s > 0
    assert adapter.triton_model.startswith("eval_") and "/eval-" in adapter.triton_model
    assert merged.triton_model.startswith("eval_merged_")
    proto = reports.report_proto(row)
    assert [(s.mode, s.requests) for s in proto.serving] == [("adapter", 3), ("merged", 3)]
    assert proto.serving[1].latency_p50_s == pytest.approx(merged.latency_p50_s)
    page = evaluator.store.get_bytes(reports.ref_of(row.html_report)).decode()
    assert "Served through Triton" in page and merged.triton_model in page

    # The merged model answers as the adapter on its base does.
    triton_serving = evaluator._triton_serving()
    folders = evaluator.loader.fetch(model, registry)
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    as_adapter = triton_serving.generator(triton_serving.serve(folders)).generate(prompts, 12, 0)
    as_merged = triton_serving.generator(triton_serving.serve_merged(folders)).generate(
        prompts, 12, 0
    )
    assert [g.text for g in as_merged] == [g.text for g in as_adapter]

    prompted = ModelUnderTest.from_version(registry.versions["prompted:v1"])
    result = result_of(evaluator, evaluator.run(EvaluationRequest(prompted), registry))
    assert [s.mode for s in result.serving] == ["adapter"]
    assert any("cannot be merged" in note for note in result.notes)
