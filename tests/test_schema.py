"""Statistics, schema inference, validation and drift on tabular data (issue #17's data layer)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from tfship import schema as sch
from tfship.errors import DataError
from tfship.stats import SAMPLE, TableStats
from tfship.tables import read_csv, table_stats, write_bundled


def table(n: int = 4000, seed: int = 0, **change) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "age": rng.integers(18, 90, n).astype(str),
        "income": np.char.mod("%.2f", rng.normal(50, 10, n)),
        "color": rng.choice(["red", "green", "blue"], n),
        "review": np.array(
            [" ".join(rng.choice(["good", "bad", "ok", "meh"], 6)) for _ in range(n)]
        ),
    }
    cols["income"][: n // 40] = ""  # 2.5% missing
    cols.update(change)
    return cols


def stats_of(cols: dict[str, np.ndarray], batch: int = 1000, seed: int = 0) -> TableStats:
    t = TableStats(seed=seed)
    n = len(next(iter(cols.values())))
    for i in range(0, n, batch):
        t.update({k: v[i : i + batch] for k, v in cols.items()})
    return t.finish()


def write_csv(path, cols):
    names = list(cols)
    lines = [",".join(names)] + [",".join(r) for r in zip(*cols.values(), strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_types_domains_and_presence_are_inferred_as_tfdv_writes_them(tmp_path):
    s = sch.infer_schema(stats_of(table()))
    by = {f.name: f for f in s.feature}
    assert [sch.feature_type(by[n]) for n in by] == ["INT", "FLOAT", "BYTES", "BYTES"]
    assert (by["age"].int_domain.min, by["age"].int_domain.max) == (18, 89)
    assert by["income"].presence.min_fraction == pytest.approx(0.92)  # 97.5% - 5, floored
    assert by["color"].domain == "color"
    assert list(s.string_domain[0].value) == ["blue", "green", "red"]
    assert by["review"].HasField("natural_language_domain")  # many tokens: text
    path = tmp_path / sch.SCHEMA_FILE
    sch.write_schema(s, path)
    text = path.read_text()
    assert 'feature {\n  name: "age"\n  type: INT\n  int_domain {' in text
    assert sch.read_schema(path) == s


def test_the_same_data_has_no_anomaly_and_the_batch_size_does_not_matter():
    cols = table()
    a, b = stats_of(cols, batch=1000), stats_of(cols, batch=333)
    assert a.to_dict() == b.to_dict()
    assert sch.validate(a, sch.infer_schema(a)) == []


def test_each_kind_of_anomaly_names_the_feature_and_the_fix():
    base = stats_of(table())
    s = sch.infer_schema(base)
    rng = np.random.default_rng(1)
    new = table(
        seed=2,
        income=np.char.mod("%.2f", rng.normal(90, 10, 4000)),  # half above the old max
        color=rng.choice(["red", "green", "purple"], 4000),  # a third out of domain
        age=np.where(rng.random(4000) < 0.2, "", rng.integers(18, 90, 4000).astype(str)),
        extra=np.full(4000, "1"),
    )
    del new["review"]
    got = {a.feature: a for a in sch.validate(stats_of(new), s)}
    assert got["review"].kind == "SCHEMA_MISSING_COLUMN"
    assert got["extra"].kind == "SCHEMA_NEW_COLUMN"
    assert got["age"].kind == "FEATURE_TYPE_LOW_FRACTION_PRESENT"
    assert got["income"].kind == "DOMAIN_OUT_OF_RANGE"
    assert got["color"].kind == "DOMAIN_OUT_OF_RANGE" and "'purple'" in got["color"].message
    assert all("schema.pbtxt" in a.fix for a in got.values())
    retyped = table(age=np.char.add("y", table()["age"]))
    (a,) = sch.validate(stats_of(retyped), s)
    assert (a.feature, a.kind) == ("age", "UNEXPECTED_DATA_TYPE")


def test_values_out_of_domain_within_the_tolerance_pass_and_beyond_it_fail():
    s = sch.infer_schema(stats_of(table()))
    colors = np.array(["red", "green", "blue"] * 1333 + ["red"])
    few = colors.copy()
    few[:20] = "purple"  # 0.5% < 1%
    assert sch.validate(stats_of(table(color=few)), s) == []
    many = colors.copy()
    many[:80] = "purple"  # 2% > 1%
    (a,) = sch.validate(stats_of(table(color=many)), s)
    assert a.kind == "DOMAIN_OUT_OF_RANGE" and "2.0%" in a.message


def test_drift_is_zero_on_the_same_distribution_and_large_on_a_shifted_one():
    s = sch.infer_schema(base := stats_of(table()))
    same = stats_of(table(seed=7))  # other rows, same distributions
    d = sch.drift(base, same, s)
    assert set(d) == {"age", "income", "color"}  # text is not compared
    assert d["income"][0] == "JS" and d["income"][1] < 0.02
    assert d["color"][0] == "L-inf" and d["color"][1] < 0.05
    rng = np.random.default_rng(3)
    moved = stats_of(
        table(income=np.char.mod("%.2f", rng.normal(70, 10, 4000)), color=np.full(4000, "red"))
    )
    d = sch.drift(base, moved, s)
    assert d["income"][1] > 0.3
    assert d["color"][1] == pytest.approx(1 - base.features["color"].counts["red"] / 4000, abs=1e-6)


def test_l_infinity_and_jensen_shannon_match_their_definitions():
    assert sch.l_infinity({"a": 1, "b": 3}, {"a": 3, "b": 1}) == pytest.approx(0.5)
    assert sch.l_infinity({"a": 5}, {"b": 5}) == 1.0
    uniform = list(np.linspace(0, 100, 101))
    assert sch.jensen_shannon(uniform, uniform) == 0.0
    far = list(np.linspace(1000, 1100, 101))  # disjoint support: JS is 1 bit
    assert sch.jensen_shannon(uniform, far) == pytest.approx(1.0)


def test_drift_thresholds_come_from_the_schema_else_the_default(tmp_path):
    s = sch.infer_schema(stats_of(table()))
    s.feature[1].drift_comparator.jensen_shannon_divergence.threshold = 0.1
    assert sch.drift_thresholds(s, None) == {"income": 0.1}
    assert sch.drift_thresholds(s, 0.3) == {"age": 0.3, "income": 0.1, "color": 0.3, "review": 0.3}


def test_an_edited_schema_with_a_typo_or_an_unknown_field_is_refused_by_name(tmp_path):
    path = tmp_path / sch.SCHEMA_FILE
    path.write_text('feature { name: "x" type: INT int_domian { min: 1 } }\n')
    with pytest.raises(sch.SchemaError, match="int_domian"):
        sch.read_schema(path)
    path.write_text('feature { name: "x" type: STRNG }\n')
    with pytest.raises(sch.SchemaError, match="STRNG"):
        sch.read_schema(path)


def test_stats_round_trip_through_the_manifest_json():
    t = stats_of(table())
    back = TableStats.from_dict(json.loads(json.dumps(t.to_dict())))
    s = sch.infer_schema(t)
    assert sch.validate(back, s) == []
    assert all(v == 0.0 for _, v in sch.drift(t, back, s).values())


def test_memory_is_bounded_by_the_caps_not_the_rows():
    rng = np.random.default_rng(0)
    t = TableStats()
    for _ in range(30):
        ids = rng.integers(0, 10**9, 1000).astype(str)
        t.update({"x": rng.normal(size=1000), "id": ids, "key": np.char.add("k", ids)})
    t.finish()
    assert len(t.features["x"]._sample) == SAMPLE
    assert t.features["id"].many and t.features["id"].counts == {}  # a number: dropped
    assert t.features["key"].many and len(t.features["key"].counts) == 1000


def test_the_csv_is_streamed_and_hashed_in_the_same_pass(tmp_path):
    path = write_csv(tmp_path / "t.csv", table(n=9000))
    stats, sha = table_stats(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stats.rows == 9000 and list(stats.features) == ["age", "income", "color", "review"]
    assert [len(b["age"]) for b in read_csv(path, batch_rows=4096)] == [4096, 4096, 808]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("a,b\n1,2\n3\n", "a row has 1 columns, the header has 2"),
        ("a,a\n1,2\n", "distinct, non-empty column names"),
        ("a,b\n", "no data rows"),
    ],
)
def test_a_malformed_csv_is_one_clear_error(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        table_stats(path)


@pytest.mark.parametrize(
    ("name", "rows", "label_type", "classes"),
    [
        ("breast_cancer", 569, "BYTES", 2),
        ("wine", 178, "BYTES", 3),
        ("diabetes", 442, "FLOAT", None),
    ],
)
def test_the_bundled_tabular_sets_are_read_from_scikit_learn(
    tmp_path, name, rows, label_type, classes
):
    stats, _ = table_stats(write_bundled(name, tmp_path / f"{name}.csv"))
    assert stats.rows == rows
    target = stats.features["target"]
    assert target.type == label_type and target.missing == 0
    if classes:
        assert target.distinct == classes
    s = sch.infer_schema(stats)
    assert sch.validate(stats, s) == []


def test_image_drift_is_jensen_shannon_of_pixels_and_l_infinity_of_classes():
    base = {"image": {"histogram": [10, 0, 0, 10]}, "label": {"counts": {"a": 5, "b": 5}}}
    same = sch.image_drift(base, base)
    assert same == {"image": ("JS", 0.0), "label": ("L-inf", 0.0)}
    apart = {"image": {"histogram": [0, 10, 10, 0]}, "label": {"counts": {"a": 10, "b": 0}}}
    moved = sch.image_drift(base, apart)
    assert moved["image"] == ("JS", 1.0)  # disjoint histograms
    assert moved["label"] == ("L-inf", 0.5)  # a: 0.5 -> 1.0
    assert sch.js_divergence([1, 1], [1, 3]) == pytest.approx(0.0488, abs=1e-3)
    assert sch.image_drift(base, {}) == {}  # a snapshot without statistics: nothing to say
