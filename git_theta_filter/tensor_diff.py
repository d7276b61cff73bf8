"""What changed between two versions of a model file, tensor by tensor.

Tensors are matched by name. A tensor is ``added`` or ``removed`` when only
one side has it, ``retyped`` when its dtype or shape changed, ``unchanged``
when both sides read the same bytes the same way (same oid and layout, or a
view whose elements are bitwise equal), and ``modified`` otherwise.

Tensors fall in two groups: optimizer state (see :func:`is_optimizer_state`)
and the model (everything else). θ is the model's floating tensors laid end
to end; ‖θ‖, ‖Δθ‖ and the "changed n/m" count are all over θ. A tensor that
one side lacks counts as zeros on that side: ‖Δθ‖² sums the modified
tensors' ‖new−old‖², the added tensors' ‖new‖² and the removed ones'
‖old‖²; ‖Δθ‖/‖θ‖ divides by the old side's ‖θ‖. A retyped tensor of one
shape is compared element by element; of another shape it counts as removed
and added. The optimizer state's floating tensors get the same ‖Δ‖, apart.

Statistics come from a :class:`~.stats.Statistician`; when an object is
missing and its statistics are not cached, the numbers that need it are None
and ``missing_objects`` says how many objects were lacking.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath

from .elements import Kind, element_type
from .manifest import Manifest, TensorEntry
from .metrics import Metric, is_number
from .stats import DeltaStats, Statistician, TensorStats
from .store.local import ObjectMissingError

__all__ = [
    "TensorStatus",
    "TensorGroup",
    "TensorDiff",
    "DiffSummary",
    "MetricChange",
    "ManifestDiff",
    "diff_manifests",
    "diff_metrics",
    "is_optimizer_state",
    "tensor_group",
    "new_bytes",
]


class TensorStatus(str, Enum):  # noqa: UP042 - StrEnum would change str()/format() of members
    MODIFIED = "modified"
    ADDED = "added"
    REMOVED = "removed"
    RETYPED = "retyped"
    UNCHANGED = "unchanged"


class TensorGroup(str, Enum):  # noqa: UP042 - as TensorStatus
    MODEL = "model"
    OPTIMIZER = "optimizer"


@dataclass
class TensorDiff:
    name: str
    status: TensorStatus
    old: TensorEntry | None
    new: TensorEntry | None
    old_stats: TensorStats | None = None
    new_stats: TensorStats | None = None
    delta: DeltaStats | None = None
    objects_missing: bool = False  # some numbers are None because an object is not in the store
    group: TensorGroup = TensorGroup.MODEL

    @property
    def is_float(self) -> bool:
        return all(
            element_type(e.dtype).kind is Kind.FLOAT for e in (self.old, self.new) if e is not None
        )

    @property
    def in_theta(self) -> bool:
        """Whether either side of this tensor is part of θ (a floating model tensor)."""
        return self.group is TensorGroup.MODEL and any(
            _is_float(entry) for entry in (self.old, self.new)
        )

    @property
    def delta_norm(self) -> float | None:
        return self.delta.delta_norm if self.delta is not None else None

    @property
    def relative_change(self) -> float | None:
        """‖new−old‖/‖old‖; None when unknown or ‖old‖ is 0."""
        if self.delta_norm is None or self.old_stats is None or not self.old_stats.sum_squares:
            return None
        return self.delta_norm / self.old_stats.norm

    @property
    def cosine_similarity(self) -> float | None:
        if (
            self.delta is None
            or self.delta.dot is None
            or self.old_stats is None
            or self.new_stats is None
        ):
            return None
        denominator = self.old_stats.norm * self.new_stats.norm
        return self.delta.dot / denominator if denominator else None

    @property
    def changed_fraction(self) -> float | None:
        if self.delta is None or self.delta.delta_sum_squares is None:
            return None
        return self.delta.changed_fraction


@dataclass
class DiffSummary:
    """Counts by status over every tensor compared; norms and θ counts over θ alone."""

    modified: int = 0
    added: int = 0
    removed: int = 0
    retyped: int = 0
    unchanged: int = 0
    old_norm: float | None = None
    new_norm: float | None = None
    delta_norm: float | None = None
    theta_tensors: int = 0  # θ's tensors in the new version (the old one for a removed file)
    theta_changed: int = 0  # θ's tensors that differ in any way
    optimizer_tensors: int = 0  # optimizer-state tensors on either side
    optimizer_changed: int = 0
    optimizer_delta_norm: float | None = None  # ‖Δ‖ over the optimizer's floating tensors
    missing_objects: int = 0
    non_finite: int = 0  # NaN and ±inf elements on the new side

    @property
    def changed(self) -> int:
        """Tensors that differ in any way: modified, added, removed or retyped."""
        return self.modified + self.added + self.removed + self.retyped

    @property
    def relative_change(self) -> float | None:
        if self.delta_norm is None or not self.old_norm:
            return None
        return self.delta_norm / self.old_norm


@dataclass
class ManifestDiff:
    tensors: list[TensorDiff] = field(default_factory=list)
    summary: DiffSummary = field(default_factory=DiffSummary)


def _status(old: TensorEntry | None, new: TensorEntry | None) -> TensorStatus:
    if old is None:
        return TensorStatus.ADDED
    if new is None:
        return TensorStatus.REMOVED
    if old.dtype != new.dtype or old.shape != new.shape:
        return TensorStatus.RETYPED
    if (old.oid, old.offset, old.stride) == (new.oid, new.offset, new.stride):
        return TensorStatus.UNCHANGED
    return TensorStatus.MODIFIED


def _needs_delta(status: TensorStatus, old: TensorEntry, new: TensorEntry) -> bool:
    """Whether reading both tensors adds anything to what the manifests say."""
    if status is TensorStatus.MODIFIED:
        # A view can change oid while its own elements stay the same.
        return (
            element_type(old.dtype).kind is Kind.FLOAT
            or old.stride is not None
            or new.stride is not None
        )
    return (
        status is TensorStatus.RETYPED
        and old.shape == new.shape
        and element_type(old.dtype).kind is Kind.FLOAT
        and element_type(new.dtype).kind is Kind.FLOAT
    )


class _Totals:
    """Sums of squares toward the summary; any unknown term makes the total unknown."""

    def __init__(self) -> None:
        self.parts: list[float] = []
        self.known = True

    def add(self, value: float | None) -> None:
        if value is None:
            self.known = False
        else:
            self.parts.append(value)

    def norm(self) -> float | None:
        if not self.known:
            return None
        total = (
            sum(self.parts)
            if any(not math.isfinite(p) for p in self.parts)
            else math.fsum(self.parts)
        )
        return math.sqrt(total) if not math.isnan(total) else math.nan


TensorFilter = Callable[[str], bool]


def diff_manifests(
    old: Manifest | None,
    new: Manifest | None,
    stats: Statistician | None,
    select: TensorFilter | None = None,
    path: str = "",
) -> ManifestDiff:
    """Compare two versions of the file at ``path`` (None: the file is absent);
    without ``stats``, statuses only.

    With ``select``, only the tensors whose names it accepts are compared,
    counted and summed: the summary is then that of the selection.
    """
    old_tensors = (
        {t.name: t for t in old.tensors if select is None or select(t.name)} if old else {}
    )
    new_tensors = (
        {t.name: t for t in new.tensors if select is None or select(t.name)} if new else {}
    )
    result = ManifestDiff()
    for name in sorted(old_tensors.keys() | new_tensors.keys()):
        old_entry, new_entry = old_tensors.get(name), new_tensors.get(name)
        group = tensor_group(name, path)
        status = _status(old_entry, new_entry)
        result.tensors.append(TensorDiff(name, status, old_entry, new_entry, group=group))
    missing: set[str] = set()
    if stats is not None:
        entries = [*old_tensors.values(), *new_tensors.values()]
        stats.prefetch(entries)
        pairs = [
            (t.old, t.new)
            for t in result.tensors
            if t.old is not None and t.new is not None and _needs_delta(t.status, t.old, t.new)
        ]
        stats.compute_ahead(pairs, entries)
        for tensor in result.tensors:
            _fill_stats(tensor, stats, missing)
    _summarise(result, stats is not None)
    result.summary.missing_objects = len(missing)
    return result


def _fill_stats(tensor: TensorDiff, stats: Statistician, missing: set[str]) -> None:
    old, new = tensor.old, tensor.new
    try:
        if old is not None and new is not None and _needs_delta(tensor.status, old, new):
            tensor.delta = stats.delta_stats(old, new)
            if tensor.status is TensorStatus.MODIFIED and tensor.delta.changed_count == 0:
                tensor.status = TensorStatus.UNCHANGED
    except ObjectMissingError as exc:
        missing.add(exc.oid)
        tensor.objects_missing = True
    for side in ("old", "new"):
        entry = getattr(tensor, side)
        if entry is None:
            continue
        try:
            setattr(tensor, f"{side}_stats", stats.tensor_stats(entry))
        except ObjectMissingError as exc:
            missing.add(exc.oid)
            tensor.objects_missing = True
    if (
        tensor.status is TensorStatus.UNCHANGED
        and tensor.delta is None
        and tensor.old_stats is not None
        and tensor.is_float
        and old is not None
    ):
        # The same bytes read the same way: the change is known without reading it.
        tensor.delta = DeltaStats(old.numel, 0, 0.0, tensor.old_stats.sum_squares, 0.0)


# Key path components under which a checkpoint keeps optimizer state: plain
# state dicts (`optimizer`), Lightning (`optimizer_states`) and common variants.
OPTIMIZER_STATE_KEYS = frozenset(
    {"optimizer", "optimizers", "optimizer_states", "optimizer_state_dict", "optim", "opt_state"}
)


# File names whose every tensor is optimizer state: 🤗 Trainer's `optimizer.pt`, DeepSpeed's
# `*optim_states.pt`.
_OPTIMIZER_FILE = re.compile(r"(^|_)(optimizer|optim|optim_states)$")


def is_optimizer_state(name: str, path: str = "") -> bool:
    """Whether a tensor is optimizer state rather than a parameter.

    Adam's moments and step counters are floating tensors, but they are not θ:
    counting them would make ‖θ‖ follow the step count instead of the weights.
    A tensor is optimizer state when a component of its key path says so, or
    when its file (``path``) holds nothing else.
    """
    stem = PurePosixPath(path).name.split(".", 1)[0].lower()
    return bool(_OPTIMIZER_FILE.search(stem)) or not OPTIMIZER_STATE_KEYS.isdisjoint(
        name.split(".")
    )


def tensor_group(name: str, path: str = "") -> TensorGroup:
    return TensorGroup.OPTIMIZER if is_optimizer_state(name, path) else TensorGroup.MODEL


def _is_float(entry: TensorEntry | None) -> bool:
    return entry is not None and element_type(entry.dtype).kind is Kind.FLOAT


def _delta_squares(tensor: TensorDiff, totals: tuple[_Totals, _Totals, _Totals]) -> None:
    """Add one floating tensor's ‖old‖², ‖new‖² and ‖new−old‖² to (old, new, delta) totals."""
    old_total, new_total, delta_total = totals
    old, new = tensor.old, tensor.new
    old_float, new_float = _is_float(old), _is_float(new)
    old_squares = tensor.old_stats.sum_squares if tensor.old_stats else None
    new_squares = tensor.new_stats.sum_squares if tensor.new_stats else None
    if old_float:
        old_total.add(old_squares)
    if new_float:
        new_total.add(new_squares)
    if old_float and new_float and old is not None and new is not None and old.shape == new.shape:
        if tensor.status is TensorStatus.UNCHANGED:
            delta_total.add(0.0)
        else:
            delta_total.add(tensor.delta.delta_sum_squares if tensor.delta else None)
    else:
        # A tensor only one side has (or of another shape) differs from zeros by its own norm.
        if old_float:
            delta_total.add(old_squares)
        if new_float:
            delta_total.add(new_squares)


