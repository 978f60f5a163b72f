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


@pytest.mark.parametrize("name", ["lightning-unet.yaml", "demo-cpu.yaml"])
def test_shipped_configs_load(name):
    exp = load_experiment(REPO / "configs" / name)
    assert exp.model.family == "smp"


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
