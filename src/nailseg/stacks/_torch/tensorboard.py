"""Keep TensorFlow out of torch processes that write TensorBoard events.

The ``tensorboard`` package imports TensorFlow when it is installed (for its ``tf`` compat
layer); in a process that also runs torch that is both slow and risky (TensorFlow and
torch's triton crash when loaded in the wrong order). tensorboard falls back to its own
TensorFlow stub when the module ``tensorboard.compat.notf`` exists: this provides it.
"""

from __future__ import annotations

import sys
import types


def use_tensorboard_without_tensorflow() -> None:
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
