"""A rolling restart on one machine, behind the repo's nginx site: no request may fail (tests/rolling_restart.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.rolling_restart import rehearse


@pytest.mark.parametrize("equal", [False, True], ids=["second-as-backup", "both-serving"])
def test_restarting_each_instance_in_turn_fails_no_request(tmp_path: Path, equal: bool) -> None:
    """TERM one instance, start it again, then the other, under steady load: every answer a 200.

    As committed, the second server is nginx's backup (the one-box procedure of docs/deploy.md);
    both serving is what a Service in front of a Deployment's pods does."""
    result = rehearse(tmp_path, equal=equal)
    assert result["failed"] == 0, result
    assert set(result["kinds"]) == {"predict_png", "predict_pixels", "v2_infer_binary", "v2_infer_json"}
    exits = [event for event in result["events"] if " exited " in event["event"]]
    assert [event["event"].rsplit(" ", 1)[1] for event in exits] == ["0", "0"], "each instance drains and exits 0"
    # Each instance answered before it was stopped: the load really moved between them.
    assert all(event["served"] > 0 for event in exits), result["events"]
    assert result["requests"] >= 100, result
