import pytest

from nailseg.errors import ConfigError
from nailseg.config import Experiment, load_experiment
from tests.conftest import REPO

PUBLIC_KEYS = ["data.root", "data.image_size", "trainer.max_epochs", "trainer.batch_size",
               "trainer.precision", "model.family", "model.arch", "model.encoder", "run.dir", "run.name"]


def test_public_key_names_exist():
    exp = Experiment()
    for dotted in PUBLIC_KEYS:
        node = exp
        for part in dotted.split("."):
            node = getattr(node, part)


SHIPPED = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
FAMILY_OF = {"keras": "sm", "mmdet": "maskrcnn", "segformer": "segformer", "hf-": "upernet", "maskrcnn": "maskrcnn"}


def test_configs_are_all_covered():
    assert len(SHIPPED) >= 12 and "nails-pretrained-cpu.yaml" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_validates_and_names_a_stack(name):
    from nailseg.registry import spec_for_family

    exp = load_experiment(REPO / "configs" / name)
    family = next((f for prefix, f in FAMILY_OF.items() if name.startswith(prefix)), "smp")
    assert exp.model.family == family
    spec = spec_for_family(exp.model.family)
    assert exp.pipeline in spec.pipelines and exp.stack == spec.name
    assert exp.trainer.max_epochs >= 1 and exp.data.size_hw[0] >= 32


def test_overrides_are_typed():
    exp = load_experiment(REPO / "configs" / "demo-cpu.yaml",
                          ["trainer.max_epochs=3", "model.encoder=resnet34", "data.image_size=[64, 96]",
                           "trainer.gradient_clip_val=null", "run.name=x"])
    assert exp.trainer.max_epochs == 3 and exp.model.encoder == "resnet34"
    assert exp.data.size_hw == (64, 96) and exp.run.name == "x"


