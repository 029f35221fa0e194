"""MNIST data, the digit CNN and its training loop (see docs/training.md)."""
