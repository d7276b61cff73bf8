"""Three-way merge of model files, tensor by tensor: the core of the ``merge=theta`` driver.

Git gives a merge driver the three *stored* versions of the file, which for a
tracked model are manifests. The merge is specified in docs/merge.md; in short:

1. Each tensor is merged on its own, by name. A tensor that one side changed
   (added, removed, modified) takes that side's version. A tensor that both
   sides changed in different ways is settled by the :class:`Strategy`, or is
   a conflict. Changing a dtype or shape on both sides, and modifying a tensor
   that the other side removed, are always conflicts.
2. The rest of the file (its *frame*: ``data.pkl`` for a torch zip, the
   header's ``__metadata__`` for safetensors) comes from the side that changed
   it, and from ours when both did, provided that side's frame can hold the
   merged tensors. A torch zip's frame can only hold its own set of tensors.
3. The merged file is built from the frame and the chosen objects (see
   :mod:`.formats.torch_zip_writer` and :mod:`.formats.safetensors_writer`)
   and streamed through :func:`~.clean.clean` like any other file, which
   stores it and gives the manifest that the driver hands back to git.

Nothing here runs a pickle or imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from .clean import clean
from .errors import ThetaError
from .formats.layout import SplicedFile
from .formats.safetensors_writer import new_safetensors_file, read_stored_safetensors
from .formats.torch_zip_writer import StoredTorchZip, read_stored_torch_zip
from .manifest import Manifest, ManifestError, TensorEntry, looks_like_manifest
from .merge_values import COMBINABLE_DTYPES, InexactCombinationError, combine_objects
from .stats import Statistician
from .store.local import LocalStore
from .store.object_format import ObjectHeader

__all__ = [
    "STRATEGY_CONFIG_KEY",
    "STRATEGY_ENVIRONMENT",
    "MergeError",
    "InvalidStrategyError",
    "Strategy",
    "choose_strategy",
    "Outcome",
    "TensorMerge",
    "MergeResult",
    "plan_merge",
    "merge_manifests",
    "change_norm",
]

STRATEGY_CONFIG_KEY = "theta.merge.strategy"
STRATEGY_ENVIRONMENT = "GIT_THETA_MERGE_STRATEGY"
_STRATEGY_NAMES = ("conflict", "ours", "theirs", "base", "average", "weighted:<alpha>")


class MergeError(ThetaError):
    """A merge that failed for a reason other than a conflict."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot merge: {reason}")
        self.path = path
        self.reason = reason


class InvalidStrategyError(ThetaError):
    def __init__(self, value: str) -> None:
        super().__init__(
            f"unknown merge strategy {value!r}",
            hint=f"use one of {', '.join(_STRATEGY_NAMES)} (0 <= alpha <= 1) in "
            f"{STRATEGY_CONFIG_KEY} or {STRATEGY_ENVIRONMENT}",
        )
        self.value = value


@dataclass(frozen=True)
class Strategy:
    """How to settle a tensor that both sides changed.

    ``theirs_weight`` is α for the strategies that combine values:
    ``(1 − α)·ours + α·theirs``; ``average`` is α = 0.5.
    """

    name: str
    theirs_weight: float | None = None

    @classmethod
    def parse(cls, text: str) -> Strategy:
        text = text.strip()
        if text in ("conflict", "ours", "theirs", "base"):
            return cls(text)
        if text == "average":
            return cls("average", 0.5)
        if text.startswith("weighted:"):
            try:
                alpha = float(text[len("weighted:") :])
            except ValueError:
                raise InvalidStrategyError(text) from None
            if not 0.0 <= alpha <= 1.0:  # also refuses NaN
                raise InvalidStrategyError(text)
            return cls("weighted", alpha)
        raise InvalidStrategyError(text)

    def __str__(self) -> str:
        return f"weighted:{self.theirs_weight}" if self.name == "weighted" else self.name


def choose_strategy(configured: str | None, environment: str | None) -> Strategy:
    """The environment's strategy, else the configured one, else ``conflict``."""
    for value in (environment, configured):
        if value:
            return Strategy.parse(value)
    return Strategy("conflict")


