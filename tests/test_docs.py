"""The documents name what the code does: every limit and its default in docs/security.md."""
from __future__ import annotations

import pytest

from server import config
from tests.conftest import ROOT

SECURITY = (ROOT / "docs" / "security.md").read_text()


REQUEST_LIMITS = ("MAX_CONTENT_LENGTH", "MAX_IMAGE_PIXELS", "MAX_IMAGES_PER_REQUEST")


@pytest.mark.parametrize("name", REQUEST_LIMITS)
def test_every_request_limit_is_documented_with_its_default(name: str) -> None:
    row = next((line for line in SECURITY.splitlines() if line.startswith(f"| `{name}`")), None)
    assert row is not None, f"docs/security.md has no row for {name}"
    default = config.BY_NAME[name].default
    assert f"{default:,}" in row or str(default) in row, (row, default)
