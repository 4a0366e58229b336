"""The data's schema, in TFDV's format: inferred from the first snapshot, every later one
checked against it, and drift measured per feature.

``schema.pbtxt`` is a ``tensorflow.metadata.v0.Schema`` in protobuf text format, the file TFDV
writes (``tfdv.write_schema_text``) and reads (``tfdv.load_schema_text``), so people review and
edit it and TFDV users can read it. The messages are built here from the field numbers of
``tensorflow_metadata/proto/v0/schema.proto`` (tensorflow/metadata), for the subset tfship
reads and writes; a field outside that subset in an edited file is refused by name.

What is inferred (as TFDV's ``infer_schema`` does, plus ranges): a type per feature (INT,
FLOAT, BYTES); for numbers an ``int_domain``/``float_domain`` with the observed range; for
strings with few distinct values a ``string_domain`` (its vocabulary), otherwise a
``natural_language_domain`` (text); ``presence.min_fraction`` 1.0 for a feature always present,
else its observed presence less :data:`PRESENCE_SLACK`; ``distribution_constraints
{ min_domain_mass }`` the share of values that must fall in the domain
(:data:`MIN_DOMAIN_MASS`).

Drift is TFDV's: L-infinity distance between the value distributions of a categorical feature,
approximate Jensen-Shannon divergence (base 2, in [0, 1]) between histograms of a numeric one,
over the baseline's deciles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from tfship.stats import BYTES, FLOAT, INT, FeatureStats, TableStats

SCHEMA_FILE = "schema.pbtxt"
MAX_CATEGORIES = 50  # a string feature with more distinct values is text
TEXT_TOKENS = 3.0  # ... or one whose values average more tokens than this
MIN_DOMAIN_MASS = 0.99  # at most 1% of a feature's values may fall outside its domain
PRESENCE_SLACK = 0.05  # a feature sometimes missing may be missing 5 points more often

# --------------------------------------------------------------------------------------------
# The proto subset: names and numbers as in tensorflow_metadata/proto/v0/schema.proto
# --------------------------------------------------------------------------------------------
_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    # name: [(field, number, label, type, type_name)]
    "Schema": [
        ("feature", 1, _REP, _F.TYPE_MESSAGE, "Feature"),
        ("string_domain", 4, _REP, _F.TYPE_MESSAGE, "StringDomain"),
    ],
    "Feature": [
        ("name", 1, _OPT, _F.TYPE_STRING, ""),
        ("presence", 14, _OPT, _F.TYPE_MESSAGE, "FeaturePresence"),
        ("type", 6, _OPT, _F.TYPE_ENUM, "FeatureType"),
        ("domain", 7, _OPT, _F.TYPE_STRING, ""),
        ("int_domain", 9, _OPT, _F.TYPE_MESSAGE, "IntDomain"),
        ("float_domain", 10, _OPT, _F.TYPE_MESSAGE, "FloatDomain"),
        ("string_domain", 11, _OPT, _F.TYPE_MESSAGE, "StringDomain"),
        ("natural_language_domain", 24, _OPT, _F.TYPE_MESSAGE, "NaturalLanguageDomain"),
        ("image_domain", 25, _OPT, _F.TYPE_MESSAGE, "ImageDomain"),
        ("shape", 23, _OPT, _F.TYPE_MESSAGE, "FixedShape"),
        ("distribution_constraints", 15, _OPT, _F.TYPE_MESSAGE, "DistributionConstraints"),
        ("drift_comparator", 21, _OPT, _F.TYPE_MESSAGE, "FeatureComparator"),
    ],
    "FeaturePresence": [
        ("min_fraction", 1, _OPT, _F.TYPE_DOUBLE, ""),
        ("min_count", 2, _OPT, _F.TYPE_INT64, ""),
    ],
    "IntDomain": [
        ("name", 1, _OPT, _F.TYPE_STRING, ""),
        ("min", 3, _OPT, _F.TYPE_INT64, ""),
        ("max", 4, _OPT, _F.TYPE_INT64, ""),
        ("is_categorical", 5, _OPT, _F.TYPE_BOOL, ""),
    ],
    "FloatDomain": [
        ("name", 1, _OPT, _F.TYPE_STRING, ""),
        ("min", 3, _OPT, _F.TYPE_FLOAT, ""),
        ("max", 4, _OPT, _F.TYPE_FLOAT, ""),
        ("disallow_nan", 5, _OPT, _F.TYPE_BOOL, ""),
        ("disallow_inf", 6, _OPT, _F.TYPE_BOOL, ""),
    ],
    "StringDomain": [
        ("name", 1, _OPT, _F.TYPE_STRING, ""),
        ("value", 2, _REP, _F.TYPE_STRING, ""),
    ],
    "FixedShape": [("dim", 2, _REP, _F.TYPE_MESSAGE, "FixedShape.Dim")],
    "FixedShape.Dim": [("size", 1, _OPT, _F.TYPE_INT64, ""), ("name", 2, _OPT, _F.TYPE_STRING, "")],
    "NaturalLanguageDomain": [("vocabulary", 1, _OPT, _F.TYPE_STRING, "")],
    "ImageDomain": [
        ("minimum_supported_image_fraction", 1, _OPT, _F.TYPE_FLOAT, ""),
        ("max_image_byte_size", 2, _OPT, _F.TYPE_INT64, ""),
    ],
    "DistributionConstraints": [("min_domain_mass", 1, _OPT, _F.TYPE_DOUBLE, "")],
    "FeatureComparator": [
        ("infinity_norm", 1, _OPT, _F.TYPE_MESSAGE, "InfinityNorm"),
        ("jensen_shannon_divergence", 2, _OPT, _F.TYPE_MESSAGE, "JensenShannonDivergence"),
    ],
    "InfinityNorm": [("threshold", 1, _OPT, _F.TYPE_DOUBLE, "")],
    "JensenShannonDivergence": [("threshold", 1, _OPT, _F.TYPE_DOUBLE, "")],
}
_ONEOFS = {  # Feature's oneofs, so that a second domain in one feature is refused as upstream
    "presence_constraints": ("presence",),
    "shape_type": ("shape",),
    "domain_info": (
        "domain",
        "int_domain",
        "float_domain",
        "string_domain",
        "natural_language_domain",
        "image_domain",
    ),
}
_PACKAGE = "tensorflow.metadata.v0"


def _build_classes() -> dict[str, type]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="tfship/schema_subset.proto", package=_PACKAGE, syntax="proto2"
    )
    enum = fd.enum_type.add(name="FeatureType")
    for n, v in (("TYPE_UNKNOWN", 0), (BYTES, 1), (INT, 2), (FLOAT, 3), ("STRUCT", 4)):
        enum.value.add(name=n, number=v)
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for msg_name, fields in _MESSAGES.items():
        parent, _, nested = msg_name.rpartition(".")  # "FixedShape.Dim": nested, as upstream
        m = (protos[parent].nested_type if parent else fd.message_type).add(name=nested)
        protos[msg_name] = m
        if msg_name == "Feature":
            for oneof in _ONEOFS:
                m.oneof_decl.add(name=oneof)
        for fname, number, label, ftype, tname in fields:
            f = m.field.add(name=fname, number=number, label=label, type=ftype)
            if tname:
                f.type_name = f".{_PACKAGE}.{tname}"
            if msg_name == "Feature":
                for i, members in enumerate(_ONEOFS.values()):
                    if fname in members:
                        f.oneof_index = i
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with tensorflow_metadata
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


_CLASSES = _build_classes()
Schema = _CLASSES["Schema"]


class SchemaError(ValueError):
    """schema.pbtxt cannot be read (the message names the line and the field)."""


def read_schema(path: Path) -> object:
    """Parse ``schema.pbtxt``; SchemaError names what is wrong."""
    return parse_schema(path.read_text(), str(path))


def parse_schema(text: str, where: str) -> object:
    """Parse a schema's protobuf text; SchemaError names ``where`` (a path or a URI), the
    line and column, and what is wrong."""
    try:
        return text_format.Parse(text, Schema())
    except text_format.ParseError as exc:
        message = str(exc).split(" : ", 1)[-1]  # "1:27 : Message type ..." -> the message
        raise SchemaError(f"{where}:{exc.GetLine()}:{exc.GetColumn()}: {message}") from exc


def schema_text(schema: object) -> str:
    """``schema`` as protobuf text, as ``tfdv.write_schema_text`` writes it."""
    return text_format.MessageToString(schema)


def write_schema(schema: object, path: Path) -> None:
    """Write ``schema`` to ``path`` as protobuf text."""
    path.write_text(schema_text(schema))


def feature_type(f: object) -> str:
    """The FeatureType name of a Feature message."""
    return Schema.DESCRIPTOR.file.enum_types_by_name["FeatureType"].values_by_number[f.type].name


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def is_categorical(f: FeatureStats) -> bool:
    """A string feature with a small vocabulary of short values (else it is text)."""
    return (
        f.type == BYTES
        and not f.many
        and f.distinct <= MAX_CATEGORIES
        and f.avg_tokens <= TEXT_TOKENS
    )


def _float32_bound(x: float, outwards: float) -> float:
    """``x`` as a float32 (FloatDomain's bounds are), rounded away from the data if needed."""
    b = np.float32(x)
    if (float(b) < x) if outwards > 0 else (float(b) > x):  # compared as float64
        b = np.nextafter(b, np.float32(outwards))
    return float(b)


def infer_schema(stats: TableStats) -> object:
    """A Schema describing ``stats``: one Feature per column, in column order."""
    schema = Schema()
    for f in stats.features.values():
        feat = schema.feature.add(name=f.name)
        feat.type = (
            Schema.DESCRIPTOR.file.enum_types_by_name["FeatureType"].values_by_name[f.type].number
        )
        feat.presence.min_count = 1
        if f.missing == 0:
            feat.presence.min_fraction = 1.0
        else:
            feat.presence.min_fraction = max(
                0.0, math.floor((f.present_fraction - PRESENCE_SLACK) * 100) / 100
            )
        if f.type == INT and f.numbers:
            feat.int_domain.min = int(f.min)
            feat.int_domain.max = int(f.max)
        elif f.type == FLOAT and f.numbers:
            feat.float_domain.min = _float32_bound(f.min, -np.inf)
            feat.float_domain.max = _float32_bound(f.max, np.inf)
            feat.float_domain.disallow_nan = True
            feat.float_domain.disallow_inf = True
        elif is_categorical(f):
            feat.domain = f.name
            schema.string_domain.add(name=f.name, value=sorted(f.counts))
        else:
            feat.natural_language_domain.SetInParent()
        if f.type != BYTES or is_categorical(f):
            feat.distribution_constraints.min_domain_mass = MIN_DOMAIN_MASS
    return schema


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass
class Anomaly:
    """One way a snapshot breaks the schema: which feature, what, and how to fix it."""

    feature: str
    kind: str  # TFDV's anomaly family: SCHEMA_MISSING_COLUMN, SCHEMA_NEW_COLUMN, ...
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.feature}: {self.message} ({self.fix})"