class Outcome(str, Enum):  # noqa: UP042 - StrEnum would change str()/format() of members
    UNCHANGED = "unchanged"  # neither side changed it
    OURS = "ours"  # only ours changed it, or the strategy chose ours
    THEIRS = "theirs"
    SAME = "same"  # both sides made the same change
    BASE = "base"  # both changed it; the strategy kept the base version
    COMBINED = "combined"  # both changed it; the strategy combined the values
    CONFLICT = "conflict"


@dataclass(frozen=True)
class TensorMerge:
    """One tensor's three versions (None: absent on that side) and how they merge."""

    name: str
    base: TensorEntry | None
    ours: TensorEntry | None
    theirs: TensorEntry | None
    outcome: Outcome
    reason: str = ""

    @property
    def chosen(self) -> TensorEntry | None:
        """The version the merged file gets, for outcomes that pick one
        (None: the tensor is dropped).
        """
        if self.outcome in (Outcome.UNCHANGED, Outcome.OURS, Outcome.SAME):
            return self.ours
        if self.outcome is Outcome.THEIRS:
            return self.theirs
        if self.outcome is Outcome.BASE:
            return self.base
        raise ValueError(f"{self.name}: a {self.outcome.value} tensor picks no side")


def _kind(entry: TensorEntry) -> tuple[str, tuple[int, ...]]:
    return entry.dtype, entry.shape


def _describe(entry: TensorEntry) -> str:
    return f"{entry.dtype} [{','.join(map(str, entry.shape))}]"


def _change(side: str, base: TensorEntry | None, new: TensorEntry | None) -> str:
    verb = "added" if base is None else "removed" if new is None else "changed"
    return f"{verb} by {side}"


def _merge_tensor(
    name: str,
    base: TensorEntry | None,
    ours: TensorEntry | None,
    theirs: TensorEntry | None,
    strategy: Strategy,
) -> TensorMerge:
    def settle(outcome: Outcome, reason: str) -> TensorMerge:
        return TensorMerge(name, base, ours, theirs, outcome, reason)

    if ours == theirs:
        return (
            settle(Outcome.UNCHANGED, "")
            if ours == base
            else settle(Outcome.SAME, _change("both", base, ours))
        )
    if ours == base:
        return settle(Outcome.THEIRS, _change("theirs", base, theirs))
    if theirs == base:
        return settle(Outcome.OURS, _change("ours", base, ours))
    # Both sides changed it, in different ways.
    if ours is None or theirs is None:
        return settle(
            Outcome.CONFLICT, f"{_change('ours', base, ours)}, {_change('theirs', base, theirs)}"
        )
    kinds = {_kind(ours), _kind(theirs)} | ({_kind(base)} if base is not None else set())
    if len(kinds) > 1:
        sides = [("base", base), ("ours", ours), ("theirs", theirs)]
        return settle(
            Outcome.CONFLICT,
            "dtype or shape changed: "
            + ", ".join(f"{side} {_describe(e)}" for side, e in sides if e is not None),
        )
    both = "changed on both sides" if base is not None else "added on both sides"
    if strategy.name == "conflict":
        return settle(Outcome.CONFLICT, both)
    if strategy.name == "ours":
        return settle(Outcome.OURS, both)
    if strategy.name == "theirs":
        return settle(Outcome.THEIRS, both)
    if strategy.name == "base":
        if base is None:
            return settle(Outcome.CONFLICT, f"{both}: there is no base version")
        return settle(Outcome.BASE, both)
    if (ours.offset, ours.stride) != (theirs.offset, theirs.stride):
        return settle(Outcome.CONFLICT, f"{both}, as views of different parts of their storages")
    if ours.dtype not in COMBINABLE_DTYPES:
        return settle(Outcome.CONFLICT, f"{both}; {ours.dtype} values are not combined")
    return settle(Outcome.COMBINED, both)


