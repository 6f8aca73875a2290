"""InferenceGateway: what a client app's request goes through, up to Triton and back.

One request: checked (use case, prompt or conversation, sampling; size and max_tokens
limits) -> the tenant's token bucket -> its target: the route of (caller's tenant, use
case), or, while an experiment runs there, the arm the user key is assigned to -> Triton
(with the caller's deadline as client_timeout) -> one inference record in the database
(for feedback and the experiment report) and inference.logged handed to the event sink;
an experiment request may also be queued for the experiment judge (ExperimentGrader).

A tenant reaches only its own routes: the tenant comes from the API key, never from the
request, and a client cannot name a Triton model or an adapter; another tenant's use case
is NOT_FOUND like one that does not exist. Feedback is accepted for the tenant's own
requests only (NOT_FOUND otherwise).

Neither the event sink, the inference record nor the judge can fail or slow down a
request that Triton answered: each is handed over to be written, sent or graded after the
answer (records: InferenceLog), and their failures are logged and counted. Knows nothing
of gRPC servers or Kafka clients.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from posttrain.db import session_scope, utcnow
from posttrain.events import topics
from posttrain.experiments import user_key_hash
from posttrain.gateway import metrics, names
from posttrain.gateway.experiments import ExperimentBook, RunningExperiment, running_experiment
from posttrain.gateway.grading import ExperimentGrader, GradeItem
from posttrain.gateway.limits import RateLimiter
from posttrain.gateway.records import InferenceLog
from posttrain.gateway.routes import Target, find_route
from posttrain.gateway.tables import InferenceRow
from posttrain.gateway.triton import Completion, DeadlineExceeded, Sampling, TritonLLM
from posttrain.rpc.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
)
from posttrain.v1 import events_pb2, gateway_pb2

log = logging.getLogger(__name__)

CHAT_ROLES = ("system", "user", "assistant", "tool")
# (event type, payload, aggregate id): hands an event over for publishing; must not block.
EventSink = Callable[[str, Message, str], None]


@dataclass(frozen=True)
class GatewayLimits:
    """What one request may ask for; every field is a setting of the service."""

    max_request_bytes: int = 64 * 1024  # prompt or conversation, UTF-8
    max_tokens_cap: int = 1024  # max_tokens above this is refused
    default_max_tokens: int = 128  # when a request sends max_tokens 0
    max_stop_strings: int = 8
    max_stop_chars: int = 200
    max_user_key_chars: int = 256
    default_timeout_s: float = 120.0  # when the caller sets no deadline (also the ceiling)
    rate_limit_rps: float = 0.0  # requests per second per tenant; 0 = no limit
    rate_limit_burst: int = 20
    tenant_rate_limits: Mapping[str, float] = field(default_factory=dict)
    cost_per_1k_prompt_tokens: float = 0.0
    cost_per_1k_completion_tokens: float = 0.0
    route_cache_s: float = 1.0  # how stale a route may be on this replica


@dataclass(frozen=True)
class Prepared:
    route: str  # as the route table and experiments name it: "x" or "x/staging"
    use_case: str
    stage: str
    text_input: str
    sampling: Sampling
    user_key: str
    chat: bool = False  # text_input is {"messages": [...]}


@dataclass(frozen=True)
class Assignment:
    """Where one request goes, and why."""

    target: Target
    experiment_id: str = ""
    variant: str = ""


@dataclass
class _Cached:
    expires: float
    target: Target | None
    experiment: RunningExperiment | None


class InferenceGateway:
    def __init__(
        self,
        engine: Engine,
        triton: TritonLLM,
        experiments: ExperimentBook,
        limits: GatewayLimits | None = None,
        *,
        events: EventSink | None = None,
        records: InferenceLog | None = None,
        grader: ExperimentGrader | None = None,
        user_key_secret: bytes = b"",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.triton = triton
        self.experiments = experiments
        self.limits = limits or GatewayLimits()
        self.events = events or (lambda *_: None)
        self.records = records or InferenceLog(engine)
        self.grader = grader  # None: no experiment judge
        self.user_key_secret = user_key_secret
        self._clock = clock
        self._limiter = RateLimiter(
            self.limits.rate_limit_rps,
            self.limits.rate_limit_burst,
            per_tenant=self.limits.tenant_rate_limits,
            clock=clock,
        )
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ routing

    def invalidate(self) -> None:
        """Forget cached routes (a deployment or an experiment changed them)."""
        with self._cache_lock:
            self._cache.clear()

    def _lookup(self, tenant: str, prepared: Prepared) -> _Cached:
        key = (tenant, prepared.route)
        now = self._clock()
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None and hit.expires > now:
            return hit
        with Session(self.engine) as session:
            route = find_route(session, tenant, prepared.use_case, prepared.stage)
            experiment = running_experiment(session, tenant, prepared.route)
            entry = _Cached(
                now + self.limits.route_cache_s,
                Target.of_route(route) if route is not None else None,
                RunningExperiment.of_row(experiment) if experiment is not None else None,
            )
        with self._cache_lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = entry
        return entry

    def assign(self, tenant: str, use_case: str, user_key: str) -> Assignment:
        """Where a request of this tenant and user key on `use_case` goes now (no Triton
        call; also what tests and dry runs use). NOT_FOUND when nothing serves it."""
        if not user_key:
            raise InvalidArgument("user_key", "is required to say where a user's requests go")
        use, stage = names.parse_use_case(use_case)
        prepared = Prepared(names.route_name(use, stage), use, stage, "", Sampling(1), user_key)
        return self._assign(tenant, prepared, user_key)

    def _assign(self, tenant: str, prepared: Prepared, user_key: str) -> Assignment:
        entry = self._lookup(tenant, prepared)
        if entry.experiment is not None and len(entry.experiment.stopped) < len(
            entry.experiment.arms
        ):
            arm = entry.experiment.assign(user_key)
            return Assignment(arm.target, entry.experiment.id, arm.name)
        if entry.target is None:
            raise NotFound("deployment for use case", prepared.route)
        return Assignment(entry.target)

    def _route(self, tenant: str, prepared: Prepared, request_id: str) -> Assignment:
        # Without a user key every request is its own user: assigned at random.
        try:
            return self._assign(tenant, prepared, prepared.user_key or request_id)
        except NotFound:
            metrics.REJECTED.labels(tenant, "no_route").inc()
            raise

    # ------------------------------------------------------------------ checks

    def prepare(self, request: gateway_pb2.GenerateRequest) -> Prepared:
        """The request as Triton will get it; InvalidArgument listing every problem."""
        lim = self.limits
        problems: list[FieldViolation] = []
        use_case, stage = names.parse_use_case(request.use_case)
        which = request.WhichOneof("input")
        text = ""
        if which == "prompt":
            text = request.prompt
            if not text.strip():
                problems.append(FieldViolation("prompt", "must not be empty"))
        elif which == "conversation":
            messages = request.conversation.messages
            if not messages:
                problems.append(FieldViolation("conversation.messages", "must not be empty"))
            for i, m in enumerate(messages):
                if m.role not in CHAT_ROLES:
                    problems.append(
                        FieldViolation(
                            f"conversation.messages[{i}].role",
                            f"{m.role!r} is not one of {', '.join(CHAT_ROLES)}",
                        )
                    )
            text = json.dumps(
                {"messages": [{"role": m.role, "content": m.content} for m in messages]},
                ensure_ascii=False,
            )
        else:
            problems.append(FieldViolation("input", "give a prompt or a conversation"))
        size = len(text.encode())
        if size > lim.max_request_bytes:
            problems.append(
                FieldViolation(
                    which or "input", f"is {size} bytes; the limit is {lim.max_request_bytes}"
                )
            )
        s = request.sampling
        max_tokens = s.max_tokens or min(lim.default_max_tokens, lim.max_tokens_cap)
        if not 0 < max_tokens <= lim.max_tokens_cap:
            problems.append(
                FieldViolation(
                    "sampling.max_tokens", f"must lie in 1..{lim.max_tokens_cap} (0 = default)"
                )
            )
        if not (math.isfinite(s.temperature) and 0.0 <= s.temperature <= 2.0):
            problems.append(
                FieldViolation("sampling.temperature", "must lie in [0, 2]; 0 = greedy")
            )
        if not (math.isfinite(s.top_p) and 0.0 <= s.top_p <= 1.0):
            problems.append(FieldViolation("sampling.top_p", "must lie in (0, 1]; 0 = 1"))
        if s.seed < 0:
            problems.append(FieldViolation("sampling.seed", "must be >= 0 (0 = none)"))
        if len(s.stop) > lim.max_stop_strings:
            problems.append(
                FieldViolation("sampling.stop", f"at most {lim.max_stop_strings} stop strings")
            )
        for i, stop in enumerate(s.stop):
            if not stop or len(stop) > lim.max_stop_chars:
                problems.append(
                    FieldViolation(
                        f"sampling.stop[{i}]", f"must have 1..{lim.max_stop_chars} chars"
                    )
                )
        if len(request.user_key) > lim.max_user_key_chars:
            problems.append(
                FieldViolation("user_key", f"is over {lim.max_user_key_chars} characters")
            )
        if problems:
            raise InvalidArgument(violations=problems)
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=float(s.temperature),
            top_p=float(s.top_p) or 1.0,
            seed=s.seed or None,
            stop=tuple(s.stop),
        )
        route = names.route_name(use_case, stage)
        return Prepared(
            route, use_case, stage, text, sampling, request.user_key, which == "conversation"
        )

    def _admit(self, tenant: str, request: gateway_pb2.GenerateRequest) -> Prepared:
        try:
            prepared = self.prepare(request)
        except InvalidArgument:
            metrics.REJECTED.labels(tenant, "invalid").inc()
            raise
        wait = self._limiter.take(tenant)
        if wait is not None:
            metrics.REJECTED.labels(tenant, "rate_limited").inc()
            raise ResourceExhausted(
                f"tenant {tenant!r} is over its rate limit of "
                f"{self._limiter.rate_of(tenant):g} requests/s; retry in {wait:.2f} s"
            )
        return prepared

    def _timeout(self, remaining_s: float | None) -> float:
        ceiling = self.limits.default_timeout_s
        if remaining_s is None:
            return ceiling
        if remaining_s <= 0:
            raise DeadlineExceeded("the deadline passed before the request reached Triton")
        return min(remaining_s, ceiling)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        tenant: str,
        request: gateway_pb2.GenerateRequest,
        *,
        timeout_s: float | None = None,
    ) -> gateway_pb2.GenerateResponse:
        started = time.perf_counter()
        prepared = self._admit(tenant, request)
        request_id = uuid.uuid4().hex
        assignment = self._route(tenant, prepared, request_id)
        target = assignment.target
        try:
            completion = self.triton.generate(
                target.triton_model,
                prepared.text_input,
                target.lora_name,
                prepared.sampling,
                timeout_s=self._timeout(timeout_s),
            )
        except ServiceError as exc:
            self._count(tenant, prepared, assignment, exc.code.name)
            raise
        latency_ms = (time.perf_counter() - started) * 1000.0
        return self._finish(tenant, prepared, assignment, request_id, completion, latency_ms)

    def generate_stream(
        self,
        tenant: str,
        request: gateway_pb2.GenerateRequest,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[gateway_pb2.GenerateChunk]:
        """Text deltas from the target's decoupled twin, then a final chunk with the
        summary; a target without a twin answers in one chunk."""
        started = time.perf_counter()
        prepared = self._admit(tenant, request)
        request_id = uuid.uuid4().hex
        assignment = self._route(tenant, prepared, request_id)
        target = assignment.target
        timeout = self._timeout(timeout_s)
        try:
            if not target.stream_model:
                completion = self.triton.generate(
                    target.triton_model,
                    prepared.text_input,
                    target.lora_name,
                    prepared.sampling,
                    timeout_s=timeout,
                )
                latency_ms = (time.perf_counter() - started) * 1000.0
                summary = self._finish(
                    tenant, prepared, assignment, request_id, completion, latency_ms
                )
                yield gateway_pb2.GenerateChunk(
                    request_id=request_id, text_delta=completion.text, final=True, summary=summary
                )
                return
            for delta, final in self.triton.stream(
                target.stream_model,
                prepared.text_input,
                target.lora_name,
                prepared.sampling,
                timeout_s=timeout,
            ):
                if final is None:
                    yield gateway_pb2.GenerateChunk(request_id=request_id, text_delta=delta)
                    continue
                latency_ms = (time.perf_counter() - started) * 1000.0
                summary = self._finish(tenant, prepared, assignment, request_id, final, latency_ms)
                yield gateway_pb2.GenerateChunk(request_id=request_id, final=True, summary=summary)
        except ServiceError as exc:
            self._count(tenant, prepared, assignment, exc.code.name)
            raise

    def _count(self, tenant: str, p: Prepared, a: Assignment, code: str) -> None:
        route = metrics.route_label(a.target.triton_model, a.target.lora_name)
        metrics.REQUESTS.labels(tenant, p.route, route, a.variant, code).inc()

    def _finish(
        self,
        tenant: str,
        prepared: Prepared,
        assignment: Assignment,
        request_id: str,
        completion: Completion,
        latency_ms: float,
    ) -> gateway_pb2.GenerateResponse:
        target = assignment.target
        lim = self.limits
        cost = (
            completion.prompt_tokens * lim.cost_per_1k_prompt_tokens
            + completion.completion_tokens * lim.cost_per_1k_completion_tokens
        ) / 1000.0
        key_hash = ""
        if prepared.user_key:
            scope = assignment.experiment_id or f"tenant:{tenant}"
            key_hash = user_key_hash(scope, prepared.user_key, secret=self.user_key_secret)
        self._count(tenant, prepared, assignment, "OK")
        route_label = metrics.route_label(target.triton_model, target.lora_name)
        metrics.LATENCY.labels(prepared.route, route_label).observe(latency_ms / 1000.0)
        metrics.TOKENS.labels(tenant, prepared.route, "prompt").inc(completion.prompt_tokens)
        metrics.TOKENS.labels(tenant, prepared.route, "completion").inc(
            completion.completion_tokens
        )
        self.records.add(
            dict(
                request_id=request_id,
                tenant=tenant,
                use_case=prepared.route,
                deployment_id=target.deployment_id,
                model_version_id=target.model_version_id,
                experiment_id=assignment.experiment_id or None,
                variant=assignment.variant,
                user_key_hash=key_hash,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_ms=latency_ms,
                cost=cost,
                finish_reason=completion.finish_reason[:20],
                created_at=utcnow(),
                success=None,
                policy_incident=None,
                human_intervention=None,
                rating=None,
                feedback_at=None,
                feedback_by="",
                judge_score=None,
                judge_id=None,
                judge_version=None,
            )
        )
        if assignment.experiment_id and self.grader is not None:
            self._offer_for_grading(request_id, prepared, completion.text)
        self._publish(
            topics.INFERENCE_LOGGED,
            events_pb2.InferenceLogged(
                request_id=request_id,
                tenant=tenant,
                deployment_id=target.deployment_id,
                experiment_id=assignment.experiment_id,
                variant=assignment.variant,
                user_key_hash=key_hash,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_ms=latency_ms,
                cost=cost,
            ),
            request_id,
        )
        return gateway_pb2.GenerateResponse(
            request_id=request_id,
            text=completion.text,
            usage=gateway_pb2.Usage(
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
            ),
            latency_ms=latency_ms,
            deployment_id=target.deployment_id,
            variant=assignment.variant,
            experiment_id=assignment.experiment_id,
        )

    def _offer_for_grading(self, request_id: str, prepared: Prepared, answer: str) -> None:
        try:
            self.grader.offer(GradeItem(request_id, prepared.text_input, prepared.chat, answer))
        except Exception:  # noqa: BLE001 - the judge must never fail the request
            log.exception("handing request %s to the experiment judge failed", request_id)

    def _publish(self, event_type: str, payload: Message, aggregate_id: str) -> None:
        try:
            self.events(event_type, payload, aggregate_id)
        except Exception:  # noqa: BLE001 - an event must never fail the request
            log.exception("handing %s %s to the event sink failed", event_type, aggregate_id)

    # ------------------------------------------------------------------ feedback

    def record_feedback(
        self, tenant: str, actor: str, request: gateway_pb2.RecordFeedbackRequest
    ) -> None:
        """Store the feedback on the tenant's own request (a later one replaces it), emit
        feedback.recorded, and run the experiment's guardrail."""
        problems = []
        if not request.request_id:
            problems.append(FieldViolation("request_id", "is required"))
        if not (math.isfinite(request.rating) and request.rating >= 0):
            problems.append(FieldViolation("rating", "must be >= 0 (0 = no rating)"))
        if problems:
            raise InvalidArgument(violations=problems)
        with session_scope(self.engine) as session:
            row = session.get(InferenceRow, request.request_id)
            if row is None:  # served a moment ago and not written yet?
                session.rollback()  # a new transaction: a new snapshot
                if self.records.flush():
                    row = session.get(InferenceRow, request.request_id)
            if row is None or row.tenant != tenant:
                raise NotFound("request", request.request_id)
            row.success = request.success
            row.policy_incident = request.policy_incident
            row.human_intervention = request.human_intervention
            row.rating = request.rating or None
            row.feedback_at = utcnow()
            row.feedback_by = actor[:200]
            experiment_id = row.experiment_id
        metrics.FEEDBACK.labels(tenant).inc()
        self._publish(
            topics.FEEDBACK_RECORDED,
            events_pb2.FeedbackRecorded(
                request_id=request.request_id,
                success=request.success,
                policy_incident=request.policy_incident,
                human_intervention=request.human_intervention,
                rating=request.rating,
                tenant=tenant,
            ),
            request.request_id,
        )
        if experiment_id:
            self.experiments.after_feedback(experiment_id)
