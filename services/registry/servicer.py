"""The RegistryService gRPC servicer: a thin shell over posttrain.registry.

Each RPC checks who is calling, opens one transaction, calls the core and converts what
it returns; the core's errors carry their own gRPC status (ErrorInterceptor maps them).

Who may call what (admin holds every role):

| RPC                                                   | role                        |
|-------------------------------------------------------|-----------------------------|
| GetBaseModel, ListBaseModels, GetModelVersion,        | viewer, trainer or operator |
| ListModelVersions, GetLineage, GetAlias, ListAliases, |                             |
| ListAudit                                             |                             |
| RegisterBaseModel                                     | trainer                     |
| Promote, Rollback, ArchiveModelVersion                | operator                    |
| Promote with override_gate                            | operator, and a reason      |
| WhoAmI                                                | any valid key               |

Tenants: a caller sees and changes only its own tenant's versions, aliases, lineage
nodes and audit entries (another tenant's version is NOT_FOUND, naming another tenant
in a request is PERMISSION_DENIED); admin may act on any tenant. Base models and dataset
versions are shared by all tenants. With auth_required off, a call without a key acts
as an admin of the bootstrap tenant (local development only).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from posttrain.db import apply_migrations, session_scope
from posttrain.events import EVENTS_MIGRATIONS, add_to_outbox
from posttrain.registry import (
    REGISTRY_MIGRATIONS,
    aliases,
    audit,
    base_models,
    gate,
    lineage,
    names,
    versions,
)
from posttrain.registry.emit import Emit
from posttrain.registry.metrics import alias_change
from posttrain.rpc import (
    ROLES,
    Conflict,
    InvalidArgument,
    PermissionDenied,
    Principal,
    Role,
    current_correlation_id,
    current_principal,
    require_role,
)
from posttrain.rpc.paging import page_bounds, page_response
from posttrain.rpc.server import AddServicerFn
from posttrain.storage import ArtifactStore
from posttrain.v1 import registry_pb2, registry_pb2_grpc
from services.registry import convert
from services.registry.settings import RegistrySettings

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

READ_ROLES = (Role.VIEWER, Role.TRAINER, Role.OPERATOR)
ALL_TENANTS = "*"


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self, settings: RegistrySettings, engine: Engine, store: ArtifactStore | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._store = store
        self._store_lock = threading.Lock()

    # ------------------------------------------------------------------ base models

    def RegisterBaseModel(self, request, context):
        caller = self._caller(Role.TRAINER)
        names.check(names.BASE_MODEL_NAME, request.name, "name", "base model name")
        folder = base_models.inspect_folder(self.store, request.source_uri)  # no DB held
        try:
            with self._session() as session:
                row, _ = base_models.register(
                    session,
                    name=request.name,
                    folder=folder,
                    actor=caller.name,
                    architecture=request.architecture,
                    chat_template_revision=request.chat_template_revision,
                )
                return convert.base_model(row)
        except IntegrityError:
            raise Conflict(
                f"base model {request.name!r} was registered by another call meanwhile; retry"
            ) from None

    def GetBaseModel(self, request, context):
        self._caller(*READ_ROLES)
        with self._session() as session:
            return convert.base_model(base_models.get(session, request.name))

    def ListBaseModels(self, request, context):
        self._caller(*READ_ROLES)
        offset, limit = page_bounds(request.page)
        with self._session() as session:
            rows, total = base_models.list_all(session, offset=offset, limit=limit)
            return registry_pb2.ListBaseModelsResponse(
                models=[convert.base_model(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    # ------------------------------------------------------------------ versions

    def GetModelVersion(self, request, context):
        caller = self._caller(*READ_ROLES)
        with self._session() as session:
            row = versions.get(session, request.id, tenant_scope=caller.tenant_scope())
            return convert.model_version(row, gate.status(session, row.id))

    def ListModelVersions(self, request, context):
        caller = self._caller(*READ_ROLES)
        tenant = self._tenant(caller, request.tenant) if request.tenant else ""
        offset, limit = page_bounds(request.page)
        with self._session() as session:
            rows, total = versions.list_versions(
                session,
                tenant_scope=caller.tenant_scope(),
                tenant=tenant,
                name=request.name,
                include_archived=request.include_archived,
                offset=offset,
                limit=limit,
            )
            verdicts = gate.statuses(session, [r.id for r in rows])
            return registry_pb2.ListModelVersionsResponse(
                versions=[convert.model_version(r, verdicts[r.id]) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    def ArchiveModelVersion(self, request, context):
        caller = self._caller(Role.OPERATOR)
        with self._session() as session:
            row = versions.archive(
                session,
                request.id,
                actor=caller.name,
                reason=request.reason,
                tenant_scope=caller.tenant_scope(),
            )
            return convert.model_version(row, gate.status(session, row.id))

    def GetLineage(self, request, context):
        caller = self._caller(*READ_ROLES)
        if not request.node_id:
            raise InvalidArgument("node_id", "a lineage node id ('<kind>:<id>') is required")
        with self._session() as session:
            graph = lineage.get_lineage(
                session,
                request.node_id,
                direction=convert.direction_word(request.direction),
                max_depth=request.max_depth,
                tenant_scope=caller.tenant_scope(),
            )
            return convert.lineage_graph(graph)

    # ------------------------------------------------------------------ aliases

    def Promote(self, request, context):
        caller = self._caller(Role.OPERATOR)
        if request.override_gate:
            require_role(caller, Role.OPERATOR)  # stays true if promotion opens to more roles
        stage = convert.stage_word(request.stage)
        tenant = self._tenant(caller, request.tenant)
        with alias_change("promote", stage), self._session() as session:
            change = aliases.promote(
                session,
                version_id=request.model_version_id,
                tenant=tenant,
                use_case=request.use_case,
                stage=stage,
                actor=caller.name,
                emit=self._emit(session),
                reason=request.reason,
                override_gate=request.override_gate,
                expected_revision=request.expected_revision,
                tenant_scope=caller.tenant_scope(),
            )
            return convert.alias(change.alias)

    def Rollback(self, request, context):
        caller = self._caller(Role.OPERATOR)
        stage = convert.stage_word(request.stage)
        tenant = self._tenant(caller, request.tenant)
        with alias_change("rollback", stage), self._session() as session:
            change = aliases.rollback(
                session,
                tenant=tenant,
                use_case=request.use_case,
                stage=stage,
                actor=caller.name,
                reason=request.reason,
                emit=self._emit(session),
                expected_revision=request.expected_revision,
            )
            return convert.alias(change.alias)

    def GetAlias(self, request, context):
        caller = self._caller(*READ_ROLES)
        stage = convert.stage_word(request.stage)
        tenant = self._tenant(caller, request.tenant)
        with self._session() as session:
            view = aliases.get(session, tenant=tenant, use_case=request.use_case, stage=stage)
            return convert.alias(view)

    def ListAliases(self, request, context):
        caller = self._caller(*READ_ROLES)
        if request.tenant == ALL_TENANTS:
            require_role(caller, Role.ADMIN)
            tenant = None
        else:
            tenant = self._tenant(caller, request.tenant)
        offset, limit = page_bounds(request.page)
        with self._session() as session:
            views, total = aliases.list_aliases(
                session,
                tenant=tenant,
                use_case=request.use_case,
                model_version_id=request.model_version_id,
                offset=offset,
                limit=limit,
            )
            return registry_pb2.ListAliasesResponse(
                aliases=[convert.alias(v) for v in views],
                page=page_response(offset, len(views), total),
            )

    # ------------------------------------------------------------------ audit

    def ListAudit(self, request, context):
        caller = self._caller(*READ_ROLES)
        offset, limit = page_bounds(request.page)
        with self._session() as session:
            rows, total = audit.list_entries(
                session,
                tenant_scope=caller.tenant_scope(),
                subject=request.subject,
                actor=request.actor,
                action=request.action,
                offset=offset,
                limit=limit,
            )
            return registry_pb2.ListAuditResponse(
                entries=[convert.audit_entry(r) for r in rows],
                page=page_response(offset, len(rows), total),
            )

    def WhoAmI(self, request, context):
        return self._caller(*ROLES).to_proto()

    # ------------------------------------------------------------------ plumbing

    @property
    def store(self) -> ArtifactStore:
        with self._store_lock:
            if self._store is None:
                self._store = ArtifactStore.from_settings(self.settings.s3)
            return self._store

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with session_scope(self._sessions) as session:
            yield session

    def _emit(self, session: Session) -> Emit:
        correlation_id = current_correlation_id() or ""

        def emit(event_type, payload, *, aggregate_id):
            return add_to_outbox(
                session,
                event_type,
                payload,
                producer=self.settings.service_name,
                aggregate_id=aggregate_id,
                correlation_id=correlation_id,
            )

        return emit

    def _caller(self, *roles: str) -> Principal:
        principal = current_principal()
        if principal is None and not self.settings.grpc.auth_required:
            principal = Principal(
                "anonymous", frozenset({Role.ADMIN.value}), self.settings.auth.bootstrap_tenant
            )
        return require_role(principal, *roles)

    @staticmethod
    def _tenant(caller: Principal, requested: str) -> str:
        """The tenant a request acts on: the caller's unless it names another (admin only)."""
        tenant = requested or caller.tenant
        if tenant != caller.tenant and not caller.has_role(Role.ADMIN):
            raise PermissionDenied(
                f"{caller.name!r} of tenant {caller.tenant!r} may not act on tenant {tenant!r}"
            )
        return tenant


def register(settings: RegistrySettings, engine: Engine) -> list[tuple[AddServicerFn, object]]:
    apply_migrations(engine, "events", EVENTS_MIGRATIONS)
    apply_migrations(engine, "registry", REGISTRY_MIGRATIONS)
    return [
        (
            registry_pb2_grpc.add_RegistryServiceServicer_to_server,
            RegistryServicer(settings, engine),
        )
    ]
