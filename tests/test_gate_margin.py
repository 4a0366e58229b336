"""The suite's training settings clear every default gate with margin: no test rides on luck.

Tests that need a model passing the gates train with ``helpers.TRAIN_EPOCHS``. Here the same
settings run over six seeds (data split, training and the retrain snapshot all vary), and
each gate must be cleared by a margin worth several test rows, not by a hair. Figures for
more settings: ``python bench/gate_margin.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import sys

import pytest
from helpers import ROOT, TRAIN_EPOCHS

sys.path.insert(0, str(ROOT / "bench"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SEEDS = [0, 1, 2, 3, 4, 42]  # 42: the default seed, the one most tests train with
# ~27 test rows per class: a recall margin of 0.05 is over one row; accuracy 0.03 is ~8 rows.
MIN_MARGIN = {
    "accuracy": 0.03,
    "class_recall": 0.05,
    "challenger_vs_champion": 0.02,
    "class_drop": 0.04,
}


def test_the_suites_training_settings_pass_every_default_gate_with_margin():
    from gate_margin import measure

    result = measure(SEEDS, TRAIN_EPOCHS)
    short = {
        gate: round(result["worst_margin"][gate], 4)
        for gate, floor in MIN_MARGIN.items()
        if result["worst_margin"][gate] < floor
    }
    assert not short, (short, result["runs"])
