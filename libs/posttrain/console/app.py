"""The console's web application (aiohttp): routes, sign-in, pages and actions.

Every handler reads through Backend with the signed-in person's key. A service's refusal
is shown on the page it was asked from, with the HTTP status that matches it
(PERMISSION_DENIED -> 403, NOT_FOUND -> 404, a bad argument -> 400, ...).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import grpc
import jinja2
from aiohttp import web

from posttrain.console import charts, views
from posttrain.console.backend import Backend, ServiceTargets
from posttrain.console.sessions import SessionBook, SignedIn
from posttrain.v1 import (
    common_pb2,
    evaluation_pb2,
    gateway_pb2,
    intake_pb2,
    registry_pb2,
    training_pb2,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "posttrain_console"
OPEN_PATHS = ("/login", "/static/", "/healthz", "/favicon.ico")

HTTP_STATUS = {
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAVAILABLE: 502,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

STAGES = {"staging": registry_pb2.STAGE_STAGING, "production": registry_pb2.STAGE_PRODUCTION}


@dataclass
class ConsoleConfig:
    targets: ServiceTargets = field(default_factory=ServiceTargets)
    secret: bytes = b""  # signs session cookies and CSRF tokens; >= 16 bytes
    secure_cookies: bool = False  # set when served over HTTPS (directly or behind a proxy)
    rpc_timeout_s: float = 15.0
    tls_ca_file: str | None = None  # gRPC to the services over TLS, trusting this CA
    tls: bool = False
    poll_interval_ms: int = 1000
    session_idle_timeout_s: float = 8 * 3600


@dataclass(frozen=True)
class Refusal:
    """A service's answer to an action, as shown on the page."""

    status: int
    code: str
    message: str


def refusal(error: grpc.RpcError) -> Refusal:
    code = error.code()
    return Refusal(HTTP_STATUS.get(code, 500), code.name, error.details() or code.name)


BACKEND = web.AppKey("backend", Backend)
SESSIONS = web.AppKey("sessions", SessionBook)
CONFIG = web.AppKey("config", ConsoleConfig)
TEMPLATES = web.AppKey("templates", jinja2.Environment)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        q=lambda s: quote(str(s), safe=""),
        when=views.when,
        num=views.number,
        approval=views.approval_state,
        jobstate=views.job_state,
        verdict=views.verdict,
        stage=views.stage_name,
        kind=lambda v: views.enum_name(common_pb2.ModelKind, v, "MODEL_KIND_"),
        method=lambda v: views.enum_name(common_pb2.TuningMethod, v, "TUNING_METHOD_"),
        deployment=lambda v: views.enum_name(gateway_pb2.DeploymentState, v, "DEPLOYMENT_STATE_"),
        pct=lambda x: "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%",
    )
    return env


# ------------------------------------------------------------------ plumbing


def me(request: web.Request) -> SignedIn:
    return request["me"]


async def rpc(request: web.Request, service: str, method: str, message: Any) -> Any:
    return await request.app[BACKEND].call(me(request).api_key, service, method, message)


def render(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    error: Refusal | None = None,
    **context: Any,
) -> web.Response:
    signed_in = request.get("me")
    env = request.app[TEMPLATES]
    may = {a: bool(signed_in and signed_in.may(*r)) for a, r in views.ACTION_ROLES.items()}
    body = env.get_template(template).render(
        me=signed_in,
        may=may,
        csrf=request.app[SESSIONS].csrf_token(signed_in) if signed_in else "",
        error=error,
        flash=request.query.get("done", ""),
        path=request.path,
        poll_ms=request.app[CONFIG].poll_interval_ms,
        **context,
    )
    return web.Response(text=body, status=status, content_type="text/html")


def done(location: str, message: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"{location}?{urlencode({'done': message})}")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    if request.path.startswith(OPEN_PATHS):
        return await handler(request)
    sessions = request.app[SESSIONS]
    signed_in = sessions.resolve(request.cookies.get(COOKIE))
    if signed_in is None:
        if request.method == "GET":
            raise web.HTTPSeeOther(f"/login?{urlencode({'next': request.path_qs})}")
        raise web.HTTPUnauthorized(text="sign in first")
    request["me"] = signed_in
    if request.method == "POST":
        form = await request.post()
        if not sessions.csrf_ok(signed_in, form.get("csrf")):
            raise web.HTTPForbidden(
                text="the form's CSRF token is missing or stale; reload the page"
            )
    try:
        return await handler(request)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:  # key revoked meanwhile
            sessions.end(signed_in.session_id)
            raise web.HTTPSeeOther(
                "/login?" + urlencode({"next": request.path_qs, "why": error.details() or ""})
            ) from None
        return render(request, "error.html", status=refusal(error).status, error=refusal(error))


