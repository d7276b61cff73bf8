"""merge: strategies, the per-tensor three-way rules, exact combination,
and the torch zip rewrite.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tensor_bytes

from git_theta_filter.clean import clean
from git_theta_filter.elements import open_elements
from git_theta_filter.formats.torch_zip_writer import ArchiveLayoutError, read_stored_torch_zip
from git_theta_filter.manifest import Manifest, TensorEntry
from git_theta_filter.merge import (
    InvalidStrategyError,
    MergeResult,
    Outcome,
    Strategy,
    choose_strategy,
    merge_manifests,
    plan_merge,
)
from git_theta_filter.merge_values import InexactCombinationError, combine_objects
from git_theta_filter.store.local import LocalStore

OID = {name: name * 64 for name in "abcdef"}


def entry(
    oid: str, shape: tuple[int, ...] = (4,), dtype: str = "F32", name: str = "t"
) -> TensorEntry:
    return TensorEntry(name, dtype, shape, OID[oid])


def manifest(*entries: TensorEntry) -> Manifest:
    return Manifest("safetensors", 0, "0" * 64, "0" * 64, tensors=list(entries))


def outcome(
    base: TensorEntry | None,
    ours: TensorEntry | None,
    theirs: TensorEntry | None,
    strategy: str = "conflict",
):  # type: ignore[no-untyped-def]
    sides = [manifest(*([e] if e else [])) for e in (base, ours, theirs)]
    (merged,) = plan_merge(sides[0], sides[1], sides[2], Strategy.parse(strategy))
    return merged.outcome, merged.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ours", Strategy("ours")),
        ("conflict", Strategy("conflict")),
        (" average ", Strategy("average", 0.5)),
        ("weighted:0.25", Strategy("weighted", 0.25)),
        ("weighted:1", Strategy("weighted", 1.0)),
    ],
)
def test_strategy_parse(text: str, expected: Strategy) -> None:
    assert Strategy.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["median", "weighted:", "weighted:x", "weighted:1.5", "weighted:-0.1", "weighted:nan"]
)
def test_strategy_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidStrategyError, match="unknown merge strategy"):
        Strategy.parse(text)


def test_strategy_environment_wins_over_config_and_conflict_is_the_default() -> None:
    assert choose_strategy("ours", "theirs") == Strategy("theirs")
    assert choose_strategy("ours", None) == Strategy("ours")
    assert choose_strategy(None, "") == Strategy("conflict")


@pytest.mark.parametrize(
    ("base", "ours", "theirs", "want", "reason"),
    [
        ("a", "a", "a", Outcome.UNCHANGED, ""),
        ("a", "b", "a", Outcome.OURS, "changed by ours"),
        ("a", "a", "b", Outcome.THEIRS, "changed by theirs"),
        ("a", "b", "b", Outcome.SAME, "changed by both"),
        (None, None, "b", Outcome.THEIRS, "added by theirs"),
        ("a", "a", None, Outcome.THEIRS, "removed by theirs"),
        ("a", None, "a", Outcome.OURS, "removed by ours"),
        ("a", None, None, Outcome.SAME, "removed by both"),
        ("a", "b", "c", Outcome.CONFLICT, "changed on both sides"),
        (None, "b", "c", Outcome.CONFLICT, "added on both sides"),
        ("a", None, "c", Outcome.CONFLICT, "removed by ours, changed by theirs"),
        ("a", "b", None, Outcome.CONFLICT, "changed by ours, removed by theirs"),
    ],
)
def test_plan_three_way_rules(base, ours, theirs, want, reason) -> None:  # type: ignore[no-untyped-def]
    e = lambda oid: entry(oid) if oid else None  # noqa: E731
    got = outcome(e(base), e(ours), e(theirs))
    assert got == (want, reason)


@pytest.mark.parametrize(
    ("strategy", "want"),
    [
        ("ours", Outcome.OURS),
        ("theirs", Outcome.THEIRS),
        ("base", Outcome.BASE),
        ("average", Outcome.COMBINED),
        ("weighted:0.1", Outcome.COMBINED),
    ],
)
def test_plan_strategy_settles_a_tensor_changed_on_both_sides(strategy: str, want: Outcome) -> None:
    assert outcome(entry("a"), entry("b"), entry("c"), strategy)[0] is want


def test_plan_strategy_limits() -> None:
    # A dtype or shape change on both sides, or on one side with a change on the other,
    # is always a conflict.
    got, reason = outcome(entry("a"), entry("b", (5,)), entry("c", (6,)), "theirs")
    assert (
        got is Outcome.CONFLICT
        and reason == "dtype or shape changed: base F32 [4], ours F32 [5], theirs F32 [6]"
    )
    assert outcome(entry("a"), entry("b", dtype="F16"), entry("c"), "ours")[0] is Outcome.CONFLICT
    # Removing and changing is a conflict whatever the strategy.
    assert outcome(entry("a"), None, entry("c"), "theirs")[0] is Outcome.CONFLICT
    # `base` has nothing to keep for a tensor both sides added.
    assert outcome(None, entry("b"), entry("c"), "base") == (
        Outcome.CONFLICT,
        "added on both sides: there is no base version",
    )
    # Values without an exact float64 round trip are not combined.
    got, reason = outcome(
        entry("a", dtype="C64"), entry("b", dtype="C64"), entry("c", dtype="C64"), "average"
    )
    assert got is Outcome.CONFLICT and reason.endswith("C64 values are not combined")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "theta")


def stored(store: LocalStore, tensor: torch.Tensor, dtype: str) -> str:
    data = tensor_bytes(tensor)
    return store.write_bytes(data, dtype, tuple(tensor.shape))


def object_values(store: LocalStore, oid: str, like: torch.Tensor) -> torch.Tensor:
    file, header = store.open_object(oid)
    with file:
        raw = bytearray(file.read(header.nbytes))
    return torch.frombuffer(raw, dtype=torch.uint8).view(like.dtype).reshape(like.shape)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (torch.float16, "F16"),
        (torch.bfloat16, "BF16"),
        (torch.float32, "F32"),
        (torch.float64, "F64"),
    ],
)
def test_combine_rounds_as_torch_does(store: LocalStore, dtype: torch.dtype, name: str) -> None:
    generator = torch.Generator().manual_seed(7)
    # 70 000 elements: more than one chunk,
    # and enough near-ties to catch a single-rounding shortcut.
    ours = torch.randn(70_000, generator=generator).to(dtype)
    theirs = (
        ours.double() + torch.randn(70_000, generator=generator, dtype=torch.float64) * 1e-3
    ).to(dtype)
    for alpha in (0.5, 0.3, 1.0):
        got = object_values(
            store,
            combine_objects(store, stored(store, ours, name), stored(store, theirs, name), alpha),
            ours,
        )
        want = ((1 - alpha) * ours.double() + alpha * theirs.double()).to(dtype)
        assert tensor_bytes(got) == tensor_bytes(want)


def test_combine_double_rounds_bf16_like_torch(store: LocalStore) -> None:
    # 1 + 2**-8 + 2**-40 lies just above the midpoint of two bf16 values; float32 first rounds it
    # onto the midpoint, and ties-to-even then goes down, as torch does.
    ours = torch.tensor([1.0], dtype=torch.float64)
    theirs = torch.tensor([1.0 + 2**-7 + 2**-39], dtype=torch.float64)
    ours16, theirs16 = ours.to(torch.bfloat16), theirs.to(torch.bfloat16)
    oid = combine_objects(
        store, stored(store, ours16, "BF16"), stored(store, theirs16, "BF16"), 0.5
    )
    want = (0.5 * ours16.double() + 0.5 * theirs16.double()).to(torch.bfloat16)
    assert tensor_bytes(object_values(store, oid, ours16)) == tensor_bytes(want)


def test_combine_integers_round_half_to_even_and_refuse_inexact_ones(store: LocalStore) -> None:
    ours = torch.tensor([1, 2, -3, 10], dtype=torch.int64)
    theirs = torch.tensor([2, 3, -2, 10], dtype=torch.int64)
    got = object_values(
        store,
        combine_objects(store, stored(store, ours, "I64"), stored(store, theirs, "I64"), 0.5),
        ours,
    )
    assert got.tolist() == [2, 2, -2, 10]
    huge = torch.tensor([2**60], dtype=torch.int64)
    with pytest.raises(InexactCombinationError, match="beyond 2\\*\\*53"):
        combine_objects(store, stored(store, huge, "I64"), stored(store, huge + 1, "I64"), 0.5)


def test_combine_refuses_objects_of_two_shapes_or_a_type_without_arithmetic(
    store: LocalStore,
) -> None:
    # (2, 3) and (3, 2) have the same bytes: without the check they would be
    # averaged element by element into a tensor of the first one's shape.
    wide, tall = torch.zeros(2, 3), torch.ones(3, 2)
    wide_oid, tall_oid = stored(store, wide, "F32"), stored(store, tall, "F32")
    with pytest.raises(ValueError, match=f"{wide_oid} and {tall_oid} differ in dtype or shape"):
        combine_objects(store, wide_oid, tall_oid, 0.5)
    fp8 = stored(store, torch.zeros(4, dtype=torch.float8_e4m3fn), "F8_E4M3")
    with pytest.raises(ValueError, match="F8_E4M3 values cannot be combined"):
        combine_objects(store, fp8, fp8, 0.5)


def test_combine_zero_size_and_zero_dim(store: LocalStore) -> None:
    empty = torch.zeros(0, 3)
    file, header = store.open_object(
        combine_objects(store, stored(store, empty, "F32"), stored(store, empty, "F32"), 0.5)
    )
    file.close()
    assert (header.dtype, header.shape, header.nbytes) == ("F32", (0, 3), 0)
    scalar_a, scalar_b = torch.tensor(1.0), torch.tensor(2.0)
    oid = combine_objects(
        store, stored(store, scalar_a, "F32"), stored(store, scalar_b, "F32"), 0.25
    )
    assert object_values(store, oid, scalar_a).item() == 1.25


def clean_file(store: LocalStore, path: Path) -> Manifest:
    with open(path, "rb", buffering=0) as file:
        return Manifest.parse(clean(file, store, path.name))


def test_torch_zip_rewrite_is_what_torch_save_writes(store: LocalStore, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, generator=generator)
    first = {"w": weight, "tied": weight, "b": torch.zeros(3), "c": torch.zeros(3), "step": 1}
    second = {"w": weight + 1, "tied": None, "b": torch.zeros(3), "c": torch.ones(3), "step": 1}
    second["tied"] = second["w"]
    path = tmp_path / "model.pth"
    torch.save(first, path)
    archive = read_stored_torch_zip(clean_file(store, path), store, "model.pth")
    assert archive.storage_of_tensor == {"w": "0", "tied": "0", "b": "1", "c": "2"}
    torch.save(second, path)
    new = {t.name: t.oid for t in clean_file(store, path).tensors}
    rewritten = archive.with_payloads({"0": new["w"], "1": new["b"], "2": new["c"]}, store)
    data = rewritten.reader(store).read(rewritten.size)
    assert data == path.read_bytes()


def test_torch_zip_rewrite_keeps_a_serialization_id_it_does_not_recognise(
    store: LocalStore, tmp_path: Path
) -> None:
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model/.data/serialization_id")
    # Another writer's id: other digits, with the CRCs
    # (data descriptor, central directory) to match.
    (name_length, extra_length) = struct.unpack_from("<HH", raw, info.header_offset + 26)
    data_offset = info.header_offset + 30 + name_length + extra_length
    raw[data_offset : data_offset + 40] = b"1" * 40
    crc = zlib.crc32(b"1" * 40)
    struct.pack_into("<I", raw, data_offset + 40 + 4, crc)
    central = raw.rindex(b"PK\x01\x02")  # the id is the last record
    struct.pack_into("<I", raw, central + 16, crc)
    path.write_bytes(bytes(raw))
    stored_zip = read_stored_torch_zip(clean_file(store, path), store, "model.pth")
    ones = store.write_bytes(np.ones(2, dtype=np.float32).tobytes(), "F32", (2,))
    rewritten = stored_zip.with_payloads({"0": ones}, store)
    data = rewritten.reader(store).read(rewritten.size)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every CRC checks
        assert archive.read("model/.data/serialization_id") == b"1" * 40
        assert archive.read("model/data/0") == np.ones(2, dtype=np.float32).tobytes()


def view_entry(oid: str, offset: int, stride: tuple[int, ...], dtype: str = "F32") -> TensorEntry:
    return TensorEntry("t", dtype, (4,), OID[oid], offset, stride)


@pytest.mark.parametrize("strategy", ["average", "weighted:0.25"])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (view_entry("b", 2, (1,)), view_entry("c", 4, (1,))),
        (view_entry("b", 0, (2,)), view_entry("c", 0, (1,))),
        (view_entry("b", 0, (1,)), entry("c")),
    ],
    ids=["offset", "stride", "view-and-whole"],
)
def test_plan_views_of_different_parts_of_their_storages_conflict(
    ours: TensorEntry, theirs: TensorEntry, strategy: str
) -> None:
    assert outcome(view_entry("a", 0, (1,)), ours, theirs, strategy) == (
        Outcome.CONFLICT,
        "changed on both sides, as views of different parts of their storages",
    )


def merge_states(
    store: LocalStore, tmp_path: Path, states: list[dict[str, torch.Tensor]], strategy: str
) -> MergeResult:
    """merge_manifests over three torch.save'd states (base, ours, theirs), cleaned into
    ``store``.
    """
    manifests = [cleaned_state(store, tmp_path, state) for state in states]
    return merge_manifests(*manifests, store, Strategy.parse(strategy), "model.pth")


def cleaned_state(store: LocalStore, tmp_path: Path, state: dict[str, object]) -> bytes:
    """The manifest of ``state`` torch.save'd and cleaned into ``store``."""
    path = tmp_path / "model.pth"
    torch.save(state, path)
    with open(path, "rb", buffering=0) as file:
        return clean(file, store, "model.pth")


