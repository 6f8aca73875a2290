"""The registry's own refusals. Each subclasses the posttrain.rpc error whose status it
should carry, so a servicer maps none of them, and says what to do about it."""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.rpc.errors import AlreadyExists, Conflict, FailedPrecondition


class BaseModelExists(AlreadyExists):
    def __init__(self, name: str, registered_sha256: str, new_sha256: str) -> None:
        super().__init__("base model", name)
        self.message = (
            f"base model {name!r} is already registered with weights sha256 "
            f"{registered_sha256} (this folder: {new_sha256}); a base model is immutable: "
            f"register the new weights under another name"
        )
        self.args = (self.message,)


class UnknownBaseModel(FailedPrecondition):
    """A version names a base model the registry does not know."""

    def __init__(self, version: str, base_model: str) -> None:
        super().__init__(
            f"{version} names base model {base_model!r}, which is not registered; register it "
            f"first (RegisterBaseModel / `posttrain models import-base`), then replay the event"
        )
        self.base_model = base_model


class WrongBaseModel(FailedPrecondition):
    """A version was trained on other weights than the registered base of that name."""

    def __init__(self, version: str, base_model: str, trained_on: str, registered: str) -> None:
        super().__init__(
            f"{version} was trained on base model {base_model!r} with weights sha256 "
            f"{trained_on}, but {base_model!r} is registered with weights sha256 {registered}: "
            f"it would not load on the registered base"
        )


class GateNotPassed(FailedPrecondition):
    """Promotion to production without a passing release-gate verdict."""

    def __init__(self, version_id: str, alias: str, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(
            f"cannot promote {version_id} to {alias}: "
            + "; ".join(self.reasons)
            + ". An operator may override the gate with override_gate and a reason"
        )


class AliasChanged(Conflict):
    def __init__(self, alias: str, revision: int | None, expected: int | None = None) -> None:
        if revision is None:
            text = f"alias {alias} was created by someone else meanwhile"
        elif expected is not None:
            text = (
                f"alias {alias} was changed by someone else (revision {revision}, "
                f"expected {expected})"
            )
        else:
            text = f"alias {alias} was changed by someone else (revision {revision})"
        super().__init__(text + "; read it again and retry")
        self.revision = revision
