"""A pytest plugin (`pytest -p tests.without_torchvision`) that runs the tests as a TORCH=cpu
environment would, where PyTorch's CPU build comes without torchvision: `import torchvision` fails
and importlib finds no such module, as when it is not installed. test_setup.py collects every test
file under it, the CI-sized check of `make test TORCH=cpu`."""
from __future__ import annotations

import sys

sys.modules["torchvision"] = None  # type: ignore[assignment]  # the import system's "not importable"
