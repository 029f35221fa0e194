"""Calibration: expected calibration error, reliability bins, and fitting a softmax temperature."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ECE_BINS = 15


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin (equal width over [0, 1]): images, mean confidence, accuracy."""

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the image-weighted mean |accuracy - confidence| over bins."""
        total = self.counts.sum()
        gaps = np.abs(self.accuracy - self.confidence) * self.counts
        return float(gaps.sum() / total) if total else 0.0


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bin each image by its top probability; empty bins have count 0 (and 0 means)."""
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == labels).astype(np.float64)
    # bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    safe = np.maximum(counts, 1)
    return Reliability(counts, np.bincount(index, confidence, bins) / safe, np.bincount(index, correct, bins) / safe)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with `bins` equal-width bins (15, as Guo et al. 2017)."""
    return reliability(probabilities, labels, bins).ece


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean cross-entropy of the labels under softmax(logits / temperature)."""
    scaled = logits.astype(np.float64) / temperature
    top = scaled.max(1, keepdims=True)
    log_z = np.log(np.exp(scaled - top).sum(1)) + top[:, 0]
    return float((log_z - scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature minimising the labels' NLL (Guo et al.'s temperature scaling), by golden-section
    search over log T (the NLL is convex in 1/T)."""
    if not len(labels):
        return 1.0
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    nll = lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t))
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return round(math.exp((a + b) / 2), 4)
