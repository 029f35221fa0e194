"""bench.photo_eval's paired comparison: models scored on the very same inputs, input by input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import photo_eval
from training.photo_pages import Sample


@pytest.mark.parametrize("lost,gained,expected", [
    (0, 0, 1.0),            # no disagreement: nothing to tell
    (3, 0, 0.25),           # 2 × (1/2)^3
    (5, 0, 0.0625),         # 2 × (1/2)^5
    (6, 0, 0.03125),        # the fewest one-way disagreements under 0.05
    (3, 1, 0.625),          # 2 × (1 + 4) / 16
    (2, 2, 1.0),
    (21, 9, 0.042773),      # 2 × P(Binomial(30, 1/2) <= 9)
])
def test_mcnemar_exact_p(lost: int, gained: int, expected: float) -> None:
    assert photo_eval.mcnemar_p(lost, gained) == pytest.approx(expected, abs=1e-6)
    assert photo_eval.mcnemar_p(gained, lost) == photo_eval.mcnemar_p(lost, gained)


def kind_result(kind: str, labels: list[int], answers: dict[Path, list[int]]) -> photo_eval.KindResult:
    result = photo_eval.KindResult(kind, [Sample(kind, label, b"", "test") for label in labels])
    result.predictions = {f"robust, {path}": np.array(predicted) for path, predicted in answers.items()}
    return result


def test_paired_table_counts_the_inputs_each_model_alone_gets_right() -> None:
    first, second = Path("one.onnx"), Path("two.onnx")
    labels = [0, 1, 2, 3, 4, 5]
    results = [
        # second loses inputs 0 and 1, gains input 5; both miss input 4
        kind_result("plain", labels, {first: [0, 1, 2, 3, 9, 9], second: [9, 9, 2, 3, 9, 5]}),
        kind_result("scan", labels, {first: labels, second: labels}),
        kind_result("mnist", labels, {first: [0, 1, 2, 3, 4, 9], second: labels}),
    ]
    table = photo_eval.paired_table(results, [first, second]).splitlines()
    header = [cell.strip() for cell in table[2].strip("|").split("|")]
    row = dict(zip(header, (cell.strip() for cell in table[4].strip("|").split("|"))))
    assert header == ["model", "plain", "scan", "mnist", "all photo-like", "all clean scans + canvases"]
    assert row["plain"] == "−2 / +1 (1.00)" and row["scan"] == "−0 / +0 (1.00)" and row["mnist"] == "−0 / +1 (1.00)"
    assert row["all photo-like"] == row["plain"] and row["all clean scans + canvases"] == row["scan"]
    assert len(table) == 5  # one row per model after the first
