"""Stage outputs appear whole or not at all."""

from __future__ import annotations

import pytest
from tfship.workspace import Workspace


def test_stage_output_replaces_only_on_success(tmp_path):
    ws = Workspace(tmp_path)
    with ws.stage_output("build") as out:
        (out / "manifest.json").write_text("v1")
    with pytest.raises(RuntimeError), ws.stage_output("build") as out:
        (out / "manifest.json").write_text("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "data" / "manifest.json").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