def _by_name(manifest: Manifest | None) -> dict[str, TensorEntry]:
    return {tensor.name: tensor for tensor in manifest.tensors} if manifest is not None else {}


def plan_merge(
    base: Manifest | None, ours: Manifest, theirs: Manifest, strategy: Strategy
) -> list[TensorMerge]:
    """How each tensor merges, sorted by name; ``base`` is None when both sides added the file."""
    base_tensors, ours_tensors, theirs_tensors = _by_name(base), _by_name(ours), _by_name(theirs)
    names = sorted(base_tensors.keys() | ours_tensors.keys() | theirs_tensors.keys())
    return [
        _merge_tensor(
            name, base_tensors.get(name), ours_tensors.get(name), theirs_tensors.get(name), strategy
        )
        for name in names
    ]


@dataclass
class MergeResult:
    """The merged manifest, or why there is none: conflicting tensors,
    or ``problem`` for the file as a whole.
    """

    path: str
    strategy: Strategy
    tensors: list[TensorMerge]
    manifest: bytes | None = None
    problem: str | None = None
    frame_from: str | None = None  # the side the non-tensor content came from

    @property
    def conflicts(self) -> list[TensorMerge]:
        return [tensor for tensor in self.tensors if tensor.outcome is Outcome.CONFLICT]


class _Unmergeable(Exception):
    """The tensors merged, but no file can hold the result."""


Layout = dict[str, tuple[str, tuple[int, ...], int | None, tuple[int, ...] | None]]


def _layout(entries: list[TensorEntry]) -> Layout:
    return {e.name: (e.dtype, e.shape, e.offset, e.stride) for e in entries}


def _parse_side(side: str, data: bytes, path: str) -> Manifest:
    if not looks_like_manifest(data):
        raise _Unmergeable(
            f"{side} is not a git-theta manifest (a file committed before it was tracked?)"
        )
    try:
        return Manifest.parse(data)
    except ManifestError as exc:
        raise MergeError(path, f"{side}: {exc}") from None


def merge_manifests(
    base: bytes, ours: bytes, theirs: bytes, store: LocalStore, strategy: Strategy, path: str
) -> MergeResult:
    """Merge three stored versions of ``path`` (``base`` is empty when both sides added it).

    The merged file's objects and skeleton are written to ``store``. Raises
    :class:`MergeError` for a merge that fails for another reason than a
    conflict (an unreadable manifest, a missing object).
    """
    if ours == theirs or theirs == base:
        return MergeResult(path, strategy, [], manifest=ours, frame_from="ours")
    if ours == base:
        return MergeResult(path, strategy, [], manifest=theirs, frame_from="theirs")
    try:
        sides = {
            "base": _parse_side("base", base, path) if base else None,
            "ours": _parse_side("ours", ours, path),
            "theirs": _parse_side("theirs", theirs, path),
        }
    except _Unmergeable as exc:
        return MergeResult(path, strategy, [], problem=str(exc))
    formats = {manifest.format for manifest in sides.values() if manifest is not None}
    if "opaque" in formats:
        return MergeResult(path, strategy, [], problem="an opaque file has no tensors to merge")
    if len(formats) > 1:
        return MergeResult(
            path,
            strategy,
            [],
            problem=f"the versions differ in format ({', '.join(sorted(formats))})",
        )
    tensors = plan_merge(sides["base"], sides["ours"], sides["theirs"], strategy)  # type: ignore[arg-type]
    merge = _FileMerge(path, store, sides, tensors)
    if merge.conflicted:
        return MergeResult(path, strategy, merge.tensors)
    try:
        merge.combine_values(strategy)
        if merge.conflicted:
            return MergeResult(path, strategy, merge.tensors)
        spliced, expected, frame_from = merge.build()
    except _Unmergeable as exc:
        return MergeResult(path, strategy, merge.tensors, problem=str(exc))
    # The merged manifest's sha256 vouches for these bytes, and clean takes each payload
    # that equals its object for that object: so every one must be what its id says.
    for oid in dict.fromkeys(spliced.payload_oids()):
        store.ensure_verified(oid, path)
    manifest = _store_file(spliced, store, path)
    got = Manifest.parse(manifest).tensors
    if sorted(got, key=lambda t: t.name) != sorted(expected, key=lambda t: t.name):
        raise MergeError(
            path, "the merged file does not hold the merged tensors (a bug: please report it)"
        )
    return MergeResult(path, strategy, merge.tensors, manifest=manifest, frame_from=frame_from)


