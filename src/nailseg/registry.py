"""Finding a stack's code from its spec: the one place that turns a ``StackSpec`` row into an
imported module (``load_stack``, ``load_bench``), after checking the stack's packages are there.
The engine and the CLI go through here, so no module outside ``stacks/`` names a stack."""

from __future__ import annotations

import importlib
import importlib.util

from nailseg.errors import ConfigError, MissingDependencyError
from nailseg.specs import STACKS, StackSpec, load_plugins
from nailseg.specs import spec_for_family as _spec_for_family


def spec_for_family(family: str) -> StackSpec:
    try:
        return _spec_for_family(family)
    except KeyError:
        raise ConfigError(f"model.family={family!r}: no stack trains it "
                          f"(families: {', '.join(f for s in STACKS.values() for f in s.families)})") from None


def load_stack(name: str):
    """Import a stack's module (checking its packages first) and return its ``STACK``."""
    load_plugins()
    spec = STACKS[name]
    for dep in spec.requires:
        if importlib.util.find_spec(dep) is None:
            raise MissingDependencyError(dep, spec.extra, spec.purpose)
    return importlib.import_module(spec.module).STACK


def load_bench(verb: str, stack: str | None = None):
    """The module behind ``nailseg bench VERB`` (``stack``: the config's stack, when the benchmark
    runs a config), found through the specs: the CLI names no stack module."""
    load_plugins()
    specs = [s for s in STACKS.values() if verb in s.benches and (stack is None or s.name == stack)]
    if not specs:
        owners = [s.name for s in STACKS.values() if verb in s.benches]
        raise ConfigError(f"nailseg bench {verb}: the {stack} stack has no such benchmark "
                          f"(it runs on: {', '.join(owners) or 'no stack'})")
    load_stack(specs[0].name)
    return importlib.import_module(specs[0].bench_module(verb))
