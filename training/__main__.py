"""`python -m training` is `python -m training.train`."""
import sys

from training.train import main

sys.exit(main())
