"""Models and their versions: the repository's layout and config.pbtxt, `OnnxModel`, the registry, batching, model control."""
