"""Statistics per feature of a table, computed in one streaming pass with bounded memory.

A :class:`TableStats` takes batches of columns (``update``) and keeps, per feature: rows seen
and missing, the narrowest type every present value fits (INT, then FLOAT, then BYTES, as
TFDV's CSV decoder infers them), min/max/mean/std for numbers, the counts of the first
:data:`MAX_DISTINCT` distinct values (strings, and small-domain numbers), token counts for
text, and a uniform random sample of :data:`SAMPLE` numbers (random keys, so the sample is
the same whatever the batch size) from which percentiles are taken. Memory is bounded by
those caps, not by the data's size. ``to_dict()`` is what the data manifest stores, and what
drift (``schema.drift``) compares a new snapshot with.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from tfship.extras import lazy_module

# The train extra; deploy imports this module through tables and verify (tfship.extras).
pa = lazy_module("pyarrow")
pc = lazy_module("pyarrow.compute")

MAX_DISTINCT = 1000  # distinct values counted per feature; more marks it "many"
SAMPLE = 10_000  # numbers kept per feature for percentiles
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
    counts: dict[str, int] = field(default_factory=dict)  # first MAX_DISTINCT distinct values
    many: bool = False  # more distinct values were seen (not counted)
    tokens: int = 0  # whitespace-separated tokens over present values
    percentiles: list[float] = field(default_factory=list)  # set by finish()
    seed: int = 0
    _rng: np.random.Generator | None = field(default=None, repr=False)
    _known: pa.Array | None = field(default=None, repr=False)  # counts' keys, once many
    _keys: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    _sample: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

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
            nums = self._parse(strings, final=False)  # most cells of a number parse as they are
            if nums is None:  # spaces around, blanks, or strings
                strings = pc.utf8_trim_whitespace(strings)
                strings = strings.filter(pc.not_equal(strings, ""))
                nums = self._parse(strings)
            self.missing += n - len(strings)
            if nums is None:  # text or categorical: count the strings themselves
                self.tokens += int(pc.sum(pc.count_substring(strings, " ")).as_py() or 0)
                self.tokens += len(strings)
                self._count(strings)
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
        if self.type == INT:
            try:
                return pc.cast(strings, pa.int64()).to_numpy().astype(np.float64)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        try:
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
        """Count numbers by value; keys are written as a CSV would hold them (``3``, ``2.5``)."""
        self._count(pa.array(nums, pa.float64()), numeric=True)

    def _count(self, values: pa.Array, numeric: bool = False) -> None:
        """Count a batch's values; new ones are admitted in row order until MAX_DISTINCT (so
        the table is the same whatever the batch size), after which only known values are
        counted (``is_in`` on the frozen key set: a continuous number costs no Python loop)."""
        if not len(values):
            return
        if self.many:
            if self._known is None:
                keys = list(self.counts)
                self._known = pa.array([float(k) for k in keys] if numeric else keys)
            values = values.filter(pc.is_in(values, value_set=self._known))
            if not len(values):
                return
        counts = pc.value_counts(values)  # in order of first appearance
        uniq = counts.field(0)
        keys = number_keys(uniq.to_numpy()).tolist() if numeric else uniq.to_pylist()
        own = self.counts
        for k, c in zip(keys, counts.field(1).to_pylist(), strict=True):
            if k in own:
                own[k] += c
            elif len(own) < MAX_DISTINCT:
                own[k] = c
            else:
                self.many = True

    def _reservoir(self, nums: np.ndarray) -> None:
        if self._rng is None:  # one stream per feature: the sample ignores batch sizes
            self._rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode())])
        keys = np.concatenate([self._keys, self._rng.random(len(nums))])
        sample = np.concatenate([self._sample, nums])
        if len(keys) > SAMPLE:
            keep = np.argpartition(keys, SAMPLE)[:SAMPLE]
            keys, sample = keys[keep], sample[keep]
        self._keys, self._sample = keys, sample

    def finish(self) -> None:
        """Percentiles from the sample (called once the pass is over)."""
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

    features: dict[str, FeatureStats] = field(default_factory=dict)
    rows: int = 0
    seed: int = 0

    def update(self, batch: dict[str, np.ndarray]) -> None:
        """Fold in one batch: every column the same length (a CSV chunk, a Parquet row group)."""
        lengths = {len(v) for v in batch.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of one batch differ in length: {sorted(lengths)}")
        for name, values in batch.items():
            f = self.features.get(name)
            if f is None:
                f = self.features[name] = FeatureStats(name, seed=self.seed)
                f.count = f.missing = self.rows  # a column that appears late was missing
            f.update(values)
        n = lengths.pop() if lengths else 0
        for name, f in self.features.items():
            if name not in batch:
                f.count += n
                f.missing += n
        self.rows += n

    def finish(self) -> TableStats:
        for f in self.features.values():
            f.finish()
        return self

    def to_dict(self) -> dict:
        return {"rows": self.rows, "features": [f.to_dict() for f in self.features.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> TableStats:
        t = cls(rows=d["rows"])
        for fd in d["features"]:
            t.features[fd["name"]] = FeatureStats.from_dict(fd)
        return t
