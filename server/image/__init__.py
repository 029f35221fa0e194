"""The image pipeline: request bytes decoded, the presets (the digit pipeline among them), `ImageClassifier`."""
