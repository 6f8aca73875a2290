"""The console in a real headless chromium, against the real services: sign in, four-eyes
approval, a job watched to its end, three review labels by keyboard, promotion and
rollback, and a role without the right seeing a disabled button and, when it forces the
request, the service's refusal. The tests run in file order on one module fleet; each
leaves what the next one uses (the approved version, the jobs' model versions).
Screenshots of the main pages are saved (the folder is printed at the end)."""

from __future__ import annotations

import html
import json
import re

import pytest
from console_helpers import DATASET, MODEL_NAME, TENANT, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from posttrain.v1 import (
    common_pb2,
    evaluation_pb2,
    evaluation_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    intake_pb2,
    registry_pb2,
    training_pb2,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

USE_CASE = "console-support"


def error_banner(page: str) -> str:
    """The text of the page's error banner ("" when it has none)."""
    match = re.search(r'<div class="error" role="alert" id="error">(.*?)</div>', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))) if match else ""


def test_sign_in_with_an_api_key(browser, fleet):
    browser.driver.delete_all_cookies()
    browser.open("/datasets")
    assert "/login" in browser.driver.current_url  # no page without a session
    browser.driver.find_element(By.ID, "api_key").send_keys("pt_nosuchkey_" + "x" * 32)
    browser.navigate(browser.driver.find_element(By.ID, "sign-in").click)
    error = browser.wait(lambda d: d.find_elements(By.ID, "error"), "the refusal")[0]
    assert "do not accept this key" in error.text
    browser.screenshot("login-refused")

    browser.sign_in("carol")
    who = browser.text("who")
    assert "carol" in who and "approver, uploader, viewer" in who and TENANT in who
    cookie = browser.driver.get_cookie("posttrain_console")
    assert cookie["httpOnly"] and fleet.keys["carol"] not in cookie["value"]
    assert DATASET in browser.text("datasets")
    browser.screenshot("datasets")


def test_a_version_shows_its_row_errors_and_pii_findings(browser, fleet):
    def chat(user: str, assistant: str) -> bytes:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return json.dumps({"messages": messages}).encode() + b"\n"

    rows = [
        chat("Where is my order?", "ANSWER: it ships today | REF-KB-001"),
        chat("Mail me at jane.doe@example.com", "ANSWER: done | REF-KB-002"),
        b'{"messages": []}\n',  # row 3: no messages
        chat("Reset?", "ANSWER: hold the button | REF-KB-003"),
    ]

    def requests():
        yield intake_pb2.UploadDatasetRequest(
            metadata=intake_pb2.UploadMetadata(
                dataset="console-crm",
                format=intake_pb2.DATA_FORMAT_JSONL,
                schema=intake_pb2.ROW_SCHEMA_CHAT,
                invalid_rows=intake_pb2.INVALID_ROW_POLICY_DROP_INVALID,
            )
        )
        yield intake_pb2.UploadDatasetRequest(chunk=b"".join(rows))

    version = fleet.intake("carol").UploadDataset(requests()).version.version
    browser.sign_in("vera")
    browser.open(f"/datasets/console-crm/versions/{version}")
    errors = browser.driver.find_elements(By.CSS_SELECTOR, "#row-errors tbody tr")
    assert [e.text.split()[0] for e in errors] == ["3"]
    findings = browser.text("pii")
    assert "2" in findings and "email" in findings and "jane.doe@example.com" not in findings
    assert not browser.driver.find_element(By.ID, "do-approve").is_enabled()
    browser.screenshot("dataset-version-errors-and-pii")