@pytest.mark.parametrize("override,fragment", [
    ("trainer.max_epoch=3", "unknown key 'trainer.max_epoch' (did you mean 'trainer.max_epochs'?)"),
    ("trainer.max_epochs=many", "trainer.max_epochs"),
    ("data.image_size=100", "data.image_size"),
    ("data.crop_size=100", "data.crop_size"),
    ("data.crop_size=[512,64]", "data.crop_size: [512, 64] is larger than data.image_size"),
    ("model.family=keras2", "model.family"),
    ("augment.train=[{name: spin}]", "augment.train.0"),
    ("nonsense", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_experiment(REPO / "configs" / "demo-cpu.yaml", [override])
    assert fragment in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_experiment(tmp_path / "list.yaml")


@pytest.mark.parametrize("config,reason", [
    ("mmdet-cpu.yaml", "the mmdet stack does not train on windows (the lightning and keras stacks do)"),
])
def test_crop_size_refused_where_it_cannot_run(config, reason):
    with pytest.raises(ConfigError) as info:
        load_experiment(REPO / "configs" / config, ["data.crop_size=64"])
    assert len(info.value.lines) == 1 and "data.crop_size" in info.value.lines[0] and reason in info.value.lines[0]


def test_crop_size_refused_on_sms_pspnet():
    """sm's PSPNet checks a fixed input size when it is built, so windows cannot train it."""
    with pytest.raises(ConfigError) as info:
        load_experiment(REPO / "configs" / "keras-cpu.yaml", ["model.arch=PSPNet", "data.crop_size=32"])
    assert len(info.value.lines) == 1 and "data.crop_size: sm's PSPNet is built for one input size" in info.value.lines[0]


@pytest.mark.parametrize("config", ["demo-cpu.yaml", "keras-cpu.yaml", "keras-cpu.yaml data.pipeline=tf"])
def test_crop_size_is_a_window_of_the_picture(config):
    name, *more = config.split()
    exp = load_experiment(REPO / "configs" / name, ["data.image_size=[96,128]", "data.crop_size=[64,96]", *more])
    assert exp.data.crop_hw == (64, 96) and exp.data.size_hw == (96, 128)
    assert load_experiment(REPO / "configs" / "demo-cpu.yaml").data.crop_hw is None


@pytest.mark.parametrize("override", ["loader=dali", "augment.device=gpu", "augment.engine=tf"])
def test_replaced_keys_name_data_pipeline(override):
    with pytest.raises(ConfigError) as info:
        load_experiment(REPO / "configs" / "demo-cpu.yaml", [override])
    assert len(info.value.lines) == 1 and "replaced by 'data.pipeline'" in info.value.lines[0]


def test_model_keys_belong_to_their_family():
    with pytest.raises(ConfigError) as info:
        load_experiment(None, ["model.family=segformer", "model.encoder=resnet18"])
    line = info.value.lines[0]
    assert "unknown key 'model.encoder' for model.family segformer" in line and "variant" in line
    exp = load_experiment(None, ["model.family=sm", "model.encoder=resnet18"])
    assert exp.stack == "keras" and exp.pipeline == "albumentations"


@pytest.mark.parametrize("overrides,fragment", [
    (["data.pipeline=tf"], "data.pipeline: tf is not a pipeline of the lightning stack"),
    (["model.family=sm", "data.pipeline=kornia"], "it supports auto, albumentations, tf"),
    (["model.family=maskrcnn", "augment.train=[{name: random_resized_crop}]"],
     "random_resized_crop cannot run on the mmdet pipeline"),
    (["data.pipeline=dali", "data.balance={by: fg_bins}"], "cannot draw weighted samples"),
    (["model.family=sm", "optim.freeze_encoder_bn=true"], "optim.freeze_encoder_bn: the keras stack cannot honour it"),
    (["model.family=maskrcnn", "augment.train=[]", "data.classes=[a, b, c]", "loss.class_weights=median_frequency"],
     "loss.class_weights: the mmdet stack's losses are its own (per instance), not weighed by class"),
    (["model.family=sm", "data.pipeline=tf", "data.classes=[a, b, c]"], "the tf pipeline does not carry class-index"),
    (["data.classes=[a, b, c]", "model.classes=2"], "model.classes: 2, but data.classes names 3"),
    (["data.classes=[a, b, c]", "loss.name=lovasz"], "loss.name: lovasz is a binary loss"),
    (["data.classes=[a, b, c]", "data.ignore_index=1"], "data.ignore_index: 1 is class 'b'"),
    (["data.classes=[a, a]"], "data.classes: 'a' is named twice"),
    (["data.classes=[a]"], "data.classes: give 2 to 255 distinct"),
    (["data.classes=[a, b]", "data.colors=[[0, 0, 0]]"], "data.colors: 1 colours for 2 classes"),
    (["model.classes=5"], "model.classes: 5 classes need data.classes"),
])
def test_stack_refuses_what_it_cannot_do(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_experiment(None, overrides)
    assert fragment in str(info.value)


def test_every_optim_key_has_one_meaning():
    from nailseg.core.runtime import lr_factor

    warm = [lr_factor(e, 10, 2, "cosine") for e in range(10)]
    assert warm[0] < warm[1] < warm[2] == 1.0 and warm[-1] < 0.1
    assert [lr_factor(e, 4, 0, "none") for e in range(4)] == [1.0] * 4
    assert lr_factor(3, 4, 0, "poly", 1.0) == pytest.approx(0.25)


def test_keras_refuses_the_optim_keys_it_cannot_honour():
    with pytest.raises(ConfigError, match="optim.freeze_encoder_bn: the keras stack cannot honour it"):
        load_experiment(REPO / "configs" / "keras-cpu.yaml", ["optim.freeze_encoder_bn=true"])
    load_experiment(REPO / "configs" / "keras-cpu.yaml", ["optim.freeze_encoder_bn=false"])
    # a second optimiser for the encoder (stacks/keras/optim.py)
    assert load_experiment(REPO / "configs" / "keras-cpu.yaml", ["optim.encoder_lr_scale=0.5"]).optim.encoder_lr_scale == 0.5


def test_max_time_needs_a_unit_and_a_stack_that_budgets(monkeypatch):
    import dataclasses

    from nailseg.specs import STACKS

    exp = load_experiment(REPO / "configs" / "demo-cpu.yaml", ["trainer.max_time=20m"])
    assert exp.trainer.max_time_s == 1200
    with pytest.raises(ConfigError, match="trainer.max_time"):
        load_experiment(REPO / "configs" / "demo-cpu.yaml", ["trainer.max_time=20"])
    for config in ("keras-cpu.yaml", "mmdet-cpu.yaml"):
        assert load_experiment(REPO / "configs" / config, ["trainer.max_time=20m"]).trainer.max_time_s == 1200
    # a stack without the capability (a plugin's, say) is refused in one line naming those that have it
    spec = STACKS["mmdet"]
    monkeypatch.setitem(STACKS, "mmdet", dataclasses.replace(spec, capabilities=spec.capabilities - {"budget"}))
    with pytest.raises(ConfigError, match=r"trainer.max_time: the mmdet stack cannot size its epochs to a time budget "
                                          r"yet \(the lightning and keras stacks can\)"):
        load_experiment(REPO / "configs" / "mmdet-cpu.yaml", ["trainer.max_time=20m"])


def test_class_weights_are_checked_against_the_classes(tmp_path):
    camvid = REPO / "configs" / "camvid-pretrained-cpu.yaml"
    assert load_experiment(camvid, ["loss.class_weights=median_frequency"]).loss.class_weights == "median_frequency"
    with pytest.raises(ConfigError, match=r"loss\.class_weights: 2 weights for the 11 classes"):
        load_experiment(camvid, ["loss.class_weights=[1.0, 2.0]"])
    with pytest.raises(ConfigError, match=r"loss\.class_weights.*one positive, finite weight a class"):
        load_experiment(camvid, [f"loss.class_weights=[{', '.join(['1.0'] * 10)}, -1.0]"])
    with pytest.raises(ConfigError, match=r"loss\.class_weights: weighs the classes of data\.classes"):
        load_experiment(REPO / "configs" / "demo-cpu.yaml", ["loss.class_weights=inverse_sqrt"])


def test_many_classes_size_the_model_and_read_a_names_file(tmp_path):
    exp = load_experiment(REPO / "configs" / "camvid-pretrained-cpu.yaml")
    assert exp.model.classes == 11 and exp.data.label_spec.ignore_index == 11
    assert exp.data.label_spec.names[3] == "road" and exp.to_dict()["model"]["classes"] == 11
    (tmp_path / "classes.txt").write_text("background\nnail\nskin\n")
    exp = load_experiment(None, [f"data.root={tmp_path}", "data.classes=classes.txt"])
    assert exp.data.classes == ["background", "nail", "skin"] and exp.model.classes == 3
    assert exp.to_dict()["data"]["classes"] == ["background", "nail", "skin"]  # the run keeps the names
    with pytest.raises(ConfigError, match=r"data\.classes: .*missing\.txt: cannot read the class names"):
        load_experiment(None, [f"data.root={tmp_path}", "data.classes=missing.txt"])


def test_an_error_in_an_override_names_the_override_not_the_file(tmp_path):
    """A bad value typed on the command line is reported as that override (with the file it
    overrides), never as if the YAML file held it; a bad key in the file still names the file."""
    demo = REPO / "configs" / "demo-cpu.yaml"
    cases = {"optim.lr=abc": "optim.lr: 'Input should be a valid number",
             "optim.lrr=1": "unknown key 'optim.lrr' (did you mean 'optim.lr'?)",
             "model.family=xx": "model.family: must be one of",
             "optim=3": "optim: 'Input should be a valid dictionary"}
    for override, message in cases.items():
        with pytest.raises(ConfigError) as err:
            load_experiment(demo, ["trainer.max_epochs=2", override])
        assert str(err.value).startswith(f"{override} (override of {demo}): {message}"), str(err.value)
    with pytest.raises(ConfigError) as err:  # the latest override of a key is the one blamed
        load_experiment(demo, ["optim={lr: 0.1, name: adam}", "optim.lr=abc"])
    assert str(err.value).startswith(f"optim.lr=abc (override of {demo}): optim.lr:"), str(err.value)
    with pytest.raises(ConfigError) as err:  # a cross-key refusal names the override of its key
        load_experiment(REPO / "configs" / "mmdet-cpu.yaml", ["trainer.max_time=20"])
    assert str(err.value).startswith("trainer.max_time=20 (override of "), str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_epochs: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(bad, ["optim.lr=0.01"])
    assert str(err.value).startswith(f"{bad}: trainer.max_epochs:"), str(err.value)
