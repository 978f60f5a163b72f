"""The import rules the package is built on, checked over every module's source (no imports run):

- only ``nailseg/stacks/`` imports a deep-learning or inference framework at module level, so
  ``nailseg --help``, the data tools and the config never load one;
- no module outside ``stacks/`` names a stack's own module (the CLI and the engine reach a stack
  through its ``StackSpec``: ``load_stack``, ``load_bench``);
- nothing imports the CLI but the CLI;
- imports point down the layers below (a module may import its own layer and those under it):

  ===  ==============================================================================
   0   ``errors``, ``specs`` (plain data: the stack and pipeline rows), ``registry``
   1   ``core`` (a library: data, metrics, evaluation, io, pictures; no config)
   2   ``config`` (the typed experiment), ``deploy`` (onnxruntime inference and serving)
   3   ``runs`` (run folders), ``engine`` (the Stack protocol and the training steps)
   4   ``workflows`` (compare, k-fold, the balance report)
   5   ``stacks`` (one folder per stack; ``stacks/_torch`` is what the torch stacks share)
   6   ``tutorial``, ``forked_cli`` (the CLI run in forks of a warm interpreter), ``cli``
  ===  ==============================================================================

- a stack folder never imports another stack's folder (only ``stacks/_torch``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FRAMEWORKS = {"torch", "torchvision", "tensorflow", "lightning", "keras", "tf_keras", "mmdet", "mmengine", "mmcv",
              "transformers", "kornia", "nvidia", "segmentation_models", "segmentation_models_pytorch", "timm",
              "onnx", "onnxruntime"}
MODULES = sorted(SRC.glob("nailseg/**/*.py"))


def _imports(tree: ast.AST, top_level_only: bool) -> list[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_imports_point_down(path: Path):
    module = _name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if not module.startswith("nailseg.stacks."):
        loaded = [m for m in _imports(tree, top_level_only=True) if m.split(".")[0] in FRAMEWORKS]
        assert not loaded, f"{module} imports {loaded} at module level (only stacks/ may)"
        named = [m for m in _imports(tree, top_level_only=False) if m.startswith("nailseg.stacks.")]
        assert not named, f"{module} names a stack's module {named}: go through nailseg.stacks' specs"
    if not module.startswith("nailseg.cli"):
        cli = [m for m in _imports(tree, top_level_only=False) if m.startswith("nailseg.cli")]
        assert not cli, f"{module} imports the CLI {cli}"


LAYERS = [("nailseg.errors", 0), ("nailseg.specs", 0), ("nailseg.registry", 0), ("nailseg.core", 1),
          ("nailseg.config", 2), ("nailseg.deploy", 2), ("nailseg.runs", 3), ("nailseg.contract", 3), ("nailseg.engine", 3),
          ("nailseg.workflows", 4), ("nailseg.stacks", 5), ("nailseg.tutorial", 6), ("nailseg.forked_cli", 6), ("nailseg.cli", 6)]


def layer_of(module: str) -> int:
    if module == "nailseg":
        return 0
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module}: in no layer; add it to LAYERS (and to docs/architecture.md)")


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_import_points_up_a_layer(path: Path):
    module = _name(path).removesuffix(".__init__")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    up = [m for m in _imports(tree, top_level_only=False)
          if m.split(".")[0] == "nailseg" and layer_of(m) > layer_of(module)]
    assert not up, f"{module} (layer {layer_of(module)}) imports {up} from above it"
    if module.startswith("nailseg.stacks."):
        own = module.split(".")[2]
        others = [m for m in _imports(tree, top_level_only=False) if m.startswith("nailseg.stacks.")
                  and m.split(".")[2] not in (own, "_torch")]
        assert not others, f"{module} imports another stack's folder {others}: share through stacks/_torch"


def test_specs_is_plain_data():
    tree = ast.parse((SRC / "nailseg" / "specs.py").read_text(encoding="utf-8"))
    assert [m for m in _imports(tree, top_level_only=False) if m.split(".")[0] == "nailseg"] == ["nailseg.errors"]


def test_the_rule_sees_every_module():
    assert len(MODULES) > 60 and any(_name(p) == "nailseg.cli.bench" for p in MODULES)


def test_a_benchmark_is_found_through_the_specs():
    from nailseg.errors import ConfigError
    from nailseg.registry import load_bench
    from nailseg.specs import STACKS

    claimed = sorted((verb, name) for name, spec in STACKS.items() for verb in spec.benches)
    assert claimed == [("loaders", "lightning"), ("tfdata", "keras"), ("train", "keras"), ("train", "lightning")]
    for verb, name in claimed:
        assert (SRC / "nailseg" / "stacks" / name / f"bench_{verb}.py").exists()
    with pytest.raises(ConfigError, match="the mmdet stack has no such benchmark"):
        load_bench("train", "mmdet")