def test_the_uploader_may_not_approve_and_a_second_approver_does(browser, fleet):
    version = fleet.dataset_version
    page = f"/datasets/{DATASET}/versions/{version}"
    browser.sign_in("carol")
    browser.open(page)
    assert browser.text("uploaded-by") == "carol"
    four_eyes = browser.text("four-eyes")
    assert "you uploaded this version" in four_eyes
    approve = browser.driver.find_element(By.ID, "do-approve")
    assert not approve.is_enabled()
    # Forced: the service applies its own four-eyes rule and the page says so.
    status, body = browser.post(f"{page}/approve", {"reason": "looks fine to me"})
    assert status == 403 and "four-eyes rule" in error_banner(body)
    browser.driver.execute_script("arguments[0].disabled = false", approve)
    browser.driver.find_element(By.ID, "approve-reason").send_keys("looks fine to me")
    browser.navigate(approve.click)
    error = browser.wait(lambda d: d.find_elements(By.ID, "error"), "the refusal")[0].text
    assert "Permission Denied (403)" in error and "carol uploaded version" in error
    browser.screenshot("dataset-four-eyes-refused")
    assert (
        fleet.intake("carol")
        .GetVersion(intake_pb2.GetVersionRequest(dataset=DATASET, version=version))
        .state
        == common_pb2.APPROVAL_STATE_PENDING
    )

    browser.sign_in("bob")
    browser.open(page)
    assert "you may review it" in browser.text("four-eyes")
    browser.driver.find_element(By.ID, "approve-reason").send_keys("policy rows checked")
    browser.navigate(browser.driver.find_element(By.ID, "do-approve").click)
    browser.wait(lambda d: d.find_elements(By.ID, "flash"), "the approval")
    assert browser.text("state") == "approved" and browser.text("approved-by") == "bob"
    browser.screenshot("dataset-version")
    approved = fleet.intake("bob").GetVersion(
        intake_pb2.GetVersionRequest(dataset=DATASET, version=version)
    )
    assert approved.state == common_pb2.APPROVAL_STATE_APPROVED
    assert (approved.approved_by, approved.review_reason) == ("bob", "policy rows checked")


def test_watch_a_training_job_finish(browser, fleet):
    first = fleet.submit_job(steps=12)
    browser.sign_in("trainer")
    browser.open(f"/jobs/{first}")
    # The page polls: no reload, and the state and curve change in place.
    browser.driver.execute_script("window.__samePage = true")
    browser.wait(
        lambda d: d.find_element(By.ID, "job-state").text == "succeeded", "the job to end", 240
    )
    assert browser.driver.execute_script("return window.__samePage") is True
    assert browser.text("job-steps") == "step 12 / 12"
    points = browser.driver.find_element(By.CSS_SELECTOR, "#loss-chart path.loss")
    assert points.get_attribute("d").count("L") == 11  # one point per step
    assert not browser.driver.find_element(By.ID, "do-cancel_job").is_enabled()
    browser.screenshot("training-job")
    job = fleet.trainer("trainer").GetJob(training_pb2.GetJobRequest(job_id=first))
    assert job.state == training_pb2.JOB_STATE_SUCCEEDED and job.step == 12
    fleet.submit_job(steps=4)  # a second version for promotion and rollback
    browser.open("/jobs")
    assert first[:8] in browser.text("jobs")
    browser.screenshot("training-jobs")


def _versions(fleet, count: int) -> list[registry_pb2.ModelVersion]:
    def listed():
        versions = (
            fleet.registry("ops")
            .ListModelVersions(registry_pb2.ListModelVersionsRequest(name=MODEL_NAME))
            .versions
        )
        return sorted(versions, key=lambda v: v.version) if len(versions) >= count else None

    return wait_for(f"{count} versions of {MODEL_NAME}", listed, 300)


def test_label_three_review_items_by_keyboard(browser, fleet):
    evaluator = evaluation_pb2_grpc.EvaluationServiceStub(fleet.channel("evaluator", "rita"))
    first = _versions(fleet, 1)[0]
    wait_for(
        "the evaluation's review sample",
        lambda: (
            len(
                evaluator.ListReviewItems(
                    evaluation_pb2.ListReviewItemsRequest(unlabelled_only=True)
                ).items
            )
            >= 3
        ),
        600,
        every_s=2,
    )
    browser.sign_in("rita")
    labelled = []
    for score in ("4", "2", "5"):
        browser.open("/review")
        item = browser.driver.find_element(By.ID, "review-item").get_attribute("data-item")
        if not labelled:
            browser.screenshot("review-queue")
        body = browser.driver.find_element(By.TAG_NAME, "body")
        body.send_keys(score)
        body.send_keys("c")  # to the comment box
        browser.driver.switch_to.active_element.send_keys(f"comment {score}")
        browser.navigate(lambda: browser.driver.switch_to.active_element.send_keys(Keys.ENTER))
        browser.wait(lambda d: d.find_elements(By.ID, "flash"), f"item {item} to be saved")
        labelled.append((item, score))
    items = {
        i.id: i for i in evaluator.ListReviewItems(evaluation_pb2.ListReviewItemsRequest()).items
    }
    for item_id, score in labelled:
        item = items[item_id]
        assert item.labelled_by == "rita" and item.score == float(score)
        assert item.comment == f"comment {score}" and item.label  # the key's label in words
    assert {items[i].model_version_id for i, _ in labelled} >= {first.id}


