"""The training stacks: one folder each (``stacks/<name>/``) whose ``stack.py`` exposes ``STACK``,
an object that satisfies :class:`nailseg.contract.Stack`, plus one :class:`~nailseg.specs.StackSpec`
row in :mod:`nailseg.specs`. The spec is plain data: the config validates ``model.family`` and
``data.pipeline`` against it and the CLI names the extra to install, all without importing the
stack's framework. Only ``stacks/<name>/`` imports that framework (``stacks/_torch/`` holds what
the torch stacks share), and torch and TensorFlow never share a process. :mod:`nailseg.registry`
imports a stack from its spec.
"""

from nailseg.registry import load_bench, load_stack, spec_for_family  # noqa: F401  (the older import path)
from nailseg.specs import STACKS, StackSpec  # noqa: F401