@web.middleware
async def headers_middleware(request: web.Request, handler):
    response = await handler(request)
    # Pages embed only their own script and style; nothing is loaded from elsewhere.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


# ------------------------------------------------------------------ sign-in


async def login_page(request: web.Request) -> web.Response:
    return render(
        request,
        "login.html",
        next=request.query.get("next", "/"),
        why=request.query.get("why", ""),
    )


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    key = str(form.get("api_key", "")).strip()
    target = str(form.get("next", "/"))
    if not target.startswith("/") or target.startswith("//"):  # no open redirect
        target = "/"
    if not key:
        return render(request, "login.html", status=400, next=target, why="paste your API key")
    backend = request.app[BACKEND]
    try:
        principal = await backend.call(key, "registry", "WhoAmI", registry_pb2.WhoAmIRequest())
    except grpc.RpcError as error:
        why = (
            "the services do not accept this key (unknown, revoked or malformed)"
            if error.code() == grpc.StatusCode.UNAUTHENTICATED
            else f"could not check the key: {error.code().name}: {error.details()}"
        )
        return render(request, "login.html", status=refusal(error).status, next=target, why=why)
    _, cookie = request.app[SESSIONS].start(key, principal)
    log.info("console sign-in: %s (%s)", principal.name, ", ".join(principal.roles))
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        cookie,
        httponly=True,
        samesite="Strict",
        secure=request.app[CONFIG].secure_cookies,
        path="/",
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].end(me(request).session_id)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def no_favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/datasets")


# ------------------------------------------------------------------ datasets


async def datasets_page(request: web.Request) -> web.Response:
    page = common_pb2.PageRequest(page_size=200)
    answer = await rpc(request, "intake", "ListDatasets", intake_pb2.ListDatasetsRequest(page=page))
    return render(request, "datasets.html", datasets=answer.datasets)


async def dataset_page(request: web.Request) -> web.Response:
    name = request.match_info["dataset"]
    dataset = await rpc(request, "intake", "GetDataset", intake_pb2.GetDatasetRequest(dataset=name))
    versions = await rpc(
        request,
        "intake",
        "ListVersions",
        intake_pb2.ListVersionsRequest(dataset=name, page=common_pb2.PageRequest(page_size=200)),
    )
    return render(request, "dataset.html", dataset=dataset, versions=versions.versions)


async def version_page(
    request: web.Request, *, error: Refusal | None = None, status: int = 200
) -> web.Response:
    name, version_id = request.match_info["dataset"], request.match_info["version"]
    version = await rpc(
        request,
        "intake",
        "GetVersion",
        intake_pb2.GetVersionRequest(dataset=name, version=version_id),
    )
    report = await rpc(
        request,
        "intake",
        "GetValidationReport",
        intake_pb2.GetValidationReportRequest(dataset=name, version=version_id),
    )
    signed_in = me(request)
    eyes = views.four_eyes(version, signed_in.name, signed_in.may("approver"))
    return render(
        request,
        "version.html",
        status=status,
        error=error,
        version=version,
        report=report,
        eyes=eyes,
    )


async def review_dataset(request: web.Request) -> web.Response:
    action = request.match_info["action"]  # approve | reject
    name, version_id = request.match_info["dataset"], request.match_info["version"]
    form = await request.post()
    method = {"approve": "ApproveDataset", "reject": "RejectDataset"}.get(action)
    if method is None:
        raise web.HTTPNotFound()
    try:
        await rpc(
            request,
            "intake",
            method,
            intake_pb2.ReviewDatasetRequest(
                dataset=name, version=version_id, reason=str(form.get("reason", ""))
            ),
        )
    except grpc.RpcError as error:
        return await version_page(request, error=refusal(error), status=refusal(error).status)
    raise done(request.path.rsplit("/", 1)[0], f"{action}d {name} {version_id[:12]}")


