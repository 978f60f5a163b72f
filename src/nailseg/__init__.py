"""nailseg: train, evaluate, benchmark and serve segmentation models for hands and nails.

The top-level package is deliberately light: it imports no deep-learning framework, so
``nailseg --help`` and the data tools start fast. Stacks are imported on demand.
"""

__version__ = "0.1.0"
