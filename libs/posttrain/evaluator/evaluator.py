"""Evaluator: one model version on one suite version with one seed -> a stored report.

`evaluate` does the slow part with no database transaction open (a consumer's or an
RPC's transaction only begins in `record`, for a few inserts):
  1. resolve the suite (default: the configured one, its latest stored version), cut
     it to max_cases_per_tag if configured;
  2. return the report already there for (model version, suite version, seed), if any;
  3. build the judge and its calibration on the tenant's anchor set (cached per judge,
     anchor set, rubric and policy);
  4. find the production version of the same use case (the registry's aliases) and its
     latest report on this suite version; when it has none, evaluate it first as a
     baseline (recorded as a report of its own) so the regression rules can apply;
     a base model ("base:<name>", ModelUnderTest.from_base) is compared with nothing;
  5. load the model (ModelLoader) and run_suite with LocalHFGenerator, or, when it can't
     be loaded, make a FAIL report that says why;
  6. store report.json + report.html as evaluations/<tenant>/<model_version_id>/<id>.
`record` then writes the row, the review sample and evaluation.completed in the
caller's transaction (reports.record). One evaluation runs at a time per process: they
are CPU/GPU-bound, and two at once only slow each other down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from posttrain.db import session_scope, utcnow
from posttrain.evaluation import (
    Calibration,
    CalibrationPolicy,
    EvaluationResult,
    Judge,
    JudgeConfig,
    LocalHFGenerator,
    Prices,
    Provenance,
    ServingLatency,
    Suite,
    anchor_set_version,
    build_judge,
    calibrate_judge,
    run_suite,
)
from posttrain.evaluation.gate import FAIL, GateResult
from posttrain.evaluation.generation import Generator
from posttrain.evaluation.metrics.perplexity import TokenScorer
from posttrain.evaluation.report_html import render_html
from posttrain.evaluation.results import report_id_for
from posttrain.evaluator import reports, review
from posttrain.evaluator.models import (
    LoadedModel,
    ModelLoader,
    ModelUnderTest,
    ModelUnloadable,
    Registry,
)
from posttrain.evaluator.reports import (
    TRIGGER_BASELINE,
    TRIGGER_RPC,
    Emit,
    PublishedReport,
    outbox_emitter,
)
from posttrain.evaluator.serving import TritonOptions, TritonServing
from posttrain.evaluator.suites import StoredSuite, SuiteCatalog, limit_cases_per_tag
from posttrain.evaluator.tables import CalibrationRow, ReportRow
from posttrain.rpc.errors import NotFound
from posttrain.storage import ArtifactExists, ArtifactRef, ArtifactStore
from posttrain.v1 import registry_pb2

log = logging.getLogger(__name__)

GENERATOR = "local-hf"
GENERATORS = {"local": GENERATOR, "triton": "triton"}  # setting -> the report's generator


@dataclass(frozen=True)
class EvaluatorConfig:
    """How evaluations run; the service fills it from its settings."""

    suite: str = "support"  # the suite a model.registered is evaluated on
    suite_version: str = ""  # "" = its latest stored version
    seed: int = 0
    max_cases_per_tag: int = 0  # 0 = every case
    prices: Prices | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    calibration: CalibrationPolicy = field(default_factory=CalibrationPolicy)
    review_sample_size: int = 5
    evaluate_production_baseline: bool = True
    batch_size: int = 8
    max_seq_len: int = 4096
    generator: str = "local"  # local (in-process transformers) | triton (served; see serving.py)
    triton: TritonOptions = field(default_factory=TritonOptions)
    # > 0: also time the candidate served through Triton as an adapter and merged, on this
    # many of the suite's prompts (serving.py); 0 = off.
    serving_probe_requests: int = 0
    serving_probe_max_new_tokens: int = 0  # per probe request; 0 = the suite's


@dataclass(frozen=True)
class EvaluationRequest:
    model: ModelUnderTest
    suite: str = ""  # "" = the configured suite (and its configured version)
    suite_version: str = ""
    seed: int | None = None  # None = the configured seed
    use_case: str = ""  # "" = the use case whose production serves this model name
    trigger: str = TRIGGER_RPC
    requested_by: str = ""


@dataclass(frozen=True)
class Outcome:
    """What evaluate found or made: a report already recorded, or a new one to record."""

    existing: ReportRow | None = None
    published: PublishedReport | None = None


@dataclass(frozen=True)
class _Runtime:
    """What generates the outputs of one evaluation."""

    generator: Generator
    adapter: str  # the adapter's artifact sha256 ("" when none)
    score_tokens: TokenScorer | None = None  # None: the generator's own, if it has one
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Production:
    model_version_id: str = ""
    result: EvaluationResult | None = None
    notes: tuple[str, ...] = ()


class Evaluator:
    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        suites: SuiteCatalog,
        loader: ModelLoader,
        config: EvaluatorConfig,
        *,
        code_version: str = "",
    ) -> None:
        self.engine = engine
        self.store = store
        self.suites = suites
        self.loader = loader
        self.config = config
        if not code_version:
            from posttrain.training.report import code_version as git_code_version

            code_version = git_code_version()
        self.code_version = code_version
        if config.generator not in GENERATORS:
            raise ValueError(f"generator {config.generator!r}: use one of {sorted(GENERATORS)}")
        self._triton: TritonServing | None = None
        self._lock = threading.Lock()
        self._model_judge: Judge | None = None

    # ------------------------------------------------------------------ public

    def resolve_suite(self, name: str = "", version: str = "") -> tuple[StoredSuite, Suite, str]:
        """(stored suite, the suite to run (cut to max_cases_per_tag), the cut's note)."""
        if not name:
            name, version = self.config.suite, version or self.config.suite_version
        stored = self.suites.resolve(name, version)
        suite, note = limit_cases_per_tag(stored.suite, self.config.max_cases_per_tag)
        return stored, suite, note

    def evaluate(self, request: EvaluationRequest, registry: Registry) -> Outcome:
        stored, suite, cut_note = self.resolve_suite(request.suite, request.suite_version)
        seed = self.config.seed if request.seed is None else request.seed
        model = request.model
        if (existing := self._existing(model, suite.version, seed)) is not None:
            return Outcome(existing=existing)
        with self._lock:
            if (existing := self._existing(model, suite.version, seed)) is not None:
                return Outcome(existing=existing)
            judge = self.judge(registry)
            calibration = self.calibration(model.tenant, suite, judge)
            production = self._production(
                request, suite, stored, seed, judge, calibration, registry
            )
            notes = [n for n in (cut_note, *production.notes) if n]
            published = self._evaluate_model(
                model,
                suite,
                stored,
                seed,
                judge,
                calibration,
                registry,
                production=production,
                notes=notes,
                trigger=request.trigger,
                requested_by=request.requested_by,
            )
        return Outcome(published=published)

    def record(self, session: Session, emit: Emit, outcome: Outcome) -> tuple[ReportRow, bool]:
        """Write what evaluate made in the caller's transaction; (row, created)."""
        if outcome.existing is not None:
            return outcome.existing, False
        assert outcome.published is not None
        return reports.record(
            session, emit, outcome.published, review_sample_size=self.config.review_sample_size
        )

    def run(
        self, request: EvaluationRequest, registry: Registry, *, correlation_id: str = ""
    ) -> ReportRow:
        """evaluate + record in a transaction of its own (RunEvaluation)."""
        outcome = self.evaluate(request, registry)
        if outcome.existing is not None:
            return outcome.existing
        assert outcome.published is not None
        return self._record_own(outcome.published, correlation_id=correlation_id)

    def judge(self, registry: Registry) -> Judge:
        """The configured judge. A registered model as judge is loaded once."""
        config = self.config.judge
        if config.kind != "model":
            return build_judge(config)
        if self._model_judge is None:
            version = registry.get_model_version(config.model)
            loaded = self.loader.load(ModelUnderTest.from_version(version), registry)
            self._model_judge = build_judge(config, generator=self._local_generator(loaded))
        return self._model_judge

    def calibration(self, tenant: str, suite: Suite, judge: Judge) -> Calibration | None:
        """The judge on the tenant's anchor set of the suite; None with no anchors."""
        with Session(self.engine) as session:
            anchors = review.anchor_set(session, tenant, suite)
        if not anchors:
            return None
        version = anchor_set_version(anchors)
        context = hashlib.sha256(
            json.dumps(
                [suite.rubric, dataclasses.asdict(self.config.calibration)], sort_keys=True
            ).encode()
        ).hexdigest()
        key = dict(
            judge_id=judge.id,
            judge_version=judge.version,
            anchor_set_version=version,
            context_sha256=context,
        )
        with Session(self.engine) as session:
            cached = session.scalar(sa.select(CalibrationRow.calibration).filter_by(**key))
        if cached is not None:
            return Calibration.from_json(cached)
        calibration = calibrate_judge(judge, anchors, self.config.calibration, rubric=suite.rubric)
        try:
            with session_scope(self.engine) as session:
                session.add(
                    CalibrationRow(**key, calibration=calibration.to_json(), created_at=utcnow())
                )
        except IntegrityError:
            pass  # computed concurrently: the same numbers
        return calibration

    # ------------------------------------------------------------------ steps

    def _existing(self, model: ModelUnderTest, suite_version: str, seed: int) -> ReportRow | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return reports.find(session, model.tenant, model.id, suite_version, seed)

    def _production(
        self,
        request: EvaluationRequest,
        suite: Suite,
        stored: StoredSuite,
        seed: int,
        judge: Judge,
        calibration: Calibration | None,
        registry: Registry,
    ) -> _Production:
        if request.trigger == TRIGGER_BASELINE:
            return _Production()
        model = request.model
        if model.is_base:
            return _Production(
                notes=(
                    f"regression not checked: {model.id} is a base model, not a release "
                    "candidate (read it side by side with the tuned versions' reports)",
                )
            )
        alias, why = self._production_alias(model, request.use_case, registry)
        if alias is None:
            return _Production(notes=(f"regression not checked: {why}",))
        prod_id, use_case = alias.model_version_id, alias.use_case
        with Session(self.engine, expire_on_commit=False) as session:
            row = reports.latest_for(session, prod_id, suite.version)
        if row is None:
            if not self.config.evaluate_production_baseline:
                return _Production(
                    prod_id,
                    notes=(
                        f"regression not checked: production version {prod_id} of use case "
                        f"{use_case!r} has no report on suite version {suite.version[:12]} "
                        "(evaluate_production_baseline is off)",
                    ),
                )
            try:
                version = registry.get_model_version(prod_id)
            except NotFound:
                return _Production(
                    prod_id,
                    notes=(f"regression not checked: production version {prod_id} not found",),
                )
            log.info("evaluating production %s as the baseline for %s", prod_id, model.id)
            published = self._evaluate_model(
                ModelUnderTest.from_version(version),
                suite,
                stored,
                seed,
                judge,
                calibration,
                registry,
                production=_Production(),
                notes=[
                    f"baseline: production version of use case {use_case!r}, evaluated to "
                    f"compare {model.id} with"
                ],
                trigger=TRIGGER_BASELINE,
                requested_by=f"evaluator (baseline for {model.id})",
            )
            row = self._record_own(published)
        if not row.loaded:
            return _Production(
                prod_id,
                notes=(
                    f"regression not checked: production version {prod_id}'s report {row.id} "
                    "has no outputs (its model could not be loaded)",
                ),
            )
        data = self.store.get_bytes(reports.ref_of(row.json_report))
        return _Production(
            prod_id,
            EvaluationResult.from_json(data),
            (
                f"compared with production version {prod_id} of use case {use_case!r} (report {row.id})",
            ),
        )

    def _production_alias(
        self, model: ModelUnderTest, use_case: str, registry: Registry
    ) -> tuple[registry_pb2.Alias | None, str]:
        """The production alias to compare with: of `use_case` when given, else the one
        serving a version of the same model name (the first use case by name)."""
        production = [
            a
            for a in registry.list_aliases(model.tenant)
            if a.stage == registry_pb2.STAGE_PRODUCTION and a.model_version_id
        ]
        if use_case:
            found = [a for a in production if a.use_case == use_case]
            why = f"use case {use_case!r} has no production version"
        else:
            found = [a for a in production if a.model_version_id.rpartition(":v")[0] == model.name]
            why = (
                f"no production alias of tenant {model.tenant!r} serves a version of {model.name!r}"
            )
        if not found:
            return None, why
        alias = min(found, key=lambda a: a.use_case)
        if alias.model_version_id == model.id:
            return None, f"{model.id} is the production version of use case {alias.use_case!r}"
        return alias, ""

    def _evaluate_model(
        self,
        model: ModelUnderTest,
        suite: Suite,
        stored: StoredSuite,
        seed: int,
        judge: Judge,
        calibration: Calibration | None,
        registry: Registry,
        *,
        production: _Production,
        notes: Sequence[str],
        trigger: str,
        requested_by: str,
    ) -> PublishedReport:
        provenance = Provenance(
            model_version_id=model.id,
            tenant=model.tenant,
            prompt_template_revision=model.chat_template_revision,
            code_version=self.code_version,
            generator=GENERATORS[self.config.generator],
        )
        runtime = None
        try:
            runtime = self._runtime(model, suite, registry)
        except ModelUnloadable as exc:
            reason = f"model could not be loaded: {exc}"
            log.error("%s: %s (a FAIL report records it)", model.id, reason)
            result = self._unloadable(suite, seed, provenance, reason)
        else:
            result = run_suite(
                suite,
                runtime.generator,
                seed=seed,
                judge=judge,
                calibration=calibration,
                production_results=production.result,
                prices=self.config.prices,
                score_tokens=runtime.score_tokens,
                provenance=replace(provenance, adapter=runtime.adapter),
            )
            notes = [*notes, *runtime.notes]
        result = replace(result, notes=[*notes, *result.notes])
        if runtime is not None and self.config.serving_probe_requests > 0:
            serving, probe_notes = self._probe_serving(model, suite, seed, registry)
            result = replace(result, serving=serving, notes=[*result.notes, *probe_notes])
        was_loaded = runtime is not None
        del runtime  # the weights can go before the next evaluation loads its own
        artifact, json_ref, html_ref = self._publish(model.tenant, result)
        return PublishedReport(
            result=result,
            tenant=model.tenant,
            suite_base_version=stored.row.version,
            artifact=artifact,
            json_report=json_ref,
            html_report=html_ref,
            loaded=was_loaded,
            production_model_version_id=production.model_version_id
            if production.result is not None
            else "",
            trigger=trigger,
            requested_by=requested_by,
        )

    def _runtime(self, model: ModelUnderTest, suite: Suite, registry: Registry) -> _Runtime:
        """The generator of an evaluation; ModelUnloadable when the model can't be had."""
        if self.config.generator == "local":
            loaded = self.loader.load(model, registry)
            return _Runtime(self._local_generator(loaded), loaded.adapter)
        folders = self.loader.fetch(model, registry)
        served = self._triton_serving().serve(folders)
        scorer, notes = None, []
        if "perplexity" in suite.run_metrics:  # Triton serves text, not token scores
            try:
                scorer = self._local_generator(self.loader.load(model, registry)).score_tokens
            except ModelUnloadable as exc:
                notes.append(f"perplexity not measured: no local copy to score tokens: {exc}")
        generator = self._triton_serving().generator(served)
        return _Runtime(generator, folders.adapter, scorer, tuple(notes))

    def _triton_serving(self) -> TritonServing:
        if self._triton is None:
            self._triton = TritonServing(self.config.triton, self.loader.cache_dir)
        return self._triton

    def _probe_serving(
        self, model: ModelUnderTest, suite: Suite, seed: int, registry: Registry
    ) -> tuple[list[ServingLatency], list[str]]:
        """The candidate timed through Triton as each deployment it allows. A probe that
        can't run leaves a note: it never fails the evaluation."""
        prompts = [case.messages for case in suite.cases[: self.config.serving_probe_requests]]
        max_new = self.config.serving_probe_max_new_tokens or suite.max_new_tokens
        measured: list[ServingLatency] = []
        try:
            folders = self.loader.fetch(model, registry)
            triton = self._triton_serving()
            if folders.base_weights is not None:
                served = triton.serve(folders)
                measured.append(triton.probe(served, "adapter", prompts, max_new, seed))
            merged = triton.serve_merged(folders)
            if merged is None:
                return measured, ["merged serving not measured: this adapter adds virtual "
                                  "tokens (prompt/prefix tuning) and cannot be merged"]  # fmt: skip
            measured.append(triton.probe(merged, "merged", prompts, max_new, seed))
        except Exception as exc:  # noqa: BLE001 - the probe is extra: note it, keep the report
            log.warning("serving probe of %s failed", model.id, exc_info=True)
            return measured, [f"serving latency not measured: {type(exc).__name__}: {exc}"]
        return measured, []

    def _local_generator(self, loaded: LoadedModel) -> LocalHFGenerator:
        return LocalHFGenerator(
            loaded.model,
            loaded.tokenizer,
            batch_size=self.config.batch_size,
            max_seq_len=self.config.max_seq_len,
        )

    def _unloadable(
        self, suite: Suite, seed: int, provenance: Provenance, reason: str
    ) -> EvaluationResult:
        policy = suite.gate_policy
        provenance = replace(
            provenance,
            suite=suite.name,
            suite_version=suite.version,
            gate_policy=f"{policy.name}@{policy.version}" if policy else "",
            seed=seed,
            prices=self.config.prices.to_json() if self.config.prices else None,
        )
        label = f"{policy.name}@{policy.version[:12]}" if policy else ""
        return EvaluationResult(
            report_id=report_id_for(provenance),
            provenance=provenance,
            metrics={},
            case_counts={},
            cases=[],
            gate=GateResult(FAIL, [reason], [], label),
            notes=[reason],
        )

    def _publish(self, tenant: str, result: EvaluationResult) -> tuple[ArtifactRef, ...]:
        """report.json and report.html as one folder artifact; (folder, json, html) refs."""
        p = result.provenance
        name = f"evaluations/{tenant}/{p.model_version_id}/{result.report_id}"
        files = {
            "report.json": result.to_json().encode("utf-8"),
            "report.html": render_html(result).encode("utf-8"),
        }
        metadata = {
            "kind": "evaluation-report",
            "tenant": tenant,
            "model_version_id": p.model_version_id,
            "report_id": result.report_id,
            "verdict": result.verdict,
        }
        try:
            folder = self.store.publish_files(files, name, metadata=metadata)
        except ArtifactExists:
            # An earlier attempt stored this report and died before recording it (the
            # measured latency differs run to run, so the bytes do too). Replace it,
            # unless a recorded report already points at it.
            with Session(self.engine) as session:
                recorded = session.get(ReportRow, result.report_id) is not None
            if recorded:
                folder = self.store.resolve(name)
            else:
                log.warning("replacing unrecorded report artifact %s", name)
                folder = self.store.publish_files(files, name, metadata=metadata, overwrite=True)
        entries = {e.path: e for e in self.store.get_manifest(folder).files}
        json_ref = replace(
            self.store.file_ref(entries["report.json"]), media_type="application/json"
        )
        html_ref = replace(self.store.file_ref(entries["report.html"]), media_type="text/html")
        return folder, json_ref, html_ref

    def _record_own(self, published: PublishedReport, *, correlation_id: str = "") -> ReportRow:
        try:
            with session_scope(self.engine) as session:
                row, _ = reports.record(
                    session,
                    outbox_emitter(session, correlation_id=correlation_id),
                    published,
                    review_sample_size=self.config.review_sample_size,
                )
                return row
        except IntegrityError:  # recorded concurrently (another process, a redelivery)
            p = published.result.provenance
            with Session(self.engine, expire_on_commit=False) as session:
                row = reports.find(
                    session, published.tenant, p.model_version_id, p.suite_version, p.seed
                )
            if row is None:
                raise
            return row
