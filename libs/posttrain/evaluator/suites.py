"""Suites as versioned data: a suite folder (suite.yaml, its cases, gate policy and seed
anchors) is validated with row-level violations and stored as the folder artifact
`suites/<name>/<version>`, one row per version in `evaluator_suites`.

A stored suite version is immutable, its gate policy and seed anchors included: the
suite version hashes the header and the cases only (posttrain.evaluation.suite), so the
same version uploaded with another gate.yaml is refused (ALREADY_EXISTS); change the
header's `label` to make a new version. The shipped default (posttrain/evaluation/suites/
support_v1) is stored on first use like any upload, so every report's suite can be
fetched from the artifact store.

`limit_cases_per_tag` cuts a suite to its first N cases per tag (the 2-CPU demo); the cut
suite gets its own version, derived from the full one, so a report never claims a
suite it did not run.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import sqlalchemy as sa
import yaml
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from posttrain.db import session_scope, utcnow
from posttrain.evaluation import DEFAULT_SUITE_DIR, Suite, SuiteError, load_gate_policy, parse_suite
from posttrain.evaluation.calibration import AnchorSetError, load_anchors
from posttrain.evaluation.metrics import ConfigError
from posttrain.evaluator.tables import SuiteRow
from posttrain.rpc.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from posttrain.storage import MANIFEST_MEDIA_TYPE, ArtifactExists, ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)

HEADER_FILE = "suite.yaml"
MAX_SUITE_BYTES = 16 * 1024 * 1024
MAX_REPORTED_VIOLATIONS = 50
BUILTIN_UPLOADER = "builtin"
_SUBSET_PREFIX = b"posttrain.suite.subset.v1\n"


@dataclass(frozen=True)
class StoredSuite:
    row: SuiteRow
    suite: Suite


def suite_from_files(files: Mapping[str, bytes]) -> Suite:
    """A suite from its folder's files {relative path: bytes}. Raises InvalidArgument
    listing every problem: field "<file>:<field>", row = 1-based line of that file (0 for
    the file as a whole or the header)."""
    problems: list[FieldViolation] = []

    def bad(file: str, field: str, message: str, code: str, row: int = 0) -> None:
        problems.append(FieldViolation(f"{file}:{field}" if field else file, message, code, row))

    if sum(len(v) for v in files.values()) > MAX_SUITE_BYTES:
        bad("files", "", f"the suite is larger than {MAX_SUITE_BYTES} bytes", "too_large")
        raise _refused(problems)
    if HEADER_FILE not in files:
        bad(HEADER_FILE, "", "a suite folder needs suite.yaml", "missing_file")
        raise _refused(problems)
    try:
        header_text = files[HEADER_FILE].decode("utf-8")
        header = yaml.safe_load(header_text)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        bad(HEADER_FILE, "", f"not YAML: {exc}", "bad_yaml", mark.line + 1 if mark else 0)
        raise _refused(problems) from None
    refs = header if isinstance(header, dict) else {}
    named: dict[str, str] = {}
    for key, default in (("cases", "cases.jsonl"), ("gate_policy", ""), ("anchors", "")):
        name = refs.get(key) or default
        if not name:
            continue
        if not isinstance(name, str):
            continue  # parse_suite reports the wrong type
        named[key] = name
        if name not in files:
            bad(HEADER_FILE, key, f"names {name!r}, which is not among the files", "missing_file")
    for path in sorted(set(files) - {HEADER_FILE, *named.values()}):
        bad(path, "", "not named by suite.yaml (cases, gate_policy, anchors)", "unexpected_file")
    if problems:
        raise _refused(problems)

    policy = None
    if "gate_policy" in named:
        file = named["gate_policy"]
        try:
            policy = load_gate_policy(files[file])
        except ConfigError as exc:
            for field, message in exc.problems:
                bad(file, field, message, "bad_config")
    anchors = []
    if "anchors" in named:
        file = named["anchors"]
        try:
            anchors = load_anchors(files[file])
        except UnicodeDecodeError as exc:
            bad(file, "", f"not UTF-8 at byte {exc.start}", "bad_encoding")
        except AnchorSetError as exc:
            for v in exc.violations:
                bad(file, v.field, v.message, v.code, v.row)
    suite = None
    try:
        suite = parse_suite(
            header_text,
            files[named["cases"]],
            source=HEADER_FILE,
            gate_policy=policy,
            anchors=tuple(anchors),
        )
    except SuiteError as exc:
        for v in exc.violations:
            file = named["cases"] if v.row else HEADER_FILE
            bad(file, v.field, v.message, v.code, v.row)
    if problems or suite is None:
        raise _refused(problems)
    return suite


def _refused(problems: list[FieldViolation]) -> InvalidArgument:
    shown = problems[:MAX_REPORTED_VIOLATIONS]
    if len(problems) > len(shown):
        shown.append(
            FieldViolation("", f"and {len(problems) - len(shown)} more problem(s)", "truncated")
        )
    return InvalidArgument(violations=shown)


def folder_files(folder: str | Path) -> dict[str, bytes]:
    """A suite folder's files to upload: suite.yaml and the files it names that exist
    (what is missing or malformed, suite_from_files reports with the rest)."""
    folder = Path(folder)
    names = {HEADER_FILE}
    try:
        header = yaml.safe_load((folder / HEADER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        header = None
    if isinstance(header, dict):
        names.add(header.get("cases") or "cases.jsonl")
        names.update(header[k] for k in ("gate_policy", "anchors") if header.get(k))
    return {
        name: (folder / name).read_bytes()
        for name in sorted(n for n in names if isinstance(n, str))
        if (folder / name).is_file()
    }


def artifact_name(name: str, version: str) -> str:
    return f"suites/{name}/{version}"


def manifest_ref(row: SuiteRow) -> ArtifactRef:
    return ArtifactRef(
        row.manifest_uri, row.manifest_sha256, row.manifest_size, MANIFEST_MEDIA_TYPE
    )


def limit_cases_per_tag(suite: Suite, limit: int) -> tuple[Suite, str]:
    """The suite cut to the first `limit` cases of each tag (untagged cases count as one
    tag), in suite order; (suite, "") unchanged when nothing is cut. The cut suite's
    version is sha256(subset rule + full version + limit)."""
    if limit <= 0:
        return suite, ""
    seen: dict[str, int] = {}
    kept = []
    for case in suite.cases:
        keys = case.tags or ("",)
        if any(seen.get(k, 0) < limit for k in keys):
            kept.append(case)
        for k in keys:
            seen[k] = seen.get(k, 0) + 1
    if len(kept) == len(suite.cases):
        return suite, ""
    version = hashlib.sha256(
        _SUBSET_PREFIX + f"{suite.version}\nmax_cases_per_tag={limit}".encode()
    ).hexdigest()
    note = (
        f"cases limited to {limit} per tag (max_cases_per_tag): {len(kept)} of "
        f"{len(suite.cases)} cases of suite version {suite.version}"
    )
    return replace(suite, cases=tuple(kept), version=version), note


class SuiteCatalog:
    """Stored suites: upload, resolve by name (and version), load from the store."""

    def __init__(
        self, store: ArtifactStore, engine: Engine, *, builtin_dir: Path = DEFAULT_SUITE_DIR
    ) -> None:
        self.store = store
        self.engine = engine
        self.builtin_dir = builtin_dir
        self._builtin: Suite | None = None
        self._loaded: dict[tuple[str, str], Suite] = {}
        self._lock = threading.Lock()
        self._bucket_checked = False

    # ------------------------------------------------------------------ writing

    def upload(
        self, session: Session, files: Mapping[str, bytes], *, uploaded_by: str
    ) -> tuple[StoredSuite, bool]:
        """Validate and store a suite folder; (stored, already_existed)."""
        suite = suite_from_files(files)
        return self._store_suite(session, suite, files, uploaded_by=uploaded_by, builtin=False)

    def _store_suite(
        self,
        session: Session,
        suite: Suite,
        files: Mapping[str, bytes],
        *,
        uploaded_by: str,
        builtin: bool,
    ) -> tuple[StoredSuite, bool]:
        existing = self._row(session, suite.name, suite.version)
        if not self._bucket_checked:
            self.store.ensure_bucket()
            self._bucket_checked = True
        name = artifact_name(suite.name, suite.version)
        try:
            ref = self.store.publish_files(
                dict(sorted(files.items())),
                name,
                metadata={
                    "kind": "evaluation-suite",
                    "name": suite.name,
                    "version": suite.version,
                    "label": suite.label,
                },
            )
        except ArtifactExists:
            raise AlreadyExists(
                "suite version",
                f"{suite.name}@{suite.version[:12]} with other files (a suite version is "
                "immutable, its gate policy and anchors included: change the header's "
                "label to make a new version)",
            ) from None
        if existing is not None:
            return StoredSuite(existing, suite), True
        row = SuiteRow(
            name=suite.name,
            version=suite.version,
            label=suite.label,
            description=suite.description,
            cases=len(suite.cases),
            tags=suite.tags,
            gate_policy=(
                f"{suite.gate_policy.name}@{suite.gate_policy.version}" if suite.gate_policy else ""
            ),
            anchors=len(suite.anchors),
            manifest_uri=ref.uri,
            manifest_sha256=ref.sha256,
            manifest_size=ref.size_bytes,
            builtin=builtin,
            uploaded_by=uploaded_by,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        with self._lock:
            self._loaded[(suite.name, suite.version)] = suite
        return StoredSuite(row, suite), False

    def builtin(self) -> Suite:
        if self._builtin is None:
            self._builtin = suite_from_files(folder_files(self.builtin_dir))
        return self._builtin

    def ensure_builtin(self) -> SuiteRow:
        """The shipped suite's row, storing it first if this service never did."""
        suite = self.builtin()
        with session_scope(self.engine) as session:
            row = self._row(session, suite.name, suite.version)
            if row is not None:
                return row
        try:
            with session_scope(self.engine) as session:
                stored, _ = self._store_suite(
                    session,
                    suite,
                    folder_files(self.builtin_dir),
                    uploaded_by=BUILTIN_UPLOADER,
                    builtin=True,
                )
                log.info("stored the built-in suite %s@%s", suite.name, suite.version[:12])
                return stored.row
        except IntegrityError:  # another thread or process stored it first
            with session_scope(self.engine) as session:
                row = self._row(session, suite.name, suite.version)
                assert row is not None
                return row

    # ------------------------------------------------------------------ reading

    def resolve(self, name: str, version: str = "") -> StoredSuite:
        """The suite `name` at `version` (a full version or a prefix of at least 8), or its
        latest stored version; the built-in suite is stored on first use."""
        if version and (len(version) < 8 or not all(c in "0123456789abcdef" for c in version)):
            raise InvalidArgument(
                "suite_version", "must be a suite version (hex) or a prefix of 8+ characters"
            )
        with Session(self.engine) as session:
            row = self._find(session, name, version)
        if row is None and name == self.builtin().name:
            if not version or self.builtin().version.startswith(version):
                self.ensure_builtin()
                with Session(self.engine) as session:
                    row = self._find(session, name, version)
        if row is None:
            raise NotFound("suite", f"{name}@{version}" if version else name)
        return StoredSuite(row, self.load(row))

    def _find(self, session: Session, name: str, version: str) -> SuiteRow | None:
        query = sa.select(SuiteRow).where(SuiteRow.name == name)
        if version:
            query = query.where(SuiteRow.version.startswith(version, autoescape=True))
            rows = session.scalars(query.limit(2)).all()
            if len(rows) > 1:
                raise InvalidArgument(
                    "suite_version", f"prefix {version!r} matches several versions of {name}"
                )
            return rows[0] if rows else None
        return session.scalar(query.order_by(SuiteRow.created_at.desc(), SuiteRow.id.desc()))

    def _row(self, session: Session, name: str, version: str) -> SuiteRow | None:
        return session.scalar(
            sa.select(SuiteRow).where(SuiteRow.name == name, SuiteRow.version == version)
        )

    def load(self, row: SuiteRow) -> Suite:
        """The parsed suite of a stored version (memoized: versions are immutable)."""
        key = (row.name, row.version)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
        manifest = self.store.get_manifest(manifest_ref(row))
        files = {e.path: self.store.get_bytes(self.store.file_ref(e)) for e in manifest.files}
        suite = suite_from_files(files)
        if suite.version != row.version:
            raise RuntimeError(
                f"stored suite {row.name}@{row.version[:12]} parses as version "
                f"{suite.version[:12]}: the suite format changed; upload it again"
            )
        with self._lock:
            self._loaded[key] = suite
        return suite

    def list_suites(
        self, session: Session, *, name: str, offset: int, limit: int
    ) -> tuple[list[SuiteRow], int]:
        where = [SuiteRow.name == name] if name else []
        total = session.scalar(sa.select(sa.func.count()).select_from(SuiteRow).where(*where))
        rows = session.scalars(
            sa.select(SuiteRow)
            .where(*where)
            .order_by(SuiteRow.name, SuiteRow.created_at.desc(), SuiteRow.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        return list(rows), total or 0