class _FileMerge:
    """Turns the per-tensor outcomes into objects, then into a file."""

    def __init__(
        self,
        path: str,
        store: LocalStore,
        sides: dict[str, Manifest | None],
        tensors: list[TensorMerge],
    ) -> None:
        self.path = path
        self.store = store
        self.sides = sides
        self.tensors = tensors
        self.combined: dict[tuple[str, str], str] = {}  # (ours oid, theirs oid) -> combined oid

    @property
    def conflicted(self) -> bool:
        return any(t.outcome is Outcome.CONFLICT for t in self.tensors)

    def combine_values(self, strategy: Strategy) -> None:
        """Write the objects of combined tensors;
        a tensor that cannot be combined exactly becomes a conflict.
        """
        for index, tensor in enumerate(self.tensors):
            if tensor.outcome is not Outcome.COMBINED:
                continue
            assert (
                tensor.ours is not None
                and tensor.theirs is not None
                and strategy.theirs_weight is not None
            )
            pair = (tensor.ours.oid, tensor.theirs.oid)
            if pair in self.combined:
                continue
            ours, theirs = self._header(pair[0]), self._header(pair[1])
            if (ours.dtype, ours.shape) != (theirs.dtype, theirs.shape):
                reason = "their storages differ in type or size"
            elif ours.dtype != tensor.ours.dtype:
                # Storages are combined element by element in their own type; a storage
                # that also holds other types is stored as bytes, whose average is not
                # the average of this tensor's values.
                reason = f"their storage is {ours.dtype}, not {tensor.ours.dtype}"
            else:
                try:
                    self.combined[pair] = combine_objects(self.store, *pair, strategy.theirs_weight)
                    continue
                except InexactCombinationError:
                    reason = "integers beyond 2**53 cannot be combined exactly in float64"
            self.tensors[index] = replace(
                tensor, outcome=Outcome.CONFLICT, reason=f"{tensor.reason}; {reason}"
            )

    def _header(self, oid: str) -> ObjectHeader:
        file, header = self.store.open_object(oid, self.path)
        file.close()
        return header

    def result_entry(self, tensor: TensorMerge) -> TensorEntry | None:
        """The merged tensor line: the chosen version, or ours' line with the combined object."""
        if tensor.outcome is Outcome.COMBINED:
            assert tensor.ours is not None and tensor.theirs is not None
            return tensor.ours._replace(oid=self.combined[(tensor.ours.oid, tensor.theirs.oid)])
        return tensor.chosen

    def merged_entries(self) -> list[TensorEntry]:
        return [
            entry for tensor in self.tensors if (entry := self.result_entry(tensor)) is not None
        ]

    def frame_order(self, frame_of: dict[str, object]) -> list[str]:
        """The sides whose frame to try, best first: the one that changed it; ours when both did."""
        base = frame_of.get("base")
        if base is not None and frame_of["ours"] == base and frame_of["theirs"] != base:
            return ["theirs", "ours"]
        return ["ours", "theirs"]

    def build(self) -> tuple[SplicedFile, list[TensorEntry], str]:
        """The merged file, the tensor lines its manifest must have,
        and the side its frame came from.
        """
        if self.sides["ours"].format == "torch-zip":  # type: ignore[union-attr]
            return self._build_torch_zip()
        return self._build_safetensors()

    def _build_torch_zip(self) -> tuple[SplicedFile, list[TensorEntry], str]:
        archives: dict[str, StoredTorchZip] = {
            side: read_stored_torch_zip(manifest, self.store, self.path)
            for side, manifest in self.sides.items()
            if manifest is not None
        }
        frames: dict[str, object] = {side: archive.data_pkl for side, archive in archives.items()}
        merged = {entry.name: entry for entry in self.merged_entries()}
        wanted = _layout(list(merged.values()))
        for side in self.frame_order(frames):
            if _layout(archives[side].manifest.tensors) == wanted:
                break
        else:
            raise _Unmergeable(
                "both sides changed which tensors the file holds, and a torch zip's data.pkl "
                "can only hold its own (" + _set_changes(self.tensors) + ")"
            )
        archive = archives[side]
        payloads: dict[str, str] = {}
        decided_by: dict[str, str] = {}
        for name, key in sorted(archive.storage_of_tensor.items()):
            oid = merged[name].oid
            if payloads.setdefault(key, oid) != oid:
                raise _Unmergeable(
                    f"tensors {decided_by[key]!r} and {name!r} share a storage in {side} "
                    "but merge to different values"
                )
            decided_by[key] = name
        for key, oid in payloads.items():
            self._check_frame_object(oid, archive.storage_splice(key).oid, decided_by[key])
        expected = [
            entry._replace(oid=payloads[archive.storage_of_tensor[entry.name]])
            for entry in archive.manifest.tensors
        ]
        return archive.with_payloads(payloads, self.store), expected, side

    def _check_frame_object(self, oid: str, frame_oid: str, name: str) -> None:
        """A storage's new object must be typed as the frame's object for it,
        so the file has its layout.
        """
        if oid == frame_oid:
            return
        new, frame = self._header(oid), self._header(frame_oid)
        if (new.dtype, new.shape) != (frame.dtype, frame.shape):
            raise _Unmergeable(f"the storage of {name!r} is laid out differently on the two sides")

    def _build_safetensors(self) -> tuple[SplicedFile, list[TensorEntry], str]:
        stored = {
            side: read_stored_safetensors(manifest, self.store, self.path)
            for side, manifest in self.sides.items()
            if manifest is not None
        }
        metadata_of: dict[str, object] = {side: file.metadata for side, file in stored.items()}
        order = self.frame_order(metadata_of)
        metadata = stored[order[0]].metadata
        entries = self.merged_entries()
        wanted = {entry.name: _kind(entry) for entry in entries}
        for side in order:
            if stored[side].layout() == wanted and stored[side].metadata == metadata:
                payloads = {entry.name: entry.oid for entry in entries}
                return stored[side].with_payloads(payloads), entries, side
        return new_safetensors_file(entries, metadata), entries, order[0]