@pytest.mark.parametrize("strategy", ["average", "weighted:0.25"])
@pytest.mark.parametrize(
    "theirs_view",
    [slice(4, 10), slice(0, 18, 3), slice(1, 13, 2)],
    ids=["offset", "stride", "offset-and-stride"],
)
def test_merge_of_views_that_moved_within_their_storage_is_a_conflict(
    store: LocalStore, tmp_path: Path, theirs_view: slice, strategy: str
) -> None:
    # Combining the two storages element by element would mix ours' elements 2..7 with
    # other elements of theirs: the views do not cover the same elements.
    storage = torch.randn(20, generator=torch.Generator().manual_seed(3))
    states = [{"v": storage[2:8]}, {"v": (storage + 1)[2:8]}, {"v": (storage + 2)[theirs_view]}]
    result = merge_states(store, tmp_path, states, strategy)
    (tensor,) = result.tensors
    assert result.manifest is None and tensor.outcome is Outcome.CONFLICT, tensor
    assert tensor.reason == "changed on both sides, as views of different parts of their storages"


@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_merge_of_views_at_one_place_combines_the_views_own_elements(
    store: LocalStore, tmp_path: Path, alpha: float
) -> None:
    generator = torch.Generator().manual_seed(4)
    storage = torch.randn(24, generator=generator)
    grid = lambda s: s.view(4, 6)[1:, 1:4]  # noqa: E731 - offset 7, stride [6, 1]
    ours_storage = storage + torch.randn(24, generator=generator)
    theirs_storage = storage + torch.randn(24, generator=generator)
    strategy = "average" if alpha == 0.5 else f"weighted:{alpha}"
    states = [{"v": grid(s)} for s in (storage, ours_storage, theirs_storage)]
    result = merge_states(store, tmp_path, states, strategy)
    assert result.manifest is not None, result.tensors
    (merged,) = Manifest.parse(result.manifest).tensors
    assert (merged.offset, merged.stride) == (7, (6, 1))
    got = torch.from_numpy(np.array(open_elements(store, merged)))
    want = ((1 - alpha) * grid(ours_storage).double() + alpha * grid(theirs_storage).double()).to(
        torch.float32
    )
    assert tensor_bytes(got) == tensor_bytes(want)