# ------------------------------------------------------------------ training jobs


async def jobs_page(request: web.Request) -> web.Response:
    answer = await rpc(
        request,
        "trainer",
        "ListJobs",
        training_pb2.ListJobsRequest(page=common_pb2.PageRequest(page_size=200)),
    )
    return render(request, "jobs.html", jobs=answer.jobs)


async def _job_and_curve(request: web.Request, job_id: str) -> tuple[Any, list]:
    """The job and its loss so far: WatchJob replays every step from the start; the
    replay is read up to the job's current step and then the stream is cancelled."""
    job = await rpc(request, "trainer", "GetJob", training_pb2.GetJobRequest(job_id=job_id))
    backend, key = request.app[BACKEND], me(request).api_key

    def read() -> list:
        call = backend.stream(
            key, "trainer", "WatchJob", training_pb2.GetJobRequest(job_id=job_id), timeout_s=10
        )
        seen = []
        try:
            for progress in call:
                seen.append(progress)
                if progress.step >= job.step or progress.state in views.TERMINAL_JOB_STATES:
                    break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            call.cancel()
        return seen

    return job, views.loss_points(await backend.run(read))


def _job_state(job, points) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": views.job_state(job.state),
        "terminal": job.state in views.TERMINAL_JOB_STATES,
        "step": job.step,
        "total_steps": job.total_steps,
        "loss": views.number(job.last_loss) if job.last_loss else "–",
        "error": job.error,
        "chart": charts.loss_curve(points, job.total_steps),
    }


async def job_page(
    request: web.Request, *, error: Refusal | None = None, status: int = 200
) -> web.Response:
    job, points = await _job_and_curve(request, request.match_info["job_id"])
    return render(
        request, "job.html", status=status, error=error, job=job, live=_job_state(job, points)
    )


async def job_progress(request: web.Request) -> web.Response:
    job, points = await _job_and_curve(request, request.match_info["job_id"])
    return web.json_response(_job_state(job, points))


async def cancel_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    form = await request.post()
    try:
        await rpc(
            request,
            "trainer",
            "CancelJob",
            training_pb2.CancelJobRequest(job_id=job_id, reason=str(form.get("reason", ""))),
        )
    except grpc.RpcError as error:
        return await job_page(request, error=refusal(error), status=refusal(error).status)
    raise done(f"/jobs/{quote(job_id)}", "cancel requested")


# ------------------------------------------------------------------ models


async def _aliases(request: web.Request, **filters: str) -> list:
    answer = await rpc(
        request,
        "registry",
        "ListAliases",
        registry_pb2.ListAliasesRequest(page=common_pb2.PageRequest(page_size=500), **filters),
    )
    return list(answer.aliases)


async def models_page(
    request: web.Request, *, error: Refusal | None = None, status: int = 200
) -> web.Response:
    answer = await rpc(
        request,
        "registry",
        "ListModelVersions",
        registry_pb2.ListModelVersionsRequest(page=common_pb2.PageRequest(page_size=500)),
    )
    return render(
        request,
        "models.html",
        status=status,
        error=error,
        versions=answer.versions,
        aliases=await _aliases(request),
    )


async def model_page(
    request: web.Request,
    *,
    error: Refusal | None = None,
    status: int = 200,
    version_id: str = "",
) -> web.Response:
    version_id = version_id or request.match_info["version_id"]
    version = await rpc(
        request, "registry", "GetModelVersion", registry_pb2.GetModelVersionRequest(id=version_id)
    )
    node = f"model_version:{version.id}"
    graph = await rpc(
        request,
        "registry",
        "GetLineage",
        registry_pb2.GetLineageRequest(
            node_id=node, direction=registry_pb2.GetLineageRequest.BOTH, max_depth=4
        ),
    )
    reports = await rpc(
        request,
        "evaluator",
        "ListReports",
        evaluation_pb2.ListReportsRequest(
            model_version_id=version.id, page=common_pb2.PageRequest(page_size=50)
        ),
    )
    aliases = await _aliases(request)
    return render(
        request,
        "model.html",
        status=status,
        error=error,
        version=version,
        lineage=charts.lineage_graph(graph, focus=node),
        reports=reports.reports,
        aliases=aliases,
        pointing_here=[a for a in aliases if a.model_version_id == version.id],
        use_cases=sorted({a.use_case for a in aliases}),
    )


