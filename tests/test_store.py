"""The artifact store: atomic, idempotent, never rewrites a version."""

from __future__ import annotations

import pytest
from tfship.errors import ConfigError, StoreError
from tfship.store import MANIFEST, check_label, install_version, local_store, numeric_versions
from tfship.workspace import tree_hashes, write_json


def _package(tmp_path, content: str = "weights"):
    pkg = tmp_path / f"pkg-{content}"
    (pkg / "variables").mkdir(parents=True)
    (pkg / "saved_model.pb").write_text("graph")
    (pkg / "variables" / "v").write_text(content)
    manifest = {"files": tree_hashes(pkg)}
    (pkg / "assets.extra").mkdir()
    write_json(pkg / MANIFEST, manifest)
    return pkg, manifest


def test_put_is_atomic_and_idempotent(tmp_path):
    store = local_store(tmp_path / "store")
    pkg, manifest = _package(tmp_path)
    assert store.put("m", 7, pkg, manifest) == "uploaded"
    assert store.put("m", 7, pkg, manifest) == "present"
    assert store.versions("m") == [7]
    assert sorted(p.name for p in (tmp_path / "store" / "m").iterdir()) == [".history", "7"]
    assert store.manifest("m", 7) == manifest
    assert [(e["event"], e["version"]) for e in store.history("m")] == [("packaged", 7)]


def test_a_version_with_other_content_is_never_rewritten(tmp_path):
    store = local_store(tmp_path / "store")
    pkg, manifest = _package(tmp_path)
    store.put("m", 7, pkg, manifest)
    other, other_manifest = _package(tmp_path, "different")
    with pytest.raises(StoreError, match="already exists .* with other content"):
        store.put("m", 7, other, other_manifest)
    assert (tmp_path / "store" / "m" / "7" / "variables" / "v").read_text() == "weights"


def test_a_package_that_does_not_match_its_manifest_is_not_installed(tmp_path):
    pkg, manifest = _package(tmp_path)
    (pkg / "variables" / "v").write_text("tampered")
    with pytest.raises(StoreError, match="sha256 differs: variables/v"):
        install_version(local_store(tmp_path).host, str(tmp_path / "s"), "m", 9, pkg, manifest)
    model_dir = tmp_path / "s" / "m"
    assert list(model_dir.iterdir()) == []  # no version, no leftover .incoming-*


@pytest.mark.parametrize("name", ["../etc", "a b", "x;rm -rf /", "", "a/b", "-rf", "m\nx"])
def test_unsafe_model_names_are_refused(tmp_path, name):
    pkg, manifest = _package(tmp_path)
    with pytest.raises(ConfigError, match="model name"):
        local_store(tmp_path / "s").put(name, 1, pkg, manifest)


@pytest.mark.parametrize("version", [0, -1, "1.5", "v1", 2**63])
def test_versions_must_be_positive_int64(tmp_path, version):
    pkg, manifest = _package(tmp_path)
    with pytest.raises(ConfigError, match="version"):
        local_store(tmp_path / "s").put("m", version, pkg, manifest)


def test_only_all_digit_names_are_versions():
    assert numeric_versions(["12", "00000123", "v1", ".incoming-5-ab", "1.partial", "3"]) == [
        3,
        12,
        123,
    ]


BAD_NAMES = ["../x", "a b", "x;rm -rf /", "", "a/b", "-rf", "m\nx", "$(id)", "/abs", "a?b=c"]


@pytest.mark.parametrize("label", [*BAD_NAMES, "1stable"])
def test_unsafe_version_labels_never_reach_a_url(label):
    from tfship.serving import ServingClient

    client = ServingClient("http://127.0.0.1:9", "m")
    with pytest.raises(ConfigError, match="version label"):
        client.predict({"x": [[1.0]]}, label=label)
    with pytest.raises(ConfigError, match="version label"):
        check_label(label)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_model_names_never_reach_a_serving_url(name):
    from tfship.serving import ServingClient

    with pytest.raises(ConfigError, match="model name"):
        ServingClient("http://127.0.0.1:9", name)


def test_usual_labels_are_allowed():
    assert [check_label(x) for x in ("stable", "canary", "prod-2", "v_1")] == [
        "stable",
        "canary",
        "prod-2",
        "v_1",
    ]
