"""`python -m export`: checkpoint → checked ONNX file in the model repository."""
import sys

from export.cli import main

sys.exit(main())
