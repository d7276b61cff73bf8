"""Statistics of stored tensors: norms and deltas against torch in float64, views, the cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import loose_object

from git_theta_filter.dtypes import TORCH_DTYPE_NAMES
from git_theta_filter.elements import (
    CHUNK_ELEMENTS,
    TensorExtentError,
    element_type,
    iter_chunk_pairs,
)
from git_theta_filter.manifest import TensorEntry
from git_theta_filter.metrics import (
    AmbiguousMetricError,
    MetricsFileError,
    UnknownMetricError,
    default_direction,
    flatten,
    parse_metrics_file,
    resolve_metric,
)
from git_theta_filter.stats import Statistician, tensor_stats_of
from git_theta_filter.stats_cache import CACHE_FILE, StatsCache, layout_key
from git_theta_filter.store.local import LocalStore, ObjectMissingError

# More elements than one chunk, so that chunks are combined.
SHAPE = (3, CHUNK_ELEMENTS // 2 + 123)
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INTEGERS = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
MANIFEST_NAME = {
    getattr(torch, name): code for name, code in TORCH_DTYPE_NAMES.items() if hasattr(torch, name)
}


@pytest.fixture
def theta_dir(tmp_path: Path) -> Path:
    return tmp_path / "theta"


@pytest.fixture
def stats(theta_dir: Path) -> Statistician:
    return Statistician.for_repo(theta_dir)


def random_tensor(
    dtype: torch.dtype, shape: tuple[int, ...] = SHAPE, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator, dtype=torch.float64) * 3).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) > 0.5
    info = torch.iinfo(dtype)
    return torch.randint(
        max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, generator=generator, dtype=dtype
    )


def store_tensor(store: LocalStore, name: str, tensor: torch.Tensor) -> TensorEntry:
    """Write ``tensor`` as an object of its own dtype
    (the filter's layout) and return its tensor line.
    """
    dtype = MANIFEST_NAME[tensor.dtype]
    payload = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    oid = store.write_bytes(payload, dtype, tuple(tensor.shape))
    return TensorEntry(name, dtype, tuple(tensor.shape), oid)


def torch_norm(tensor: torch.Tensor) -> float:
    return torch.linalg.vector_norm(tensor.double()).item()


@pytest.mark.parametrize("dtype", FLOATS + INTEGERS, ids=str)
def test_stats_norm_matches_torch_in_float64(stats: Statistician, dtype: torch.dtype) -> None:
    tensor = random_tensor(dtype)
    result = stats.tensor_stats(store_tensor(stats.store, "t", tensor))
    assert result is not None and result.numel == tensor.numel()
    assert result.norm == pytest.approx(torch_norm(tensor), rel=1e-9)
    assert result.min == tensor.double().min().item() and result.max == tensor.double().max().item()
    assert result.nan_count == result.inf_count == 0


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_stats_delta_matches_torch_in_float64(stats: Statistician, dtype: torch.dtype) -> None:
    old = random_tensor(dtype, seed=1)
    new = old.clone()
    new.view(-1)[::5] = (new.view(-1)[::5].double() + 0.75).to(dtype)
    old_entry, new_entry = store_tensor(stats.store, "t", old), store_tensor(stats.store, "t", new)
    delta = stats.delta_stats(old_entry, new_entry)
    difference = new.double() - old.double()
    assert delta.numel == old.numel()
    assert delta.delta_norm == pytest.approx(torch_norm(difference), rel=1e-9)
    assert delta.dot == pytest.approx(
        torch.dot(old.double().flatten(), new.double().flatten()).item(), rel=1e-9
    )
    assert delta.max_abs_delta == difference.abs().max().item()
    assert delta.changed_count == int((old != new).sum())
    # The pass also filled both tensors' statistics into the cache.
    assert (
        stats.cache.get_tensor(old_entry) is not None
        and stats.cache.get_tensor(new_entry) is not None
    )


def test_stats_integer_delta_counts_changes_only(stats: Statistician) -> None:
    old = torch.arange(1000, dtype=torch.int64)
    new = old.clone()
    new[[3, 500]] = -1
    delta = stats.delta_stats(
        store_tensor(stats.store, "i", old), store_tensor(stats.store, "i", new)
    )
    assert delta.changed_count == 2 and delta.delta_norm is None and delta.dot is None


def test_stats_nan_and_inf_are_counted_and_kept_out_of_min_max(stats: Statistician) -> None:
    tensor = torch.linspace(-2, 5, CHUNK_ELEMENTS * 2)
    tensor[[7, CHUNK_ELEMENTS + 1]] = float("nan")
    tensor[[0, 9]] = torch.tensor([float("-inf"), float("inf")])
    result = stats.tensor_stats(store_tensor(stats.store, "t", tensor))
    assert (result.nan_count, result.inf_count) == (2, 2)
    finite = tensor[torch.isfinite(tensor)]
    assert (result.min, result.max) == (finite.min().item(), finite.max().item())
    assert math.isnan(result.norm)
    # NaN survives the cache (SQLite stores it as NULL).
    cached = Statistician.for_repo(stats.store.theta_dir).tensor_stats(
        store_tensor(stats.store, "t", tensor)
    )
    assert cached is not None and math.isnan(cached.sum_squares) and cached.nan_count == 2


def test_stats_all_float8_codes_decode_as_torch_does() -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    for name, torch_dtype in [
        ("F8_E4M3", torch.float8_e4m3fn),
        ("F8_E5M2", torch.float8_e5m2),
        ("F8_E4M3FNUZ", torch.float8_e4m3fnuz),
        ("F8_E5M2FNUZ", torch.float8_e5m2fnuz),
        ("F8_E8M0", torch.float8_e8m0fnu),
    ]:
        decoded = np.empty(256)
        element_type(name).decode(codes.numpy(), decoded)
        np.testing.assert_array_equal(
            decoded, codes.view(torch_dtype).double().numpy(), err_msg=name
        )


def test_stats_bf16_is_decoded_from_its_bits_without_torch() -> None:
    values = torch.tensor(
        [0.0, -0.0, 1.0, -2.5, 3.0e38, 1.0e-40, float("inf"), float("nan")]
    ).bfloat16()
    decoded = np.empty(len(values))
    element_type("BF16").decode(values.view(torch.int16).numpy().view(np.uint16), decoded)
    np.testing.assert_array_equal(decoded, values.double().numpy())


@pytest.mark.parametrize("view", ["slice", "strided", "transposed", "scalar"])
def test_stats_views_of_a_flat_object(stats: Statistician, view: str) -> None:
    storage = random_tensor(torch.float32, (CHUNK_ELEMENTS * 2 + 50,), seed=3)
    flat = store_tensor(stats.store, "storage", storage)
    tensor, offset, stride = {
        "slice": (storage[100:5100], 100, (1,)),
        "strided": (storage[7::3], 7, (3,)),
        "transposed": (storage[:60000].view(300, 200).t(), 0, (1, 200)),
        "scalar": (storage[42], 42, ()),
    }[view]
    entry = TensorEntry("v", "F32", tuple(tensor.shape), flat.oid, offset, stride)
    result = stats.tensor_stats(entry)
    assert (
        result.norm == pytest.approx(torch_norm(tensor), rel=1e-9)
        and result.numel == tensor.numel()
    )
    # A view next to another of the same shape: the delta walks both in row-major order.
    other = TensorEntry("v", "F32", tuple(tensor.shape), flat.oid, offset + 1, stride)
    shifted = storage.as_strided(tensor.shape, tensor.stride(), offset + 1)
    delta = stats.delta_stats(entry, other)
    assert delta.delta_norm == pytest.approx(
        torch_norm(shifted.double() - tensor.double()), rel=1e-9
    )


def test_stats_refuse_a_view_past_the_end_of_its_object(stats: Statistician) -> None:
    flat = store_tensor(stats.store, "storage", torch.zeros(10))
    hostile = TensorEntry("v", "F32", (4,), flat.oid, 2, (3,))  # reaches element 11 of 10
    with pytest.raises(TensorExtentError, match="reaches past the end of object"):
        stats.tensor_stats(hostile)


def test_stats_cache_serves_without_the_object_and_missing_objects_raise(
    stats: Statistician, theta_dir: Path
) -> None:
    old, new = random_tensor(torch.float32, (100,), 4), random_tensor(torch.float32, (100,), 5)
    old_entry, new_entry = store_tensor(stats.store, "a", old), store_tensor(stats.store, "a", new)
    expected_delta = stats.delta_stats(old_entry, new_entry)
    expected_old = stats.tensor_stats(old_entry)
    assert (theta_dir / "stats" / CACHE_FILE).is_file()
    for entry in (old_entry, new_entry):
        path = loose_object(stats.store, entry.oid)
        path.chmod(0o644)
        path.unlink()
    fresh = Statistician.for_repo(theta_dir)
    assert fresh.tensor_stats(old_entry) == expected_old
    assert fresh.delta_stats(old_entry, new_entry) == expected_delta
    assert fresh.bytes_read == 0
    # Another reading of the same object (a view) is another key, and needs the object.
    view = TensorEntry("a", "F32", (10,), old_entry.oid, 5, (1,))
    assert layout_key(view) == "F32[10]@5[1]" and layout_key(old_entry) == "F32[100]"
    with pytest.raises(ObjectMissingError) as raised:
        fresh.tensor_stats(view)
    assert raised.value.oid == old_entry.oid


def test_stats_cache_that_cannot_be_written_falls_back_to_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cache = StatsCache(blocker / "stats")
    entry = TensorEntry("t", "F32", (1,), "0" * 64)
    cache.put_tensor(entry, 1, 4.0, 2.0, 2.0, 0, 0)
    assert cache.get_tensor(entry) == (1, 4.0, 2.0, 2.0, 0, 0)
    assert "statistics cache unavailable" in capsys.readouterr().err


def test_chunk_pairs_of_two_shapes_are_refused_even_where_numpy_would_broadcast() -> None:
    # (3,) broadcasts against (2, 3): without the check, a delta would pair the
    # old row with each new row and report a change that is not there.
    with pytest.raises(ValueError, match=r"shapes differ: \(2, 3\) and \(3,\)"):
        list(iter_chunk_pairs(np.zeros((2, 3)), np.zeros(3)))


def test_stats_complex_and_quantized_types_have_no_numbers(stats: Statistician) -> None:
    values = torch.randn(8, dtype=torch.complex64)
    entry = store_tensor(stats.store, "c", values)
    assert stats.tensor_stats(entry) is None
    changed = values.clone()
    changed[2] += 1j
    delta = stats.delta_stats(entry, store_tensor(stats.store, "c", changed))
    assert delta.changed_count == 1 and delta.delta_norm is None


def test_stats_of_elements_without_a_numeric_reading_are_refused_when_asked_directly() -> None:
    # The Statistician answers None for these types; a direct call must not read
    # complex bits as numbers.
    with pytest.raises(ValueError, match="C64 has no numeric statistics"):
        tensor_stats_of(np.zeros(4, dtype=np.complex64).view("V8"), element_type("C64"))


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_flatten_nested_values_and_skip_the_rest() -> None:
    data = {
        "eval": {
            "acc": 0.9,
            "name": "dev",
            "ok": True,
            "per_class": [1, 2],
            "ids": list(range(20)),
        },
        "epoch": 3,
        "none": None,
    }
    assert flatten(data) == {
        "eval.acc": 0.9,
        "eval.ok": True,
        "eval.per_class.0": 1,
        "eval.per_class.1": 2,
        "epoch": 3,
    }


def test_metrics_files_in_json_toml_and_yaml() -> None:
    assert parse_metrics_file("m.json", b'{"a": {"b": 1.5}}') == {"a.b": 1.5}
    assert parse_metrics_file("m.toml", b"[a]\nb = 2\n") == {"a.b": 2}
    assert parse_metrics_file("m.yaml", b"a:\n  b: 3.5\n") == {"a.b": 3.5}
    with pytest.raises(MetricsFileError, match=r"metrics file m.json: not valid json"):
        parse_metrics_file("m.json", b"{")


def test_metrics_names_resolve_by_unambiguous_dotted_suffix() -> None:
    names = ["metrics.val_acc", "train.loss", "eval.loss", "epoch"]
    assert resolve_metric("val_acc", names) == "metrics.val_acc"
    assert resolve_metric("train.loss", names) == "train.loss"
    assert resolve_metric("epoch", names) == "epoch"
    with pytest.raises(AmbiguousMetricError, match="eval.loss, train.loss"):
        resolve_metric("loss", names)
    with pytest.raises(UnknownMetricError, match="no metric named 'acc'"):
        resolve_metric("acc", names)  # a suffix is a whole dotted component
    assert [default_direction(n) for n in ("val_loss", "eval.error_rate", "val_acc", "bleu")] == [
        "min",
        "min",
        "max",
        "max",
    ]


def test_stats_computed_ahead_on_threads_equal_those_computed_one_by_one(theta_dir: Path) -> None:
    store = LocalStore(theta_dir)
    olds = [
        store_tensor(store, f"t{i}", random_tensor(torch.float32, (5000,), seed=i))
        for i in range(6)
    ]
    news = [
        store_tensor(store, f"t{i}", random_tensor(torch.float32, (5000,), seed=i + 50))
        for i in range(6)
    ]
    lone = store_tensor(store, "lone", random_tensor(torch.bfloat16, (300,), seed=99))
    gone = store_tensor(store, "gone", torch.ones(3))
    loose_object(store, gone.oid).chmod(0o644)
    loose_object(store, gone.oid).unlink()
    threaded = Statistician(store, StatsCache(None), workers=3)
    threaded.compute_ahead([*zip(olds, news, strict=True), (gone, gone)], [*olds, lone, gone])
    assert threaded.bytes_read == sum(e.nbytes for e in [*olds, *news, lone])
    serial = Statistician(store, StatsCache(None), workers=1)
    for old, new in zip(olds, news, strict=True):
        assert threaded.delta_stats(old, new) == serial.delta_stats(old, new)
        assert threaded.tensor_stats(new) == serial.tensor_stats(new)
    assert threaded.tensor_stats(lone) == serial.tensor_stats(lone)
    with pytest.raises(ObjectMissingError):  # the failure waits until it is asked for
        threaded.tensor_stats(gone)