def _summarise(result: ManifestDiff, with_numbers: bool) -> None:
    summary = result.summary
    theta = (_Totals(), _Totals(), _Totals())
    optimizer = (_Totals(), _Totals(), _Totals())
    new_side_present = any(t.new is not None for t in result.tensors)
    for tensor in result.tensors:
        setattr(summary, tensor.status.value, getattr(summary, tensor.status.value) + 1)
        if tensor.new_stats is not None:
            summary.non_finite += tensor.new_stats.nan_count + tensor.new_stats.inf_count
        changed = tensor.status is not TensorStatus.UNCHANGED
        if tensor.group is TensorGroup.OPTIMIZER:
            summary.optimizer_tensors += 1
            summary.optimizer_changed += changed
        elif tensor.in_theta:
            counted_side = tensor.new if new_side_present else tensor.old
            summary.theta_tensors += _is_float(counted_side)
            summary.theta_changed += changed
        if with_numbers:
            _delta_squares(tensor, optimizer if tensor.group is TensorGroup.OPTIMIZER else theta)
    if with_numbers:
        old_total, new_total, delta_total = theta
        summary.old_norm = old_total.norm() if old_total.parts or not old_total.known else None
        summary.new_norm = new_total.norm() if new_total.parts or not new_total.known else None
        summary.delta_norm = delta_total.norm()
        if optimizer[2].parts or not optimizer[2].known:
            summary.optimizer_delta_norm = optimizer[2].norm()


@dataclass(frozen=True)
class MetricChange:
    name: str
    old: Metric | None
    new: Metric | None

    @property
    def change(self) -> float | int | None:
        if is_number(self.old) and is_number(self.new):
            return self.new - self.old  # type: ignore[operator]
        return None

    @property
    def changed(self) -> bool:
        if is_number(self.old) and is_number(self.new):
            return self.old != self.new
        return repr(self.old) != repr(self.new)  # NaN equals NaN here, and 1 differs from True


def diff_metrics(
    old: dict[str, Metric], new: dict[str, Metric], include_unchanged: bool
) -> list[MetricChange]:
    changes = [
        MetricChange(name, old.get(name), new.get(name)) for name in sorted(old.keys() | new.keys())
    ]
    return [c for c in changes if include_unchanged or c.changed]


def new_bytes(manifest: Manifest, new_oids: Iterable[str]) -> int:
    """The payload bytes of the objects in ``new_oids``, the objects that a version references
    and the version it is compared with does not ("new" in docs/store.md, "Sizes").

    A pure function of the manifest: the objects need not be present.
    """
    lengths = manifest.payload_lengths()
    return sum(lengths.get(oid, 0) for oid in new_oids)
