"""Statistics per feature of a table, computed in one streaming pass with bounded memory.

A :class:`TableStats` takes batches of columns (``update``) and keeps, per feature: rows seen
and missing, the narrowest type every present value fits (INT, then FLOAT, then BYTES, as
TFDV's CSV decoder infers them), min/max/mean/std for numbers, value counts, token counts
for text, and a uniform random sample of :data:`SAMPLE` numbers (random keys, so the sample
is the same whatever the batch size) from which percentiles are taken. Memory is bounded by
those caps, not by the data's size. ``to_dict()`` is what the data manifest stores, and what
drift (``schema.drift``) compares a new snapshot with.

Value counts, and where they stop being exact: a feature's first :data:`MAX_DISTINCT`
distinct values (in row order; for numbers, distinct numbers) are counted; one more marks
it ``many``. Strings then go on
counting those known values (validation needs them: the share of a categorical feature's
values outside its domain), new ones are not counted. Numbers stop counting altogether and
their counts are dropped: a number's counts serve only a small domain (an integer label's
classes); a many-valued number is described by its range and percentiles (schema, drift),
and counting it would cost a hash lookup per value for nothing.

The pass is built for throughput (``bench/table_stats.py``): each batch's strings are
parsed to numbers once (``pyarrow.compute.cast``), strings are counted by their distinct
values (``value_counts``, then trimming and token counts on those few values only), and the
sample admits a batch's numbers only under the current sample's largest key. No Python loop
runs per value, only per new distinct value. A batch's columns are folded in on a few threads
while the next batch is read (``TableStats.update``): each column has its own state and
random stream, so the result is the same as one thread's.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tfship.extras import lazy_module

# The train extra; deploy imports this module through tables and verify (tfship.extras).
pa = lazy_module("pyarrow")
pc = lazy_module("pyarrow.compute")

MAX_DISTINCT = 1000  # distinct values counted per feature; more marks it "many"
SAMPLE = 10_000  # numbers kept per feature for percentiles
SMALL_RANGE = 1 << 16  # whole numbers within this range are counted with a bincount
PERCENTILES = np.linspace(0, 100, 101)

INT, FLOAT, BYTES = "INT", "FLOAT", "BYTES"  # schema.proto's FeatureType names
_WIDER = {INT: 0, FLOAT: 1, BYTES: 2}


@dataclass
class FeatureStats:
    """What one pass learned about one feature."""

    name: str
    type: str = INT  # narrowest type every present value fits so far
    count: int = 0  # rows seen
    missing: int = 0  # rows with no value (empty cell)
    min: float = math.inf
    max: float = -math.inf
    total: float = 0.0
    total_sq: float = 0.0
    numbers: int = 0  # present values that parsed as numbers
    counts: dict[str, int] = field(default_factory=dict)  # see the module's doc
    many: bool = False  # more than MAX_DISTINCT distinct values were seen
    tokens: int = 0  # whitespace-separated tokens over present values
    percentiles: list[float] = field(default_factory=list)  # set by finish()
    seed: int = 0
    _rng: np.random.Generator | None = field(default=None, repr=False)
    _known: pa.Array | None = field(default=None, repr=False)  # counts' keys, once many
    _number_keys: dict[float, str] = field(default_factory=dict, repr=False)  # counted numbers
    _keys: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    _sample: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    _keys_max: float = field(default=1.0, repr=False)  # the largest kept key, once SAMPLE
    _pending: list = field(default_factory=list, repr=False)  # (keys, numbers) not merged yet
    _pending_n: int = field(default=0, repr=False)

    @property
    def present(self) -> int:
        return self.count - self.missing

    @property
    def present_fraction(self) -> float:
        return self.present / self.count if self.count else 0.0

    @property
    def mean(self) -> float:
        return self.total / self.numbers if self.numbers else math.nan

    @property
    def std(self) -> float:
        if not self.numbers:
            return math.nan
        return math.sqrt(max(0.0, self.total_sq / self.numbers - self.mean**2))

    @property
    def distinct(self) -> int:
        return len(self.counts)

    @property
    def avg_tokens(self) -> float:
        return self.tokens / self.present if self.present else 0.0

    def update(self, values: np.ndarray | pa.Array) -> None:
        """Fold one batch of this feature's values in: strings (``""`` or null = missing,
        surrounding spaces ignored) or numbers (null or ``NaN`` = missing), as an Arrow array
        (what the readers give) or a NumPy one. The work is vectorised (pyarrow.compute)."""
        arr = values if isinstance(values, pa.Array) else _to_arrow(np.asarray(values))
        n = len(arr)
        self.count += n
        t = arr.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            nums = arr.cast(pa.float64()).drop_null()  # typed numbers: Parquet, TFRecord
            nums = nums.to_numpy(zero_copy_only=False)
            nums = nums[~np.isnan(nums)]
            self.missing += n - len(nums)
            if pa.types.is_floating(t) and (
                not np.all(np.isfinite(nums)) or np.any(nums != np.round(nums))
            ):
                self._widen(FLOAT)
            self._count_numbers(nums)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            strings = arr.drop_null()
            nums = None
            if self.type != BYTES:
                nums = self._parse(strings, final=False)  # a number's cells parse as they are
                if nums is None:  # spaces around, blanks, or strings
                    trimmed = pc.utf8_trim_whitespace(strings)
                    trimmed = trimmed.filter(pc.not_equal(trimmed, ""))
                    nums = self._parse(trimmed)
                    if nums is not None:
                        self.missing += len(strings) - len(trimmed)
            self.missing += n - len(strings)
            if nums is None:  # text or categorical: count the strings themselves
                self._count_strings(strings)
            else:
                self._count_numbers(nums)
        else:
            raise ValueError(f"feature {self.name!r}: values of type {t} are not one per row")
        if nums is not None and len(nums) and self.type != BYTES:
            self.numbers += len(nums)
            self.min = min(self.min, float(nums.min()))
            self.max = max(self.max, float(nums.max()))
            self.total += float(nums.sum())
            self.total_sq += float(np.square(nums).sum())
            self._reservoir(nums)

    def _parse(self, strings: pa.Array, final: bool = True) -> np.ndarray | None:
        """The strings as numbers while the feature is numeric (widening INT -> FLOAT, and
        to BYTES on the first value that is no number if ``final``); None if they are not."""
        if self.type == BYTES:
            return None
        if not len(strings):
            return np.empty(0)
        if self.type == INT and _casts(strings, pa.int64()):
            try:
                return pc.cast(strings, pa.int64()).to_numpy().astype(np.float64)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        try:
            if not _casts(strings, pa.float64()):
                raise pa.ArrowInvalid("not numbers")
            nums = pc.cast(strings, pa.float64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if final:
                self._widen(BYTES)
            return None
        self._widen(FLOAT)
        return nums

    def _widen(self, to: str) -> None:
        if _WIDER[to] > _WIDER[self.type]:
            self.type = to

    def _count_numbers(self, nums: np.ndarray) -> None:
        """Count numbers by value; keys are written as a CSV would hold them (``3``, ``2.5``).
        More than MAX_DISTINCT distinct keys: many, and the counts are dropped (see the
        module's doc). The keys are formatted once per new number, not once per batch."""
        if self.many or not len(nums):
            return
        lo = float(nums.min())
        if self.type == INT and float(nums.max()) - lo < SMALL_RANGE:
            # Whole numbers in a small range (classes, ages, counts): bincount is a tenth of
            # value_counts' cost. The order of the values does not matter for numbers.
            bins = np.bincount((nums - lo).astype(np.int64))
            at = np.flatnonzero(bins)
            values, times = (at + lo).tolist(), bins[at].tolist()
        else:
            counted = pc.value_counts(pa.array(nums, pa.float64()))
            values = counted.field(0).to_numpy(zero_copy_only=False).tolist()
            times = counted.field(1).to_numpy().tolist()
        keyof = self._number_keys  # every distinct number counted so far -> its key
        # A continuous number is many on its first batch, without looking values up.
        fresh = values if len(values) > MAX_DISTINCT else [v for v in values if v not in keyof]
        if len(keyof) + len(fresh) > MAX_DISTINCT:
            self.many = True
            self.counts, self._number_keys = {}, {}
            return
        if fresh:
            keyof.update(zip(fresh, number_keys(np.array(fresh)).tolist(), strict=True))
        own = self.counts
        for v, c in zip(values, times, strict=True):
            k = keyof[v]
            own[k] = own.get(k, 0) + c

    def _count_strings(self, strings: pa.Array) -> None:
        """Count strings (surrounding spaces ignored, blank = missing) and their tokens.
        The batch is reduced to its distinct values first (``value_counts``): trimming,
        blanks and tokens are then worked out once per distinct value, weighted by its count."""
        if not len(strings):
            return
        counted = pc.value_counts(strings)  # in order of first appearance
        values = pc.utf8_trim_whitespace(counted.field(0))
        weights = counted.field(1)
        blank = pc.equal(values, "")
        if pc.any(blank).as_py():
            self.missing += int(pc.sum(weights.filter(blank)).as_py())
            keep = pc.invert(blank)
            values, weights = values.filter(keep), weights.filter(keep)
        if not len(values):
            return
        spaces = pc.count_substring(values, " ")  # tokens: spaces between, plus one
        self.tokens += int(pc.sum(pc.multiply(pc.add(spaces, 1), weights)).as_py())
        if self.many:  # only the values already counted are counted on
            if self._known is None:
                self._known = pa.array(list(self.counts), pa.string())
            known = pc.is_in(values, value_set=self._known)
            values, weights = values.filter(known), weights.filter(known)
        own = self.counts
        for k, c in zip(values.to_pylist(), weights.to_pylist(), strict=True):
            if k in own:  # two raw values trimmed to one key add up here
                own[k] += c
            elif len(own) < MAX_DISTINCT:
                own[k] = c
            else:
                self.many = True

    def _reservoir(self, nums: np.ndarray) -> None:
        """Keep the SAMPLE numbers with the smallest random keys (a uniform sample). Each
        value draws its key from the feature's own stream, so the sample does not depend
        on the batch size. A key at or above the largest kept one can never enter the
        sample, so those values are dropped at once (after the first SAMPLE values, most
        are); the few others wait in ``_pending`` and are merged (one ``argpartition``)
        when there are SAMPLE of them, or by ``finish``."""
        if self._rng is None:  # one stream per feature: the sample ignores batch sizes
            self._rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode())])
        keys = self._rng.random(len(nums))
        admit = keys < self._keys_max
        if not admit.all():
            keys, nums = keys[admit], nums[admit]
        if len(keys):
            self._pending.append((keys, nums))
            self._pending_n += len(keys)
            if self._pending_n >= SAMPLE:
                self._merge_sample()

    def _merge_sample(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self._keys, *(k for k, _ in self._pending)])
        sample = np.concatenate([self._sample, *(v for _, v in self._pending)])
        self._pending, self._pending_n = [], 0
        if len(keys) > SAMPLE:
            keep = np.argpartition(keys, SAMPLE)[:SAMPLE]
            keys, sample = keys[keep], sample[keep]
        self._keys, self._sample = keys, sample
        if len(keys) == SAMPLE:
            self._keys_max = float(keys.max())

    def finish(self) -> None:
        """Percentiles from the sample (called once the pass is over)."""
        self._merge_sample()
        if len(self._sample):
            self.percentiles = [float(v) for v in np.percentile(self._sample, PERCENTILES)]

    def to_dict(self) -> dict:
        """Plain JSON; numbers rounded so the file reads well and compares exactly."""
        d = {
            "name": self.name,
            "type": self.type,
            "count": self.count,
            "missing": self.missing,
            "distinct": self.distinct,
            "many": self.many,
            "counts": dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        if self.type != BYTES and self.numbers:
            d.update(
                numbers=self.numbers,
                min=self.min,
                max=self.max,
                mean=float(f"{self.mean:.10g}"),  # sums differ in the last bits by batch
                std=float(f"{self.std:.10g}"),
                percentiles=self.percentiles,
            )
        if self.type == BYTES:
            d["avg_tokens"] = round(self.avg_tokens, 4)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureStats:
        """The inverse of ``to_dict`` (enough for validation and drift)."""
        f = cls(d["name"], d["type"], d["count"], d["missing"])
        f.counts = dict(d.get("counts", {}))
        f.many = d.get("many", False)
        if "numbers" in d:
            f.numbers, f.min, f.max = d["numbers"], d["min"], d["max"]
            f.total = d["mean"] * f.numbers
            f.total_sq = (d["std"] ** 2 + d["mean"] ** 2) * f.numbers
            f.percentiles = list(d["percentiles"])
        f.tokens = round(d.get("avg_tokens", 0.0) * f.present)
        return f


def _workers() -> int:
    """Threads for a batch's columns: the machine's cores, at most 4."""
    return min(4, os.cpu_count() or 1)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """One pool for the process (its idle threads cost nothing between passes)."""
    return ThreadPoolExecutor(_workers(), thread_name_prefix="tfship-stats")


def _casts(strings: pa.Array, to: pa.DataType, head: int = 64) -> bool:
    """Whether the first ``head`` strings cast to ``to``: a cast that fails costs far more than
    one that succeeds (Arrow builds its error), so a column of words fails on its head."""
    try:
        pc.cast(strings.slice(0, head), to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _to_arrow(values: np.ndarray) -> pa.Array:
    """A NumPy column as Arrow: numbers stay numbers (NaN = null), anything else strings."""
    if values.dtype.kind in "iufb":
        return pa.array(values, from_pandas=True)
    return pa.array(values.astype(str), pa.string())


def number_keys(nums: np.ndarray) -> np.ndarray:
    """Numbers as the strings a CSV would hold them (``3`` not ``3.0`` for whole numbers)."""
    whole = np.isfinite(nums) & (nums == np.round(nums))
    as_int = np.char.mod("%d", np.where(whole, nums, 0).astype(np.int64))
    return np.where(whole, as_int, nums.astype(str))


@dataclass
class TableStats:
    """Statistics of every column of a table, in its column order."""

    rows: int = 0
    seed: int = 0
    _features: dict[str, FeatureStats] = field(default_factory=dict, repr=False)
    _folding: list = field(default_factory=list, repr=False)  # the last batch's futures

    @property
    def features(self) -> dict[str, FeatureStats]:
        """Every column's statistics, by name. Reading them waits for the batch still being
        folded in (a count read meanwhile would be short and a mean NaN); percentiles are
        set by ``finish()``."""
        self._wait()
        return self._features

    def update(self, batch: dict[str, np.ndarray]) -> None:
        """Fold in one batch: every column the same length (a CSV chunk, a Parquet row group).

        With more than one core, the batch's columns are folded in on the pool's threads and
        this returns at once, so that the caller reads the next batch meanwhile; the next
        ``update`` or ``finish`` waits for them (and raises their error, if any). Read the
        statistics after ``finish()``."""
        lengths = {len(v) for v in batch.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of one batch differ in length: {sorted(lengths)}")
        self._wait()
        work = []
        for name, values in batch.items():
            f = self._features.get(name)
            if f is None:
                f = self._features[name] = FeatureStats(name, seed=self.seed)
                f.count = f.missing = self.rows  # a column that appears late was missing
            work.append((f, values))
        if _workers() > 1:
            # Columns are independent (each has its own state and random stream), and most
            # of a column's work is in pyarrow.compute and NumPy, which release the GIL.
            self._folding = [_pool().submit(f.update, values) for f, values in work]
        else:
            for f, values in work:
                f.update(values)
        n = lengths.pop() if lengths else 0
        for name, f in self._features.items():
            if name not in batch:
                f.count += n
                f.missing += n
        self.rows += n

    def _wait(self) -> None:
        """Wait for the last batch's columns; their first error (in column order) is raised."""
        folding, self._folding = self._folding, []
        for done in folding:
            done.result()

    def finish(self) -> TableStats:
        """Wait for the last batch, then each feature's percentiles."""
        self._wait()
        for f in self.features.values():
            f.finish()
        return self

    def to_dict(self) -> dict:
        self._wait()
        return {"rows": self.rows, "features": [f.to_dict() for f in self.features.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> TableStats:
        t = cls(rows=d["rows"])
        for fd in d["features"]:
            t.features[fd["name"]] = FeatureStats.from_dict(fd)
        return t