class _SharedStorage:
    """Stands for the one storage of :func:`two_dtypes_one_storage` in the pickle."""


_SHARED = _SharedStorage()


class _TensorOfShared:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __reduce__(self):  # type: ignore[no-untyped-def]
        args = (_SHARED, 0, (4,), (1,), False, collections.OrderedDict(), self.dtype)
        return torch._utils._rebuild_tensor_v3, args


class _SharedPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        return ("storage", torch.UntypedStorage, "0", "cpu", 16) if obj is _SHARED else None


def two_dtypes_one_storage(values: list[float]) -> bytes:
    """A torch zip whose F32 tensor ``a`` and I32 tensor ``b`` share one 16-byte storage
    (torch.save refuses to write this; a crafted file can).
    """
    pkl = io.BytesIO()
    _SharedPickler(pkl, protocol=2).dump(
        {"a": _TensorOfShared(torch.float32), "b": _TensorOfShared(torch.int32)}
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("archive/data.pkl", pkl.getvalue())
        zip_file.writestr("archive/byteorder", "little")
        zip_file.writestr("archive/data/0", np.array(values, dtype=np.float32).tobytes())
        zip_file.writestr("archive/version", "3\n")
    return archive.getvalue()


def test_merge_of_tensors_whose_storage_holds_another_type_is_a_conflict(
    store: LocalStore, tmp_path: Path
) -> None:
    # The storage is stored as U8 bytes; averaging bytes is not averaging a's floats
    # (it made 8.0 and 4.0 into 3.0).
    manifests = []
    for values in ([1, 2, 3, 4], [1.5, 2, 3, 4], [1, 2, 3, 8]):
        (tmp_path / "model.pth").write_bytes(two_dtypes_one_storage(values))
        with open(tmp_path / "model.pth", "rb", buffering=0) as file:
            manifests.append(clean(file, store, "model.pth"))
    assert {t.dtype for t in Manifest.parse(manifests[0]).tensors} == {"F32", "I32"}
    result = merge_manifests(*manifests, store, Strategy.parse("average"), "model.pth")
    assert result.manifest is None
    assert {t.name: t.reason for t in result.conflicts} == {
        "a": "changed on both sides; their storage is U8, not F32",
        "b": "changed on both sides; their storage is U8, not I32",
    }


def test_merge_with_a_side_that_is_not_a_manifest_is_a_problem_naming_that_side(
    store: LocalStore, tmp_path: Path
) -> None:
    # A file committed before it was tracked reaches the driver as its raw bytes: that is
    # a file no merge can hold, not a broken manifest.
    base, ours = (cleaned_state(store, tmp_path, {"v": torch.ones(2) * k}) for k in (1, 2))
    result = merge_manifests(base, ours, b"PK\x03\x04raw bytes", store, Strategy("ours"), "m.pth")
    assert result.manifest is None and result.tensors == []
    assert result.problem == (
        "theirs is not a git-theta manifest (a file committed before it was tracked?)"
    )


def test_merge_of_a_view_whose_storage_changed_size_into_the_other_side_s_frame_is_a_problem(
    store: LocalStore, tmp_path: Path
) -> None:
    # Theirs keeps v's place in its storage but shrinks the storage; ours changes only the
    # epoch, so both frames changed and ours' data.pkl, which expects the 20-element
    # storage, is kept. Splicing theirs' 10 elements into it would misplace them.
    storage = torch.randn(20, generator=torch.Generator().manual_seed(5))
    states = [
        {"v": storage[2:8], "epoch": 1},
        {"v": storage[2:8], "epoch": 2},
        {"v": (storage[:10] + 1)[2:8], "epoch": 1},
    ]
    result = merge_states(store, tmp_path, states, "conflict")
    assert [t.outcome for t in result.tensors] == [Outcome.THEIRS]
    assert result.manifest is None
    assert result.problem == "the storage of 'v' is laid out differently on the two sides"


# A 4-element view at element 2 of a 12-element storage: "F32 [4] <oid> offset=2 stride=[1]".
_VIEW = torch.arange(12.0)[2:6]


@pytest.mark.parametrize(
    ("v", "line", "crafted", "reason"),
    [
        (torch.arange(4.0), b"v F32 [4] ", b"v I32 [4] ", "as F32 [4], the manifest as I32 [4]"),
        (torch.arange(4.0), b"v F32 [4] ", b"v F32 [2] ", "as F32 [4], the manifest as F32 [2]"),
        (
            _VIEW,
            b" offset=2 stride=[1]\n",
            b" offset=0 stride=[1]\n",
            "as F32 [4] offset=2 stride=[1], the manifest as F32 [4] offset=0 stride=[1]",
        ),
        (
            _VIEW,
            b" offset=2 stride=[1]\n",
            b" offset=2 stride=[2]\n",
            "as F32 [4] offset=2 stride=[1], the manifest as F32 [4] offset=2 stride=[2]",
        ),
    ],
    ids=["dtype", "shape", "offset", "stride"],
)
def test_merge_with_a_side_whose_tensor_lines_disagree_with_its_data_pkl_is_refused(
    store: LocalStore,
    tmp_path: Path,
    v: torch.Tensor,
    line: bytes,
    crafted: bytes,
    reason: str,
) -> None:
    # Theirs is a crafted manifest: its line for v says other than its data.pkl does. The
    # merged file built on theirs' data.pkl could not hold the tensor the line promises:
    # theirs is refused as it is read, naming the file and the tensor, not reported as a
    # bug of the driver when the merged file does not read back as the merged lines.
    base = cleaned_state(store, tmp_path, {"v": v, "w": torch.zeros(1)})
    ours = cleaned_state(store, tmp_path, {"v": v, "w": torch.ones(1)})
    theirs = base.replace(line, crafted)
    assert theirs != base and Manifest.parse(theirs)  # still a valid, canonical manifest
    with pytest.raises(ArchiveLayoutError) as error:
        merge_manifests(base, ours, theirs, store, Strategy("conflict"), "model.pth")
    assert str(error.value) == (
        f"model.pth: cannot rewrite the torch zip: data.pkl has tensor 'v' {reason}"
    )