def test_promote_and_roll_back(browser, fleet):
    v1, v2 = _versions(fleet, 2)[:2]
    browser.sign_in("ops")
    for version in (v1, v2):
        browser.open(f"/models/{version.id}")
        use_case = browser.driver.find_element(By.ID, "promote-use-case")
        use_case.clear()
        use_case.send_keys(USE_CASE)
        browser.driver.find_element(By.ID, "promote-reason").send_keys("console test")
        browser.navigate(browser.driver.find_element(By.ID, "do-promote").click)
        browser.wait(lambda d: d.find_elements(By.ID, "flash"), f"{version.id} promoted")
        assert f"{USE_CASE}/staging" in browser.text("stages")
    browser.screenshot("model-version")
    alias = fleet.registry("ops").GetAlias(
        registry_pb2.GetAliasRequest(use_case=USE_CASE, stage=registry_pb2.STAGE_STAGING)
    )
    assert alias.model_version_id == v2.id and list(alias.rollback_to)[:1] == [v1.id]

    browser.driver.find_element(By.CSS_SELECTOR, "form.rollback input[name=reason]").send_keys(
        "v2 misbehaves"
    )
    browser.navigate(browser.driver.find_element(By.CSS_SELECTOR, "form.rollback button").click)
    flash = browser.wait(lambda d: d.find_elements(By.ID, "flash"), "the rollback")[0].text
    assert f"rolled back {USE_CASE}/staging to {v1.id}" in flash
    alias = fleet.registry("ops").GetAlias(
        registry_pb2.GetAliasRequest(use_case=USE_CASE, stage=registry_pb2.STAGE_STAGING)
    )
    assert alias.model_version_id == v1.id
    browser.open("/models")
    assert v1.id in browser.text("aliases")
    browser.screenshot("models")
    # The lineage graph runs from the dataset version to the alias.
    browser.open(f"/models/{v1.id}")
    kinds = {
        n.get_attribute("data-kind")
        for n in browser.driver.find_elements(By.CSS_SELECTOR, "#lineage g.node")
    }
    assert {"dataset_version", "training_job", "model_version"} <= kinds


def test_a_viewer_sees_disabled_buttons_and_a_forced_post_is_refused(browser, fleet):
    v1 = _versions(fleet, 1)[0]
    browser.sign_in("vera")
    browser.open(f"/models/{v1.id}")
    promote = browser.driver.find_element(By.ID, "do-promote")
    assert not promote.is_enabled()
    assert promote.get_attribute("title") == "needs the operator role"
    status, body = browser.post(
        f"/models/{v1.id}/promote", {"use_case": USE_CASE, "stage": "staging"}
    )
    assert status == 403 and "'vera' needs role 'operator'" in error_banner(body)
    browser.driver.execute_script("arguments[0].disabled = false", promote)
    use_case = browser.driver.find_element(By.ID, "promote-use-case")
    use_case.clear()
    use_case.send_keys(USE_CASE)
    browser.navigate(promote.click)
    error = browser.wait(lambda d: d.find_elements(By.ID, "error"), "the refusal")[0].text
    assert "Permission Denied (403)" in error and "'vera' needs role 'operator'" in error
    browser.screenshot("viewer-refused")
    alias = fleet.registry("ops").GetAlias(
        registry_pb2.GetAliasRequest(use_case=USE_CASE, stage=registry_pb2.STAGE_STAGING)
    )
    assert alias.model_version_id == v1.id  # unchanged
    browser.open("/review")
    assert not browser.driver.find_element(By.ID, "do-label").is_enabled()