def _cdf(percentiles: list[float], x: float) -> float:
    """P(value <= x) estimated from 101 percentiles (linear between them)."""
    p = np.asarray(percentiles)
    if x < p[0]:
        return 0.0
    if x >= p[-1]:
        return 1.0
    return float(np.interp(x, p, np.linspace(0, 1, len(p))))


def _outside_range(f: FeatureStats, lo: float, hi: float) -> float:
    """Share of f's numbers outside [lo, hi] (estimated from its percentiles)."""
    if not f.numbers or (f.min >= lo and f.max <= hi):
        return 0.0
    p = f.percentiles or [f.min, f.max]
    below = _cdf(p, lo) if f.min < lo else 0.0
    above = 1.0 - _cdf(p, hi) if f.max > hi else 0.0
    return max(below + above, 1.0 / f.numbers)


def domain_values(schema: object, feat: object) -> list[str] | None:
    """The vocabulary of a categorical feature (its own or a named string_domain), else None."""
    if feat.HasField("string_domain"):
        return list(feat.string_domain.value)
    if feat.HasField("domain"):
        for d in schema.string_domain:
            if d.name == feat.domain:
                return list(d.value)
        raise SchemaError(f"feature {feat.name!r}: domain {feat.domain!r} is not defined")
    return None


def validate(stats: TableStats, schema: object, where: str = "schema.pbtxt") -> list[Anomaly]:
    """Every anomaly of ``stats`` against ``schema``, in schema order, then new columns."""
    out: list[Anomaly] = []
    edit = f"or edit {where}"
    known = set()
    for feat in schema.feature:
        known.add(feat.name)
        f = stats.features.get(feat.name)
        if f is None or f.present == 0 and feat.presence.min_count > 0:
            out.append(
                Anomaly(
                    feat.name,
                    "SCHEMA_MISSING_COLUMN",
                    "column is in the schema but not in the data",
                    f"restore it, {edit} to drop the feature",
                )
            )
            continue
        want = feature_type(feat)
        if want != f.type and not (want == FLOAT and f.type == INT):
            out.append(
                Anomaly(
                    feat.name,
                    "UNEXPECTED_DATA_TYPE",
                    f"values are {f.type}, the schema says {want}",
                    f"fix the data's values, {edit} to the new type",
                )
            )
            continue
        if feat.HasField("presence") and f.present_fraction < feat.presence.min_fraction:
            out.append(
                Anomaly(
                    feat.name,
                    "FEATURE_TYPE_LOW_FRACTION_PRESENT",
                    f"present in {f.present_fraction:.1%} of rows, the schema requires "
                    f">= {feat.presence.min_fraction:.1%}",
                    f"fill the missing values, {edit} (presence.min_fraction)",
                )
            )
        mass = (
            feat.distribution_constraints.min_domain_mass
            if feat.HasField("distribution_constraints")
            else 1.0
        )
        outside, what = 0.0, ""
        if feat.HasField("int_domain") or feat.HasField("float_domain"):
            d = feat.int_domain if feat.HasField("int_domain") else feat.float_domain
            lo = d.min if d.HasField("min") else -math.inf
            hi = d.max if d.HasField("max") else math.inf
            outside = _outside_range(f, lo, hi)
            what = f"outside [{lo:g}, {hi:g}] (seen {f.min:g} .. {f.max:g})"
        else:
            domain = domain_values(schema, feat)
            if domain is not None and f.present:
                allowed = set(domain)
                unknown = {k: c for k, c in f.counts.items() if k not in allowed}
                untracked = f.present - sum(f.counts.values())  # beyond MAX_DISTINCT
                outside = (sum(unknown.values()) + untracked) / f.present
                shown = ", ".join(repr(k) for k in sorted(unknown, key=unknown.get)[-3:])
                what = f"not in the domain ({shown or 'values past the count limit'})"
        if outside > 1.0 - mass + 1e-12:
            out.append(
                Anomaly(
                    feat.name,
                    "DOMAIN_OUT_OF_RANGE",
                    f"{outside:.1%} of values {what}; at most {1 - mass:.1%} may be",
                    f"fix the data, {edit} (the domain or "
                    "distribution_constraints.min_domain_mass)",
                )
            )
    for name in stats.features:
        if name not in known:
            out.append(
                Anomaly(
                    name,
                    "SCHEMA_NEW_COLUMN",
                    "column is not in the schema",
                    f"drop it from the data, {edit} to add it",
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Images: the pixels (FLOAT, a fixed H x W x C shape, 0-255) and the label's classes
# --------------------------------------------------------------------------------------------
IMAGE_FEATURE = "image"
LABEL_FEATURE = "label"


@dataclass
class ImageSpec:
    """What an image schema fixes: the pixels' shape and the classes, in label order
    (``names``: an image folder's class names; None: labels are the integers 0..K-1)."""

    shape: tuple[int, int, int]
    num_classes: int
    names: list[str] | None


def _type_number(name: str) -> int:
    return Schema.DESCRIPTOR.file.enum_types_by_name["FeatureType"].values_by_name[name].number


def infer_image_schema(spec: ImageSpec, pixel_max: float) -> object:
    """The schema of an image set: ``image`` (FLOAT pixels in [0, pixel_max], a fixed shape:
    TFX's form for decoded images) and ``label`` (its class names as a string domain, or an
    integer domain 0..K-1)."""
    schema = Schema()
    image = schema.feature.add(name=IMAGE_FEATURE, type=_type_number(FLOAT))
    image.presence.min_fraction = 1.0
    image.presence.min_count = 1
    image.float_domain.min = 0.0
    image.float_domain.max = pixel_max
    image.float_domain.disallow_nan = True
    image.float_domain.disallow_inf = True
    for size in spec.shape:
        image.shape.dim.add(size=size)
    label = schema.feature.add(name=LABEL_FEATURE)
    label.presence.min_fraction = 1.0
    label.presence.min_count = 1
    if spec.names is not None:
        label.type = _type_number(BYTES)
        label.domain = LABEL_FEATURE
        schema.string_domain.add(name=LABEL_FEATURE, value=spec.names)
    else:
        label.type = _type_number(INT)
        label.int_domain.min = 0
        label.int_domain.max = spec.num_classes - 1
        label.int_domain.is_categorical = True
    return schema


def is_image(feat: object) -> bool:
    """An image feature: FLOAT values of a fixed (height, width, channels) shape."""
    return feature_type(feat) == FLOAT and len(feat.shape.dim) == 3


def image_spec(schema: object, where: str = SCHEMA_FILE) -> ImageSpec:
    """Read an image schema's shape and classes; SchemaError if it is not one."""
    feats = {f.name: f for f in schema.feature}
    image, label = feats.get(IMAGE_FEATURE), feats.get(LABEL_FEATURE)
    if image is None or not is_image(image):
        raise SchemaError(
            f"{where}: no {IMAGE_FEATURE!r} feature of type FLOAT with a 3-dimension shape: "
            "not an image schema (a table's schema needs --label)"
        )
    if label is None:
        raise SchemaError(f"{where}: no {LABEL_FEATURE!r} feature")
    shape = tuple(int(d.size) for d in image.shape.dim)
    if min(shape) < 1 or shape[2] not in (1, 3):
        raise SchemaError(f"{where}: image shape {shape}: expected (height, width, 1 or 3)")
    names = domain_values(schema, label)
    if names is not None:
        if len(set(names)) != len(names) or len(names) < 2:
            raise SchemaError(f"{where}: label domain {names}: needs 2+ distinct class names")
        return ImageSpec(shape, len(names), names)  # type: ignore[arg-type]
    d = label.int_domain
    if not label.HasField("int_domain") or d.min != 0 or not d.HasField("max") or d.max < 1:
        raise SchemaError(
            f"{where}: label needs an int_domain from 0 to K-1 (K >= 2 classes) or a string domain"
        )
    return ImageSpec(shape, int(label.int_domain.max) + 1, None)  # type: ignore[arg-type]


def validate_images(
    spec: ImageSpec, shape: tuple[int, ...], names: list[str] | None, labels_max: int, where: str
) -> list[Anomaly]:
    """The anomalies of an image snapshot against its schema: another image shape, class
    folders the schema does not name (or names the data lacks), labels past the domain."""
    out: list[Anomaly] = []
    edit = f"or edit {where}"
    if tuple(shape) != spec.shape:
        out.append(
            Anomaly(
                IMAGE_FEATURE,
                "UNEXPECTED_SHAPE",
                f"images are {tuple(shape)}, the schema says {spec.shape}",
                f"resize the images, {edit} (a new shape needs a model trained on it)",
            )
        )
    if spec.names is not None and names is not None:
        new = [n for n in names if n not in spec.names]
        gone = [n for n in spec.names if n not in names]
        if new:
            out.append(
                Anomaly(
                    LABEL_FEATURE,
                    "ENUM_TYPE_UNEXPECTED_STRING_VALUES",
                    f"class folders not in the domain: {', '.join(new)}",
                    f"remove them, {edit} to add the classes (the model's outputs change)",
                )
            )
        if gone:
            out.append(
                Anomaly(
                    LABEL_FEATURE,
                    "FEATURE_TYPE_LOW_NUMBER_PRESENT",
                    f"no folder for the classes {', '.join(gone)}",
                    f"every class needs images; restore them, {edit} to drop the classes",
                )
            )
    elif (spec.names is None) != (names is None):
        out.append(
            Anomaly(
                LABEL_FEATURE,
                "UNEXPECTED_DATA_TYPE",
                "labels are "
                + ("class folders" if names is not None else "integers")
                + ", the schema's are "
                + ("class names" if spec.names is not None else "integers"),
                f"give the data as the first snapshot was, {edit}",
            )
        )
    elif labels_max >= spec.num_classes:
        out.append(
            Anomaly(
                LABEL_FEATURE,
                "INT_TYPE_BIG_INT",
                f"label {labels_max} is past the domain 0..{spec.num_classes - 1}",
                f"fix the labels, {edit} (int_domain.max; the model's outputs change)",
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------


def l_infinity(a: dict[str, int], b: dict[str, int]) -> float:
    """max_i |p_i - q_i| over the values of two categorical count tables (TFDV's L-inf)."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0 if na == nb else 1.0
    return max(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


def _bucket_mass(percentiles: list[float], edges: np.ndarray) -> np.ndarray:
    cdf = np.array([_cdf(percentiles, e) for e in edges])
    inner = np.diff(cdf)
    return np.concatenate([[cdf[0]], inner, [1.0 - cdf[-1]]])


def jensen_shannon(base: list[float], new: list[float]) -> float:
    """Approximate JS divergence (log base 2, in [0, 1]) of two numeric features, each given
    by its percentiles, over buckets at the baseline's deciles (plus one below, one above)."""
    edges = np.unique(np.asarray(base)[::10])
    if len(edges) < 2:  # a constant baseline: one bucket at its value
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5]) if len(edges) else np.array([0, 1])
    return js_divergence(_bucket_mass(base, edges), _bucket_mass(new, edges))


def js_divergence(p: object, q: object) -> float:
    """Jensen-Shannon divergence (log base 2, in [0, 1]) of two histograms on the same
    buckets (counts or masses; each is normalised)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


def image_drift(base: dict, new: dict) -> dict[str, tuple[str, float]]:
    """Drift of an image set from ``base`` to ``new`` (two data manifests' ``stats``): the
    pixel histogram's Jensen-Shannon divergence (``image``, a numeric feature), and the
    L-infinity distance of the class counts (``label``, a categorical one), as TFDV measures
    each kind."""
    out: dict[str, tuple[str, float]] = {}
    a, b = base.get(IMAGE_FEATURE, {}), new.get(IMAGE_FEATURE, {})
    if a.get("histogram") and len(a["histogram"]) == len(b.get("histogram", [])):
        out[IMAGE_FEATURE] = ("JS", round(js_divergence(a["histogram"], b["histogram"]), 6))
    ca, cb = base.get(LABEL_FEATURE, {}).get("counts"), new.get(LABEL_FEATURE, {}).get("counts")
    if ca and cb:
        out[LABEL_FEATURE] = ("L-inf", round(l_infinity(ca, cb), 6))
    return out


def drift(base: TableStats, new: TableStats, schema: object) -> dict[str, tuple[str, float]]:
    """Per feature present in both: (measure, value), L-infinity for a categorical feature
    (a string domain or an integer one with few values), Jensen-Shannon for a numeric one;
    text features are not compared."""
    out: dict[str, tuple[str, float]] = {}
    for feat in schema.feature:
        a, b = base.features.get(feat.name), new.features.get(feat.name)
        if a is None or b is None or not a.present or not b.present:
            continue
        if domain_values(schema, feat) is not None:
            out[feat.name] = ("L-inf", round(l_infinity(a.counts, b.counts), 6))
        elif a.type != BYTES and a.percentiles and b.percentiles:
            out[feat.name] = ("JS", round(jensen_shannon(a.percentiles, b.percentiles), 6))
    return out


def drift_thresholds(schema: object, default: float | None) -> dict[str, float]:
    """Per feature: the schema's drift_comparator threshold, else ``default`` (if any)."""
    out = {}
    for feat in schema.feature:
        c = feat.drift_comparator
        if c.HasField("infinity_norm") and c.infinity_norm.HasField("threshold"):
            out[feat.name] = c.infinity_norm.threshold
        elif c.HasField("jensen_shannon_divergence") and c.jensen_shannon_divergence.HasField(
            "threshold"
        ):
            out[feat.name] = c.jensen_shannon_divergence.threshold
        elif default is not None:
            out[feat.name] = default
    return out
