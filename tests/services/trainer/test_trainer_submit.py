"""SubmitJob, GetJob, ListJobs and CancelJob over real gRPC on SQLite and PostgreSQL, with
intake and the registry stood in for: refusals, roles, tenants, and a queued job's cancel."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy.orm import Session
from trainer_helpers import PENDING_VERSION, REJECTED_VERSION, rpc_error

from posttrain.events import topics
from posttrain.rpc.errors import field_violations
from posttrain.trainer import JobBook
from posttrain.training import TrainingJobConfig
from posttrain.v1 import common_pb2, events_pb2, training_pb2


def test_submit_records_a_queued_job_and_emits_training_requested(trainer):
    job = trainer.submit()
    assert job.state == training_pb2.JOB_STATE_QUEUED
    assert (job.base_model, job.dataset, job.output_name) == (
        "tiny-llama",
        "support",
        "support-bot",
    )
    assert job.method == common_pb2.TUNING_METHOD_LORA
    assert job.tenant == "acme" and job.submitted_by == "alice" and job.attempt == 0
    config = TrainingJobConfig.from_yaml(job.config_yaml)
    assert (config.max_steps, config.batch_size, config.lr, config.seed) == (6, 4, 5e-3, 7)
    assert config.method_config == {"rank": 4, "alpha": 8}
    assert config.base_model == ""  # no machine path is stored

    # The stand-ins were asked with alice's own key.
    (dataset, version, credentials) = trainer.intake.calls[-1]
    assert (dataset, version) == ("support", job.dataset_version)
    assert ("authorization", f"Bearer {trainer.keys['alice']}") in credentials
    assert trainer.registry.calls[-1][1] == credentials

    row = trainer.job(job.job_id)
    assert row.base_weights_sha256 == trainer.inputs.weights.sha256
    assert row.dataset_manifest_sha256 == trainer.inputs.manifest.sha256
    [(topic, requested)] = _outbox(trainer)
    assert topic == topics.TRAINING_REQUESTED
    assert requested == events_pb2.TrainingRequested(
        job_id=job.job_id,
        base_model="tiny-llama",
        dataset="support",
        dataset_version=job.dataset_version,
        method=common_pb2.TUNING_METHOD_LORA,
        config_yaml=job.config_yaml,
        output_name="support-bot",
        tenant="acme",
        attempt=1,
    )
    assert trainer.stub("eve").GetJob(training_pb2.GetJobRequest(job_id=job.job_id)) == job


def test_config_yaml_with_overrides_and_service_defaults(trainer):
    yaml_text = TrainingJobConfig(
        base_model="/somewhere/on/my/laptop", method="ia3", max_steps=3, seed=11
    ).to_yaml()
    job = trainer.submit(
        method=common_pb2.TUNING_METHOD_UNSPECIFIED,
        hyperparameters={"lr": "0.01"},
        config_yaml=yaml_text,
    )
    config = TrainingJobConfig.from_yaml(job.config_yaml)
    assert job.method == common_pb2.TUNING_METHOD_IA3
    assert (config.method, config.max_steps, config.seed, config.lr) == ("ia3", 3, 11, 0.01)
    assert config.base_model == ""
    # The method field picks the method of a config that does not name one.
    prompt = trainer.submit(
        method=common_pb2.TUNING_METHOD_PROMPT, hyperparameters={}, config_yaml="max_steps: 2\n"
    )
    assert TrainingJobConfig.from_yaml(prompt.config_yaml).method == "prompt"
    err = rpc_error(lambda: trainer.submit(config_yaml="method: ia3\n"))  # and LORA asked
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "config_yaml says" in err.details()
    # Without a config, the service's checkpoint cadence applies, so every job can resume.
    plain = trainer.submit(hyperparameters={"max_steps": "3"})
    assert TrainingJobConfig.from_yaml(plain.config_yaml).checkpoint_every == 50


def test_unapproved_dataset_versions_are_refused(trainer):
    for version, state in ((PENDING_VERSION, "PENDING"), (REJECTED_VERSION, "REJECTED")):
        err = rpc_error(lambda v=version: trainer.submit(dataset_version=v))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert state in err.details() and "APPROVED" in err.details()
    assert _outbox(trainer) == []


def test_unknown_base_model_or_dataset_version_is_not_found(trainer):
    err = rpc_error(lambda: trainer.submit(base_model="no-such-model"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "base model 'no-such-model'" in err.details()
    err = rpc_error(lambda: trainer.submit(dataset_version="d" * 64))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "dataset version" in err.details() and "d" * 64 in err.details()
    assert _outbox(trainer) == []


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"hyperparameters": {"lr": "fast"}}, "hyperparameters.lr", "not a float"),
        ({"hyperparameters": {"batch_size": "0"}}, "hyperparameters.batch_size", ">= 1"),
        (
            {"hyperparameters": {"learning_rate": "1e-4"}},
            "hyperparameters.learning_rate",
            "unknown",
        ),
        ({"hyperparameters": {"rank": "0"}}, "hyperparameters.rank", "rank must be >= 1"),
        (
            {"hyperparameters": {"method_config.wings": "2"}},
            "hyperparameters.method_config.wings",
            "unknown lora",
        ),
        ({"hyperparameters": {"base_model": "/tmp/x"}}, "hyperparameters.base_model", "registered"),
        ({"hyperparameters": {"epochs": "1.5"}}, "hyperparameters.epochs", "not an integer"),
        ({"method": common_pb2.TUNING_METHOD_UNSPECIFIED}, "method", "required"),
        ({"output_name": "no spaces please"}, "output_name", "not a valid model name"),
        ({"dataset_version": "v1"}, "dataset_version", "64-character"),
        ({"config_yaml": "lr: [1, 2"}, "config_yaml", "not valid YAML"),
        ({"config_yaml": "rank: 4\n"}, "config_yaml.rank", "unknown key"),
    ],
)
def test_bad_arguments_are_refused_naming_the_field(trainer, overrides, field, words):
    err = rpc_error(lambda: trainer.submit(**overrides))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(err)], err.details()
    assert words in err.details()


def test_roles_and_tenants(trainer):
    job = trainer.submit()
    # Only trainers submit and cancel; any role reads.
    for call in (
        lambda: trainer.submit(who="eve"),
        lambda: trainer.stub("uma").CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id)),
    ):
        assert rpc_error(call).code() == grpc.StatusCode.PERMISSION_DENIED
    assert trainer.stub("uma").GetJob(training_pb2.GetJobRequest(job_id=job.job_id)).job_id

    # Another tenant's job does not exist for mallory; nor may she act for acme.
    globex = trainer.stub("mallory")
    assert (
        rpc_error(lambda: globex.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))).code()
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        rpc_error(lambda: globex.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))).code()
        == grpc.StatusCode.NOT_FOUND
    )
    assert list(globex.ListJobs(training_pb2.ListJobsRequest()).jobs) == []
    assert (
        rpc_error(lambda: globex.ListJobs(training_pb2.ListJobsRequest(tenant="acme"))).code()
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert rpc_error(lambda: trainer.submit(who="mallory", tenant="acme")).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    watch = globex.WatchJob(training_pb2.GetJobRequest(job_id=job.job_id))
    assert rpc_error(lambda: list(watch)).code() == grpc.StatusCode.NOT_FOUND

    mine = trainer.submit(who="mallory", output_name="globex-bot")
    assert [j.job_id for j in globex.ListJobs(training_pb2.ListJobsRequest()).jobs] == [mine.job_id]
    # admin sees every tenant.
    listed = trainer.stub("root").ListJobs(training_pb2.ListJobsRequest())
    assert {j.job_id for j in listed.jobs} == {job.job_id, mine.job_id}


def test_list_filters_by_state_and_pages(trainer):
    ids = [trainer.submit().job_id for _ in range(3)]
    trainer.stub("alice").CancelJob(training_pb2.CancelJobRequest(job_id=ids[0]))
    stub = trainer.stub("eve")
    queued = stub.ListJobs(training_pb2.ListJobsRequest(state=training_pb2.JOB_STATE_QUEUED))
    assert {j.job_id for j in queued.jobs} == set(ids[1:])
    first = stub.ListJobs(training_pb2.ListJobsRequest(page=common_pb2.PageRequest(page_size=2)))
    assert len(first.jobs) == 2 and first.page.total == 3 and first.page.next_page_token
    rest = stub.ListJobs(
        training_pb2.ListJobsRequest(
            page=common_pb2.PageRequest(page_size=2, page_token=first.page.next_page_token)
        )
    )
    assert {j.job_id for j in [*first.jobs, *rest.jobs]} == set(ids)
    assert not rest.page.next_page_token


def test_cancel_a_queued_job_is_immediate_and_the_worker_skips_it(trainer):
    job = trainer.submit()
    stub = trainer.stub("alice")
    cancelled = stub.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id, reason="typo"))
    assert cancelled.state == training_pb2.JOB_STATE_CANCELLED
    again = stub.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))
    assert again.state == training_pb2.JOB_STATE_CANCELLED  # idempotent
    events = _outbox(trainer)
    assert [t for t, _ in events] == [topics.TRAINING_REQUESTED, topics.TRAINING_CANCELLED]
    assert events[1][1] == events_pb2.TrainingCancelled(
        job_id=job.job_id, cancelled_by="alice", at_step=0
    )
    # The training.requested still on its way finds nothing to do.
    with Session(trainer.engine) as session:
        assert JobBook(session).claim(job.job_id, "w1", stale_after_s=60).outcome == "skip"
    watch = list(trainer.stub("eve").WatchJob(training_pb2.GetJobRequest(job_id=job.job_id)))
    assert [m.state for m in watch] == [training_pb2.JOB_STATE_CANCELLED]


def test_get_and_cancel_check_the_job_id(trainer):
    stub = trainer.stub("alice")
    err = rpc_error(lambda: stub.GetJob(training_pb2.GetJobRequest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "job_id" in err.details()
    err = rpc_error(lambda: stub.CancelJob(training_pb2.CancelJobRequest(job_id="f" * 32)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def _outbox(trainer):
    from trainer_helpers import outbox

    return outbox(trainer.engine)
