"""bench/photo_eval.py never evaluates on the renders training's real-looking share is made of."""
from __future__ import annotations

import pytest

from bench import photo_eval
from tests.test_train import real_digits
from training.photo_pages import TRAINING_SEEDS, make_sample


def test_renders_for_training_never_meet_the_evaluations_inputs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        photo_eval.parse_args(["--seed", str(TRAINING_SEEDS)])
    assert exit_info.value.code == 2 and "training's real-looking share" in capsys.readouterr().err
    digit = real_digits(0).train.images[0]
    training = make_sample("ruled", digit, 7, TRAINING_SEEDS + 0, 0).data
    assert training != make_sample("ruled", digit, 7, 0, 0).data