def test_evaluations_deployments_and_an_experiment(browser, fleet):
    v1 = _versions(fleet, 1)[0]
    evaluator = evaluation_pb2_grpc.EvaluationServiceStub(fleet.channel("evaluator", "ops"))
    report = evaluator.ListReports(
        evaluation_pb2.ListReportsRequest(model_version_id=v1.id)
    ).reports[0]
    browser.sign_in("ops")
    browser.open("/evaluations")
    assert report.id[:8] in browser.text("reports")
    browser.screenshot("evaluations")
    browser.open(f"/evaluations/{report.id}")
    assert browser.text("verdict").startswith("Gate verdict")
    assert "metric" in browser.text("whole-suite")
    browser.screenshot("evaluation-report")

    gateway = gateway_pb2_grpc.InferenceGatewayStub(fleet.channel("gateway", "ops"))
    route = f"{USE_CASE}/staging"
    wait_for(
        f"{v1.id} live on {route}",
        lambda: any(
            d.model_version_id == v1.id and d.state == gateway_pb2.DEPLOYMENT_STATE_LIVE
            for d in gateway.ListDeployments(
                gateway_pb2.ListDeploymentsRequest(use_case=route)
            ).deployments
        ),
        300,
        every_s=2,
    )
    experiment = gateway.CreateExperiment(
        gateway_pb2.CreateExperimentRequest(
            use_case=route,
            variants=[
                gateway_pb2.Variant(name="base", model_version_id="base:tiny-llama", share=0.5),
                gateway_pb2.Variant(name="tuned", model_version_id=v1.id, share=0.5),
            ],
        )
    )
    # A little traffic with feedback, as a client app sends it: both arms get numbers.
    app = gateway_pb2_grpc.InferenceGatewayStub(fleet.channel("gateway", "app"))
    for user in range(8):
        answer = app.Generate(
            gateway_pb2.GenerateRequest(
                use_case=route,
                prompt="How do I reset my router?",
                sampling=gateway_pb2.SamplingParams(max_tokens=4, seed=user),
                user_key=f"user-{user}",
            ),
            timeout=120,
        )
        app.RecordFeedback(
            gateway_pb2.RecordFeedbackRequest(
                request_id=answer.request_id, success=user % 2 == 0, rating=3 + user % 3
            )
        )
    browser.open("/deployments")
    assert v1.id in browser.text("deployments") and experiment.id[:8] in browser.text("experiments")
    browser.screenshot("deployments")
    browser.open(f"/experiments/{experiment.id}")
    assert "insufficient data" in browser.text("experiment-verdict")
    assert "50.0%" in browser.text("traffic-split")
    arms = browser.driver.find_elements(By.CSS_SELECTOR, "#arm-metrics tr[data-arm]")
    requests = {a.get_attribute("data-arm"): int(a.text.split()[1]) for a in arms}
    assert set(requests) == {"base", "tuned"} and sum(requests.values()) == 8
    assert browser.driver.find_elements(By.CSS_SELECTOR, "#arms svg line.ci")  # intervals
    browser.screenshot("experiment")
    browser.navigate(browser.driver.find_element(By.ID, "do-stop_experiment").click)
    browser.wait(lambda d: d.find_elements(By.ID, "flash"), "the experiment to stop")
    listed = gateway.ListExperiments(gateway_pb2.ListExperimentsRequest(use_case=route))
    assert [(e.id, e.running) for e in listed.experiments] == [(experiment.id, False)]


def test_cancel_a_running_job(browser, fleet):
    job_id = fleet.submit_job(steps=5000)  # far longer than the test waits
    browser.sign_in("vera")
    browser.open(f"/jobs/{job_id}")
    cancel = browser.driver.find_element(By.ID, "do-cancel_job")
    assert not cancel.is_enabled() and cancel.get_attribute("title") == "needs the trainer role"

    browser.sign_in("trainer")
    browser.open(f"/jobs/{job_id}")
    browser.wait(
        lambda d: d.find_element(By.ID, "job-state").text == "running", "the job to start", 240
    )
    browser.driver.find_element(By.ID, "cancel-reason").send_keys("wrong learning rate")
    browser.navigate(browser.driver.find_element(By.ID, "do-cancel_job").click)
    browser.wait(lambda d: d.find_elements(By.ID, "flash"), "the cancel request")
    browser.wait(
        lambda d: d.find_element(By.ID, "job-state").text == "cancelled", "the job to stop", 120
    )
    job = fleet.trainer("trainer").GetJob(training_pb2.GetJobRequest(job_id=job_id))
    assert job.state == training_pb2.JOB_STATE_CANCELLED and job.step < 5000
