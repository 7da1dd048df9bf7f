"""What planning produces: each render validated and priced, and what a run would do with it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

from kling_batch import kling_o3
from kling_batch.assets import Asset
from kling_batch.kling_o3 import KlingO3Request
from kling_batch.pricing import Price

if TYPE_CHECKING:
    from kling_batch.recall import RememberedJob

Action = Literal["new", "changed", "retry", "resume", "restore", "unchanged", "uncertain"]
PAID_ACTIONS: frozenset[str] = frozenset({"new", "changed", "retry"})
ACTIONS: tuple[Action, ...] = (
    "new",
    "changed",
    "retry",
    "resume",
    "restore",
    "uncertain",
    "unchanged",
)


class Deferred(Protocol):
    """JSON text to read when first needed."""

    def read(self) -> bytes:
        """The text."""


@dataclass(frozen=True, slots=True)
class PlannedRender:
    """One render, validated and priced: what would be sent and what it would cost.

    `fields` are the request fields as the manifest gave them (templates rendered); the
    `request` model is built from them when first asked for, so a plan whose renders come
    from the plan cache builds no model for renders nobody looks at (issue 13). For the
    same reason `fields_data` and `body_data` may be JSON text kept in the plan cache's
    file (`Deferred`), read and decoded on first use.
    """

    id: str
    shot: str
    take: int
    fields_data: Mapping[str, Any] | Deferred
    body_data: Mapping[str, Any] | Deferred
    assets: Mapping[str, Asset]
    workflow: kling_o3.ResolvedWorkflow
    price: Price
    fingerprint: str
    output: PurePosixPath
    tags: tuple[str, ...]
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]
    model: KlingO3Request | None = field(default=None, compare=False, repr=False)
    # Local files the manifest names for this render that its workflow does not send:
    # still read (a video's length, a file's size: refusals and warnings), so they are
    # checked like the assets sent; never part of the fingerprint.
    unsent: Mapping[str, Asset] = field(default_factory=dict)

    @property
    def fields(self) -> Mapping[str, Any]:
        """The request fields as the manifest gave them, templates rendered."""
        if not isinstance(self.fields_data, Mapping):
            object.__setattr__(self, "fields_data", json.loads(self.fields_data.read()))
        assert isinstance(self.fields_data, Mapping)
        return self.fields_data

    @property
    def body(self) -> Mapping[str, Any]:
        """The request as sent (before local media become upload paths)."""
        if not isinstance(self.body_data, Mapping):
            object.__setattr__(self, "body_data", json.loads(self.body_data.read()))
        assert isinstance(self.body_data, Mapping)
        return self.body_data

    @property
    def request(self) -> KlingO3Request:
        """The validated request (built from `fields` on first use)."""
        if self.model is None:
            object.__setattr__(self, "model", KlingO3Request.model_validate(self.fields))
        assert self.model is not None
        return self.model

    @property
    def tier(self) -> str:
        """The model tier, without building the request model."""
        if self.model is not None:
            return self.model.model_tier
        return str(self.body.get("model_tier", "pro"))

    @property
    def sound(self) -> bool:
        """Whether the render has sound, without building the request model."""
        if self.model is not None:
            return self.model.sound
        return bool(self.body.get("sound", True))

    @property
    def seconds(self) -> Decimal:
        """Billed seconds."""
        return self.price.seconds

    @property
    def cost(self) -> Decimal:
        """Estimated cost in USD, to the tenth of a cent."""
        return self.price.cost

    @property
    def asset_hashes(self) -> dict[str, str]:
        """Field → content hash of each local asset, as the lockfile records them."""
        return {key: a.sha256 for key, a in self.assets.items() if a.sha256 is not None}


@dataclass(frozen=True, slots=True)
class RestoreSource:
    """Where a free restore comes from: a local file, the local cache, a result URL, the
    team's shared store (`remote`), or a twin: another render of this plan with the same
    fingerprint (copied once it lands; its hash is not known yet)."""

    kind: Literal["file", "cache", "url", "remote", "twin"]
    sha256: str
    size: int
    path: Path | None = None
    url: str | None = None
    twin: str | None = None
    job_id: str | None = None  # a URL's job, asked for a fresh URL if the URL is refused


@dataclass(frozen=True, slots=True)
class PlanItem:
    """A render and what the run would do with it."""

    render: PlannedRender
    action: Action
    reasons: tuple[str, ...] = ()
    restore: RestoreSource | None = None
    # The id whose in-flight job this render takes over (a renamed shot, a new take).
    adopt: str | None = None
    # A lockfile entry no longer in the manifest whose job is followed to its end; its
    # video goes to the render cache only.
    stray: bool = False
    # A job (or unanswered submission) an earlier run made for this very request that the
    # lockfile does not record (`kling_batch.recall`): resumed, or looked for, not paid again.
    recalled: RememberedJob | None = None

    @property
    def paid(self) -> bool:
        """True when the run would pay for this render."""
        return self.action in PAID_ACTIONS


@dataclass(frozen=True, slots=True)
class Orphan:
    """A lockfile entry whose render is no longer in the manifest."""

    id: str
    state: str
    output: str