async def promote(request: web.Request) -> web.Response:
    version_id = request.match_info["version_id"]
    form = await request.post()
    stage = str(form.get("stage", "staging"))
    try:
        if stage not in STAGES:
            bad = Refusal(400, "INVALID_ARGUMENT", f"stage: must be one of {', '.join(STAGES)}")
            return await model_page(request, error=bad, status=400)
        alias = await rpc(
            request,
            "registry",
            "Promote",
            registry_pb2.PromoteRequest(
                model_version_id=version_id,
                use_case=str(form.get("use_case", "")).strip(),
                stage=STAGES[stage],
                override_gate=form.get("override_gate") == "on",
                reason=str(form.get("reason", "")),
            ),
        )
    except grpc.RpcError as error:
        return await model_page(request, error=refusal(error), status=refusal(error).status)
    raise done(
        f"/models/{quote(version_id)}",
        f"promoted to {alias.use_case}/{views.stage_name(alias.stage)}",
    )


async def rollback(request: web.Request) -> web.Response:
    form = await request.post()
    back = str(form.get("back", "/models"))
    back = back if back.startswith("/models") else "/models"
    stage = str(form.get("stage", ""))
    try:
        alias = await rpc(
            request,
            "registry",
            "Rollback",
            registry_pb2.RollbackRequest(
                use_case=str(form.get("use_case", "")),
                stage=STAGES.get(stage, registry_pb2.STAGE_UNSPECIFIED),
                reason=str(form.get("reason", "")),
            ),
        )
    except grpc.RpcError as error:
        if back.startswith("/models/"):
            return await model_page(
                request,
                error=refusal(error),
                status=refusal(error).status,
                version_id=unquote(back.removeprefix("/models/")),
            )
        return await models_page(request, error=refusal(error), status=refusal(error).status)
    raise done(back, f"rolled back {alias.use_case}/{stage} to {alias.model_version_id}")


# ------------------------------------------------------------------ evaluations


async def evaluations_page(request: web.Request) -> web.Response:
    answer = await rpc(
        request,
        "evaluator",
        "ListReports",
        evaluation_pb2.ListReportsRequest(page=common_pb2.PageRequest(page_size=200)),
    )
    return render(request, "evaluations.html", reports=answer.reports)


async def evaluation_page(request: web.Request) -> web.Response:
    report = await rpc(
        request,
        "evaluator",
        "GetReport",
        evaluation_pb2.GetReportRequest(id=request.match_info["report_id"]),
    )
    whole, by_tag = views.metric_rows(report)
    calibration, calibration_error = None, None
    try:
        calibration = await rpc(
            request,
            "evaluator",
            "GetJudgeCalibration",
            evaluation_pb2.GetJudgeCalibrationRequest(
                suite=report.suite, suite_version=report.suite_version
            ),
        )
    except grpc.RpcError as error:  # e.g. no judge configured: the rest of the page stands
        calibration_error = refusal(error)
    return render(
        request,
        "evaluation.html",
        report=report,
        whole=whole,
        by_tag=by_tag,
        calibration=calibration,
        calibration_error=calibration_error,
        agreement=(
            charts.agreement_matrix(calibration.judge_scores, calibration.human_scores)
            if calibration is not None
            else ""
        ),
    )


# ------------------------------------------------------------------ human review


async def review_page(
    request: web.Request, *, error: Refusal | None = None, status: int = 200
) -> web.Response:
    answer = await rpc(
        request,
        "evaluator",
        "ListReviewItems",
        evaluation_pb2.ListReviewItemsRequest(
            unlabelled_only=True, page=common_pb2.PageRequest(page_size=50)
        ),
    )
    items = list(answer.items)
    return render(
        request,
        "review.html",
        status=status,
        error=error,
        item=items[0] if items else None,
        waiting=answer.page.total or len(items),
        scores=views.SCORE_LABELS,
    )


