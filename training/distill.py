"""Knowledge distillation: a teacher ONNX model (run by onnxruntime) and the Hinton et al. loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class TeacherError(Exception):
    """The teacher file is missing or is not an image classifier with a probabilities output."""


class OnnxTeacher:
    """An exported digit model (input [N, 1, 28, 28] pixels, output probabilities) as a teacher."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort  # only distillation needs it

        if not Path(path).is_file():
            raise TeacherError(f"{path}: no such teacher model (pass --teacher none to train without one)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise TeacherError(f"{path}: onnxruntime cannot load it ({str(error).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("output_kind", "probabilities") != "probabilities":
            raise TeacherError(f"{path}: output_kind {meta.get('output_kind')!r}, expected probabilities")
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(path)

    @torch.no_grad()
    def log_probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """The teacher's log-probabilities for a batch of [0, 1] pixels, on the batch's device."""
        feed = np.ascontiguousarray(pixels.detach().float().cpu().numpy())
        (probabilities,) = self.session.run(None, {self.input_name: feed})
        return torch.from_numpy(probabilities).to(pixels.device).clamp_min(1e-12).log()


def distillation_loss(logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher_T ‖ student_T), both softened by `temperature` (Hinton et al. 2015)."""
    student = F.log_softmax(logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_log_probs / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2
