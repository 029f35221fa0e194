"""Export a training checkpoint to a checked, self-describing ONNX file in the model repository.

The pipeline is export/pipeline.py, the command line export/cli.py; both are re-exported here.
"""
from export.cli import main, parse_args
from export.pipeline import ExportResult, export_checkpoint

__all__ = ["ExportResult", "export_checkpoint", "main", "parse_args"]
