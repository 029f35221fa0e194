"""Checkpoint files: weights plus everything needed to rebuild and trace the model."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from training.atomic import atomic_path
from training.model import DigitNet, ModelConfig

CHECKPOINT_FORMAT = "mnist-serve-checkpoint/1"
REQUIRED_KEYS = ("format", "state_dict", "model_config", "args", "data_sha256", "torch_version")


class CheckpointError(Exception):
    """The checkpoint file is missing, damaged, or not one this project wrote."""


def summary(error: Exception) -> str:
    """One line of a (possibly long, multi-line) torch error: the line naming the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "error:" in line.lower()), lines[0])[:300]


def save_checkpoint(path: Path, model: DigitNet, **fields: object) -> None:
    """Write atomically (temp file + rename), so an interrupted save never leaves half a file."""
    content = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "torch_version": str(torch.__version__),  # a plain str: weights_only loading refuses TorchVersion
        **fields,
    }
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with torch.load(weights_only=True); any defect is a CheckpointError."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({summary(error)})") from None
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return content


def model_from_checkpoint(content: dict, path: Path | str = "checkpoint") -> DigitNet:
    """Rebuild the network from the checkpoint's own config and load its weights (eval mode)."""
    try:
        model = DigitNet(ModelConfig.from_dict(content["model_config"]))
        model.load_state_dict(content["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not fit the model config ({summary(error)})") from None
    return model.eval()
