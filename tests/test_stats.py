"""The statistics pass's approximations: where value counting stops, what goes on being
counted, and the percentile sample (``tfship.stats``)."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pytest
from tfship.stats import BYTES, FLOAT, INT, MAX_DISTINCT, SAMPLE, FeatureStats, TableStats


def fed(name: str, values: np.ndarray, batch: int, seed: int = 0) -> FeatureStats:
    """One feature's statistics, fed ``batch`` values at a time as the CSV reader gives them."""
    f = FeatureStats(name, seed=seed)
    for i in range(0, len(values), batch):
        f.update(pa.array(values[i : i + batch], pa.string()))
    f.finish()
    return f


@pytest.mark.parametrize("batch", [97, 4096])
def test_numbers_are_counted_exactly_up_to_the_limit_and_one_more_drops_the_counts(batch):
    at_limit = np.arange(MAX_DISTINCT).repeat(3).astype(str)
    f = fed("n", at_limit, batch)
    assert not f.many and f.type == INT
    assert f.distinct == MAX_DISTINCT and set(f.counts.values()) == {3}
    over = np.append(at_limit, str(MAX_DISTINCT))  # one more distinct number, last
    g = fed("n", over, batch)
    assert g.many and g.counts == {} and g.distinct == 0
    assert (g.min, g.max, g.numbers) == (0, MAX_DISTINCT, len(over))  # the rest is exact


def test_number_keys_are_written_as_the_csv_holds_them_and_merge_with_later_strings():
    f = fed("x", np.array(["3", "2.5", "3", "-0", "0", "n/a", "2.5"]), batch=5)
    assert f.type == BYTES  # "n/a" came last: the numbers before it keep their keys
    assert f.counts == {"3": 2, "2.5": 2, "0": 2, "n/a": 1}


@pytest.mark.parametrize("batch", [50, 1000])
def test_strings_past_the_limit_go_on_counting_the_values_already_counted(batch):
    first = np.array([f"v{i}" for i in range(MAX_DISTINCT)])
    rng = np.random.default_rng(0)
    later = np.where(rng.random(3000) < 0.5, rng.choice(first, 3000), np.arange(3000).astype(str))
    f = fed("s", np.concatenate([first, ["w"], later]), batch)
    assert f.many and f.type == BYTES and set(f.counts) == set(first)
    known = later[np.isin(later, first)]
    assert sum(f.counts.values()) == MAX_DISTINCT + len(known)  # the new ones are not counted
    assert f.present - sum(f.counts.values()) == 1 + (len(later) - len(known))


def test_strings_are_trimmed_blank_is_missing_and_tokens_are_weighted_by_count():
    f = fed("t", np.array(["red", " red", "red ", "  ", "dark blue", "dark blue", ""]), batch=4)
    assert f.counts == {"red": 3, "dark blue": 2}
    assert (f.count, f.missing, f.tokens) == (7, 2, 3 + 2 * 2)


def test_a_column_that_starts_as_numbers_is_typed_by_all_its_values():
    ints_then_float = np.array([str(i) for i in range(100)] + ["1.5"])
    assert fed("a", ints_then_float, batch=1000).type == FLOAT
    numbers_then_words = np.array([str(i) for i in range(100)] + ["many words here"])
    f = fed("b", numbers_then_words, batch=1000)
    assert f.type == BYTES and f.counts["many words here"] == 1 and f.counts["99"] == 1


@pytest.mark.parametrize("batch", [333, 8192])
def test_the_sample_is_the_values_with_the_smallest_keys_of_the_features_stream(batch):
    """The reservoir drops a batch's values whose key cannot enter it before merging: the
    sample must still be exactly the SAMPLE smallest keys of the whole stream (a uniform
    sample), the same for any batch size."""
    n, seed = 60_000, 5
    values = np.random.default_rng(1).normal(size=n).round(6)
    f = FeatureStats("x", seed=seed)
    for i in range(0, n, batch):
        f.update(pa.array(values[i : i + batch]))
    f.finish()
    keys = np.random.default_rng([seed, zlib.crc32(b"x")]).random(n)
    want = values[np.argsort(keys)[:SAMPLE]]
    assert len(f._sample) == SAMPLE
    assert np.array_equal(np.sort(f._sample), np.sort(want))


def test_the_sample_of_a_uniform_stream_is_uniform():
    t = TableStats(seed=3)
    for i in range(0, 200_000, 10_000):  # values 0..199999, in order: a biased sample shows
        t.update({"u": np.arange(i, i + 10_000)})
    f = t.finish().features["u"]
    # a uniform sample of 10,000: its deciles are within ~1% of the population's (the
    # standard error of a decile is 0.3%; fixed seed, so this is not a coin flip either)
    deciles = np.array(f.percentiles[10:100:10]) / 200_000
    assert np.allclose(deciles, np.arange(0.1, 1.0, 0.1), atol=0.015)


def test_whole_numbers_in_a_small_range_or_a_wide_one_are_counted_alike():
    """Small ranges are counted with a bincount, wide ones with value_counts: same result."""
    small = fed("s", np.array(["-3", "7", "7", "-3", "7", "0"]), batch=4)
    wide = fed("w", np.array(["-3", "7", "7", "-3", "7", "0", "100000"]), batch=4)
    assert small.counts == {"-3": 2, "7": 3, "0": 1}
    assert wide.counts == {"-3": 2, "7": 3, "0": 1, "100000": 1}


def test_reading_the_features_waits_for_the_batch_still_being_folded_in(monkeypatch):
    """``update`` returns while the pool folds the batch in; whoever reads ``features`` then
    (a regression baseline's mean did) must get the whole batch, not a count short of it."""
    import threading

    from tfship import stats as st

    go = threading.Event()
    fold = st.FeatureStats.update

    def held(self, values):
        go.wait(30)
        return fold(self, values)

    monkeypatch.setattr(st, "_workers", lambda: 2)
    monkeypatch.setattr(st.FeatureStats, "update", held)
    table = TableStats()
    table.update({"x": pa.array(["1", "2", "3"], pa.string())})
    read: list[int] = []
    reader = threading.Thread(target=lambda: read.append(table.features["x"].count))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive(), "features was read before the batch was folded in"
    go.set()
    reader.join(30)
    assert read == [3]
