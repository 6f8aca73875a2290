"""list_experiments (behind InferenceGateway.ListExperiments): a tenant's experiments
newest first, by route and running only, paged, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from posttrain.db import apply_migrations, create_db_engine
from posttrain.gateway import experiment_proto, list_experiments
from posttrain.gateway.tables import GATEWAY_MIGRATIONS, ExperimentRow

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _row(n: int, tenant: str, use_case: str, running: bool) -> ExperimentRow:
    return ExperimentRow(
        id=f"exp-{n}",
        tenant=tenant,
        use_case=use_case,
        variants=[
            {"name": "control", "model_version_id": "base:b", "share": 0.5},
            {"name": "tuned", "model_version_id": "bot:v1", "share": 0.5},
        ],
        running=running,
        max_policy_incident_rate=0.0,
        stopped_arms=[],
        created_by="ops",
        started_at=START + dt.timedelta(hours=n),
        stopped_by="",
        stop_reason="",
    )


def test_a_tenant_lists_its_own_experiments_newest_first(db_url):
    engine = create_db_engine(db_url)
    apply_migrations(engine, "gateway", GATEWAY_MIGRATIONS)
    with Session(engine) as session:
        session.add_all(
            [
                _row(1, "acme", "support", running=False),
                _row(2, "acme", "support/staging", running=True),
                _row(3, "acme", "support", running=True),
                _row(4, "globex", "support", running=True),
            ]
        )
        session.commit()
        rows, total = list_experiments(session, "acme")
        assert [r.id for r in rows] == ["exp-3", "exp-2", "exp-1"] and total == 3
        rows, total = list_experiments(session, "acme", use_case="support")
        assert [r.id for r in rows] == ["exp-3", "exp-1"] and total == 2
        rows, total = list_experiments(session, "acme", running_only=True)
        assert [r.id for r in rows] == ["exp-3", "exp-2"] and total == 2
        rows, total = list_experiments(session, "acme", offset=1, limit=1)
        assert [r.id for r in rows] == ["exp-2"] and total == 3
        assert list_experiments(session, "initech") == ([], 0)
        message = experiment_proto(rows[0])
        assert message.use_case == "support/staging" and message.running
        assert [(v.name, v.share) for v in message.variants] == [("control", 0.5), ("tuned", 0.5)]
    engine.dispose()
