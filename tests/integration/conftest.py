"""Fixtures that start real servers: `tfship serve` (our TF Serving) on loopback ports."""

from __future__ import annotations

import contextlib

import pytest
from helpers import HALF_PLUS_TWO, HPT, Served, start_serve


@pytest.fixture
def serve(tmp_path):
    """``serve(*args)`` starts `tfship serve`; every server is stopped after the test."""
    started: list[Served] = []

    def _start(*args: str) -> Served:
        s = start_serve(tmp_path, *args)
        started.append(s)
        return s

    yield _start
    for s in started:
        with contextlib.suppress(Exception):
            s.stop()


@pytest.fixture(scope="module")
def hpt_all(tmp_path_factory):
    """The conformance model served with policy `all` and labels stable=123, canary=124."""
    tmp = tmp_path_factory.mktemp("hpt")
    conf = tmp / "models.config"
    conf.write_text(f"""
model_config_list {{
  config {{
    name: "{HPT}"
    base_path: "{HALF_PLUS_TWO}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 123 }}
    version_labels {{ key: "canary" value: 124 }}
  }}
}}
""")
    # Labels in a start-up config need the flag: upstream checks them before anything has
    # loaded (server_core.cc UpdateModelVersionLabelMap), so without it start-up fails.
    s = start_serve(
        tmp, "--model_config_file", str(conf), "--allow_version_labels_for_unavailable_models"
    )
    yield s
    s.stop()