def _set_changes(tensors: list[TensorMerge]) -> str:
    changes = []
    for tensor in tensors:
        if tensor.outcome in (Outcome.OURS, Outcome.THEIRS) and (
            tensor.ours is None
            or tensor.theirs is None
            or _kind(tensor.ours) != _kind(tensor.theirs)
        ):
            changes.append(f"{tensor.name}: {tensor.reason}")
    return "; ".join(changes[:4]) + (" ..." if len(changes) > 4 else "")


def _store_file(spliced: SplicedFile, store: LocalStore, path: str) -> bytes:
    """Clean the merged file into the store, as ``git add`` would; returns its manifest."""
    warnings: list[str] = []
    # Every payload is already an object: compare instead of hashing and writing them again.
    with store.expecting(spliced.payload_oids()):
        manifest = clean(spliced.reader(store), store, path, warn=warnings.append)
    if warnings:
        raise MergeError(
            path, f"the merged file does not read back as a model file ({warnings[0]})"
        )
    return manifest


def change_norm(
    stats: Statistician, base: TensorEntry | None, side: TensorEntry | None
) -> float | None:
    """‖side − base‖₂, with a missing base counting as zeros; None when it cannot be computed.

    None also for a removed tensor, a changed dtype or shape, non-float
    tensors, and objects missing from the store.
    """
    if side is None:
        return None
    try:
        if base is None:
            own = stats.tensor_stats(side)
            return own.norm if own is not None else None
        if _kind(base) != _kind(side):
            return None
        return stats.delta_stats(base, side).delta_norm
    except ThetaError:
        return None
