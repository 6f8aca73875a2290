"""The lineage graph: dataset version -> training job -> model version -> evaluation
reports and deployments (and base model -> model version), queried either way.

Nodes and edges are stored as the events that create them arrive; edges point the way
things flow. Aliases are not stored as edges (they move): GetLineage adds them as
virtual nodes "alias:<tenant>/<use_case>/<stage>" downstream of the version they point
at, so "what data is behind production?" is an upstream walk from the alias.
A caller sees shared nodes (datasets, base models) and its own tenant's nodes only; the
walk does not go through nodes it may not see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from posttrain.db import utcnow
from posttrain.registry import names
from posttrain.registry.tables import AliasRow, LineageEdgeRow, LineageNodeRow
from posttrain.rpc.errors import InvalidArgument, NotFound

Direction = Literal["upstream", "downstream", "both"]
DEFAULT_DEPTH = 10
MAX_DEPTH = 50
MAX_NODES = 5000  # a walk stops growing here rather than answer with megabytes


@dataclass(frozen=True)
class Node:
    id: str
    kind: str
    label: str
    tenant: str | None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Edge:
    from_id: str
    to_id: str
    relation: str


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[Edge]

    def ids(self, kind: str | None = None) -> set[str]:
        return {n.id for n in self.nodes if kind is None or n.kind == kind}


# ------------------------------------------------------------------ writing


def ensure_node(
    session: Session,
    kind: str,
    key: str,
    *,
    label: str = "",
    tenant: str | None = None,
    attributes: Mapping[str, object] | None = None,
) -> str:
    """Create the node if new, else merge `attributes` into it; returns its id."""
    nid = names.node_id(kind, key)
    attrs = {k: str(v) for k, v in (attributes or {}).items() if v not in (None, "")}
    row = session.get(LineageNodeRow, nid)
    if row is None:
        session.add(
            LineageNodeRow(
                id=nid,
                kind=kind,
                label=label or key,
                tenant=tenant,
                attributes=attrs,
                created_at=utcnow(),
            )
        )
        session.flush()  # a second ensure_node of the same id in this transaction finds it
    elif attrs:
        row.attributes = {**row.attributes, **attrs}
    return nid


def add_edge(session: Session, from_id: str, to_id: str, relation: str) -> None:
    exists = session.scalar(
        sa.select(LineageEdgeRow.id).where(
            LineageEdgeRow.from_id == from_id,
            LineageEdgeRow.to_id == to_id,
            LineageEdgeRow.relation == relation,
        )
    )
    if exists is None:
        session.add(
            LineageEdgeRow(from_id=from_id, to_id=to_id, relation=relation, created_at=utcnow())
        )
        session.flush()


# ------------------------------------------------------------------ reading


def get_lineage(
    session: Session,
    start: str,
    *,
    direction: Direction = "both",
    max_depth: int = 0,
    tenant_scope: str | None,
) -> Graph:
    """The nodes reachable from `start` going `direction` ("both": its ancestors and its
    descendants) within `max_depth` edges (0 = DEFAULT_DEPTH), and the edges between them."""
    if max_depth < 0:
        raise InvalidArgument("max_depth", f"must be >= 0 (got {max_depth})")
    depth_limit = min(max_depth or DEFAULT_DEPTH, MAX_DEPTH)
    names.split_node_id(start)
    first = _load_nodes(session, [start], tenant_scope).get(start)
    if first is None:
        raise NotFound("lineage node", start)
    nodes: dict[str, Node] = {start: first}
    edges: set[Edge] = set()
    walks = ["upstream", "downstream"] if direction == "both" else [direction]
    for walk in walks:
        seen = {start}
        frontier = {start}
        for _ in range(depth_limit):
            if not frontier or len(nodes) >= MAX_NODES:
                break
            found = _neighbour_edges(session, frontier, walk)
            others = {e.from_id if walk == "upstream" else e.to_id for e in found}
            loaded = _load_nodes(session, others - nodes.keys(), tenant_scope)
            nodes.update(loaded)
            next_frontier = set()
            for edge in found:
                other = edge.from_id if walk == "upstream" else edge.to_id
                if other not in nodes:
                    continue  # not visible to this caller, or gone
                edges.add(edge)
                if other not in seen:
                    seen.add(other)
                    next_frontier.add(other)
            frontier = next_frontier
    ordered = sorted(nodes.values(), key=lambda n: (names.NODE_KINDS.index(n.kind), n.id))
    return Graph(ordered, sorted(edges, key=lambda e: (e.from_id, e.to_id, e.relation)))


def _neighbour_edges(session: Session, frontier: set[str], walk: str) -> list[Edge]:
    column = LineageEdgeRow.to_id if walk == "upstream" else LineageEdgeRow.from_id
    found: list[Edge] = []
    for chunk in _chunks(sorted(frontier)):
        rows = session.execute(
            sa.select(LineageEdgeRow.from_id, LineageEdgeRow.to_id, LineageEdgeRow.relation)
            .where(column.in_(chunk))
            .order_by(LineageEdgeRow.id)
        )
        found.extend(Edge(*row) for row in rows)
    # Aliases: virtual edges model_version -> alias.
    if walk == "downstream":
        versions = [key for kind, key in map(_split, frontier) if kind == names.MODEL_VERSION]
        for chunk in _chunks(versions):
            for alias in session.scalars(
                sa.select(AliasRow).where(AliasRow.model_version_id.in_(chunk))
            ):
                found.append(
                    Edge(_version_node(alias.model_version_id), _alias_node(alias), "alias")
                )
    else:
        for kind, key in map(_split, frontier):
            if kind == names.ALIAS:
                alias = _alias_row(session, key)
                if alias is not None:
                    found.append(
                        Edge(_version_node(alias.model_version_id), _alias_node(alias), "alias")
                    )
    return found


def _load_nodes(session: Session, ids: Iterable[str], tenant_scope: str | None) -> dict[str, Node]:
    wanted = set(ids)
    loaded: dict[str, Node] = {}
    stored = [i for i in wanted if not i.startswith(names.ALIAS + ":")]
    for chunk in _chunks(sorted(stored)):
        for row in session.scalars(sa.select(LineageNodeRow).where(LineageNodeRow.id.in_(chunk))):
            loaded[row.id] = Node(row.id, row.kind, row.label, row.tenant, dict(row.attributes))
    for nid in wanted - set(stored):
        alias = _alias_row(session, nid.partition(":")[2])
        if alias is not None:
            loaded[nid] = Node(
                nid,
                names.ALIAS,
                f"{alias.use_case}/{alias.stage}",
                alias.tenant,
                {
                    "model_version_id": alias.model_version_id,
                    "revision": str(alias.revision),
                    "updated_by": alias.updated_by,
                },
            )
    return {
        nid: node
        for nid, node in loaded.items()
        if tenant_scope is None or node.tenant in (None, tenant_scope)
    }


def _alias_row(session: Session, key: str) -> AliasRow | None:
    tenant, _, rest = key.partition("/")
    use_case, _, stage = rest.partition("/")
    return session.scalar(
        sa.select(AliasRow).where(
            AliasRow.tenant == tenant, AliasRow.use_case == use_case, AliasRow.stage == stage
        )
    )


def _alias_node(alias: AliasRow) -> str:
    return names.node_id(names.ALIAS, names.alias_key(alias.tenant, alias.use_case, alias.stage))


def _version_node(version_id: str) -> str:
    return names.node_id(names.MODEL_VERSION, version_id)


def _split(nid: str) -> tuple[str, str]:
    kind, _, key = nid.partition(":")
    return kind, key


def _chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
