"""The pipeline table: every (op, pipeline) pair a ``PipelineSpec`` row claims has exactly one
translation in that pipeline's own table and runs there; every pair it does not claim is refused
when the config is read. TensorFlow's table is checked in its own process
(tests/stacks/keras/test_tfdata.py::test_tf_table_translates_every_claimed_op)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from pydantic import TypeAdapter

from nailseg.config import load_experiment
from nailseg.core.augment import AugmentOp
from nailseg.errors import ConfigError
from nailseg.specs import ALL_OPS, PIPELINE_SPECS, PIPELINES, STACKS
from tests.pipelines import albumentations_apply, coded_pair, dali_apply, kornia_apply


def op_of(name: str):
    """The op with its defaults, always applied (p = 1), so a translation that breaks is seen."""
    return TypeAdapter(AugmentOp).validate_python({"name": name, "p": 1.0})


def family_for(pipeline: str) -> str:
    return next(s.families[0] for s in STACKS.values() if pipeline in s.pipelines)


def table_of(pipeline: str) -> dict:
    if pipeline == "albumentations":
        from nailseg.core.augment import ALBUMENTATIONS_OPS
        return ALBUMENTATIONS_OPS
    if pipeline == "kornia":
        pytest.importorskip("torch")
        from nailseg.stacks.lightning.loaders.kornia import KORNIA_OPS
        return KORNIA_OPS
    if pipeline == "dali":
        pytest.importorskip("torch")
        from nailseg.stacks.lightning.loaders.dali import DALI_OPS
        return DALI_OPS
    if pipeline == "mmdet":
        from nailseg.stacks.mmdet.config import MMDET_OPS
        return MMDET_OPS
    pytest.skip(f"the {pipeline} table is checked in its framework's own test process")


def test_every_pipeline_row_belongs_to_a_stack_and_auto_is_first():
    assert PIPELINES[0] == "auto" and set(PIPELINES[1:]) == set(PIPELINE_SPECS)
    used = {p for s in STACKS.values() for p in s.pipelines}
    assert used == set(PIPELINE_SPECS)
    for spec in PIPELINE_SPECS.values():
        assert spec.ops <= ALL_OPS and spec.ops, spec.name
        assert spec.reads_cache or spec.why_no_cache, f"{spec.name}: a refusal needs its reason"


@pytest.mark.parametrize("pipeline", [p for p in PIPELINE_SPECS if p != "tf"])
def test_table_keys_are_exactly_the_claimed_ops(pipeline):
    assert set(table_of(pipeline)) == PIPELINE_SPECS[pipeline].ops


@pytest.mark.parametrize("pipeline,op", [(p, o) for p in PIPELINE_SPECS for o in sorted(ALL_OPS)])
def test_config_accepts_claimed_pairs_and_refuses_the_rest(pipeline, op):
    overrides = [f"model.family={family_for(pipeline)}", f"data.pipeline={pipeline}", f"augment.train=[{{name: {op}}}]"]
    if op in PIPELINE_SPECS[pipeline].ops:
        assert load_experiment(None, overrides).pipeline == pipeline
    else:
        with pytest.raises(ConfigError, match=f"{op} cannot run on the {pipeline} pipeline"):
            load_experiment(None, overrides)


def _run(pipeline: str, op, tmp_path):
    image, mask = coded_pair(64, 64)
    if pipeline == "albumentations":
        return [albumentations_apply([op], image, mask, (64, 64))]
    if pipeline == "kornia":
        pytest.importorskip("kornia")
        return [kornia_apply([op], image, mask, (64, 64))]
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
        return dali_apply([op], image, mask, (64, 64), tmp_path)
    raise AssertionError(pipeline)


@pytest.mark.parametrize("pipeline,op", [(p, o) for p in ("albumentations", "kornia", "dali")
                                         for o in sorted(PIPELINE_SPECS[p].ops)])
def test_every_claimed_pair_translates_and_runs(pipeline, op, tmp_path):
    """Each translation builds and runs on a coded pair: the image keeps its shape and value range,
    the mask stays binary and (geometry being shared) still marks the red pixels."""
    (image, mask), = _run(pipeline, op_of(op), tmp_path)
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
    if op not in {"brightness_contrast", "hue_saturation", "gauss_noise", "blur"}:  # colour ops change red
        red = image[..., 0] > 127
        assert (red == mask.astype(bool)).mean() > 0.9


def test_mmdet_translations_are_registered_transforms():
    """Each op of the mmdet row is a step MMDetection builds: the flips its RandomFlip, the others its
    Albu (seeded) over the same albumentations transform, with the same arguments, the Lightning path
    builds (tests/stacks/mmdet/test_transforms.py runs them)."""
    import albumentations as A

    from nailseg.core.augment import GEOMETRIC, to_albumentations
    from nailseg.stacks.mmdet.config import MMDET_FLIPS, train_augmentation

    for name in sorted(PIPELINE_SPECS["mmdet"].ops):
        steps = train_augmentation([op_of(name)])
        if name in MMDET_FLIPS:
            assert steps == [dict(type="RandomFlip", prob=1.0, direction=MMDET_FLIPS[name])]
            continue
        albu, *rest = steps
        built = to_albumentations([op_of(name)], (64, 64), normalize=False).transforms[1]  # after the resize
        spec = A.to_dict(built)["transform"]
        assert albu["type"] == "SeededAlbu"
        assert albu["transforms"] == [{"type": spec.pop("__class_fullname__"), **spec}]
        assert rest == ([dict(type="BoxesFromMasks")] if name in GEOMETRIC else [])
    if importlib.util.find_spec("mmdet") is not None:
        from mmdet.registry import TRANSFORMS
        from mmdet.utils import register_all_modules

        import nailseg.stacks.mmdet.templates.augmentation  # noqa: F401 - registers SeededAlbu, BoxesFromMasks

        register_all_modules()
        assert all(TRANSFORMS.get(name) is not None for name in ("RandomFlip", "SeededAlbu", "BoxesFromMasks"))
