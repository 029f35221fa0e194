"""The v2 (Open Inference) protocol without a transport: metadata, tensors, JSON bodies, the one infer path."""
