"""Intake's Prometheus counters move with uploads (created, the same rows again, refused),
and an upload's events carry the correlation id of its RPC."""

from __future__ import annotations

import grpc
import pytest
from conftest import SAMPLE_ROWS, jsonl, upload_requests
from prometheus_client import REGISTRY


def _counts() -> dict[str, float]:
    samples = {
        **{
            f"versions:{o}": ("posttrain_intake_versions_total", o)
            for o in ("created", "existing", "refused")
        },
        **{
            f"rows:{o}": ("posttrain_intake_rows_total", o)
            for o in ("stored", "duplicate", "invalid", "refused")
        },
    }
    return {
        key: REGISTRY.get_sample_value(name, {"outcome": outcome}) or 0.0
        for key, (name, outcome) in samples.items()
    }


def test_uploads_are_counted_by_outcome_and_keep_their_correlation_id(intake):
    stub = intake.stub("alice")
    before = _counts()
    cid = [("x-correlation-id", "upload-metrics-1")]
    stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS)), metadata=cid)
    stub.UploadDataset(upload_requests("support", jsonl(SAMPLE_ROWS)))  # the same rows
    bad = [*SAMPLE_ROWS[:3], {"messages": [{"role": "pirate", "content": "arr"}]}]
    with pytest.raises(grpc.RpcError):
        stub.UploadDataset(upload_requests("other", jsonl(bad)))
    after = _counts()
    assert {k: after[k] - before[k] for k in after} == {
        "versions:created": 1,
        "versions:existing": 1,
        "versions:refused": 1,
        "rows:stored": 12 + 12,
        "rows:duplicate": 0,
        "rows:invalid": 1,
        "rows:refused": 3,
    }
    assert [env.correlation_id for _, env in intake.outbox()] == ["upload-metrics-1"] * 2