async def label_item(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        score = float(str(form.get("score") or 0))
    except ValueError:
        score = math.nan  # the service names the field in its refusal
    try:
        await rpc(
            request,
            "evaluator",
            "SubmitReviewLabel",
            evaluation_pb2.SubmitReviewLabelRequest(
                item_id=request.match_info["item_id"],
                label=str(form.get("label", "")),
                score=score,
                comment=str(form.get("comment", "")),
            ),
        )
    except grpc.RpcError as error:
        return await review_page(request, error=refusal(error), status=refusal(error).status)
    raise done("/review", "label saved")


# ------------------------------------------------------------------ serving


async def deployments_page(request: web.Request) -> web.Response:
    deployments = await rpc(
        request,
        "gateway",
        "ListDeployments",
        gateway_pb2.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=200)),
    )
    experiments = await rpc(
        request,
        "gateway",
        "ListExperiments",
        gateway_pb2.ListExperimentsRequest(page=common_pb2.PageRequest(page_size=200)),
    )
    return render(
        request,
        "deployments.html",
        deployments=deployments.deployments,
        experiments=experiments.experiments,
    )


async def experiment_page(
    request: web.Request, *, error: Refusal | None = None, status: int = 200
) -> web.Response:
    report = await rpc(
        request,
        "gateway",
        "GetExperimentReport",
        gateway_pb2.GetExperimentReportRequest(id=request.match_info["experiment_id"]),
    )
    success = charts.intervals(
        [(v.variant, v.success_rate, v.success_ci_low, v.success_ci_high) for v in report.variants]
    )
    incidents = charts.intervals(
        [
            (v.variant, v.policy_incident_rate, v.policy_incident_ci_low, v.policy_incident_ci_high)
            for v in report.variants
        ]
    )
    return render(
        request,
        "experiment.html",
        status=status,
        error=error,
        report=report,
        success_chart=success,
        incident_chart=incidents,
    )


async def stop_experiment(request: web.Request) -> web.Response:
    experiment_id = request.match_info["experiment_id"]
    try:
        await rpc(
            request,
            "gateway",
            "StopExperiment",
            gateway_pb2.StopExperimentRequest(id=experiment_id),
        )
    except grpc.RpcError as error:
        return await experiment_page(request, error=refusal(error), status=refusal(error).status)
    raise done(f"/experiments/{quote(experiment_id)}", "experiment stopped")


# ------------------------------------------------------------------ the application


def create_app(config: ConsoleConfig, backend: Backend | None = None) -> web.Application:
    """The console; `backend` defaults to channels to config.targets (closed on cleanup)."""
    app = web.Application(middlewares=[headers_middleware, auth_middleware])
    own_backend = backend is None
    app[BACKEND] = backend or Backend(
        config.targets,
        timeout_s=config.rpc_timeout_s,
        tls_ca_file=config.tls_ca_file,
        tls=config.tls,
    )
    app[SESSIONS] = SessionBook(config.secret, idle_timeout_s=config.session_idle_timeout_s)
    app[CONFIG] = config
    app[TEMPLATES] = _templates()

    async def close_backend(app: web.Application) -> None:
        if own_backend:
            app[BACKEND].close()

    app.on_cleanup.append(close_backend)
    app.router.add_static("/static/", HERE / "static")
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/favicon.ico", no_favicon)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", home)
    app.router.add_get("/datasets", datasets_page)
    app.router.add_get("/datasets/{dataset}", dataset_page)
    app.router.add_get("/datasets/{dataset}/versions/{version}", version_page)
    app.router.add_post("/datasets/{dataset}/versions/{version}/{action}", review_dataset)
    app.router.add_get("/jobs", jobs_page)
    app.router.add_get("/jobs/{job_id}", job_page)
    app.router.add_get("/jobs/{job_id}/progress", job_progress)
    app.router.add_post("/jobs/{job_id}/cancel", cancel_job)
    app.router.add_get("/models", models_page)
    app.router.add_post("/models/rollback", rollback)
    app.router.add_get("/models/{version_id}", model_page)
    app.router.add_post("/models/{version_id}/promote", promote)
    app.router.add_get("/evaluations", evaluations_page)
    app.router.add_get("/evaluations/{report_id}", evaluation_page)
    app.router.add_get("/review", review_page)
    app.router.add_post("/review/{item_id}", label_item)
    app.router.add_get("/deployments", deployments_page)
    app.router.add_get("/experiments/{experiment_id}", experiment_page)
    app.router.add_post("/experiments/{experiment_id}/stop", stop_experiment)
    return app
