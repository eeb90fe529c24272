"""compress/config.py: TOML/YAML loading, typed --set overrides, unknown keys and bad values."""
from __future__ import annotations

import dataclasses
import tomllib

import pytest

from compress.config import PipelineConfig, build, load_config, parse_override, to_dict, to_toml
from compress.errors import CompressError
from stages.distill import DistillConfig

TOML_TEXT = """
threads = 1

[data]
source = "digits"
seed = 3

[distill]
temperature = 2.5
alpha = 0.5
mode = "online"
student = { arch = "mlp", width = 0.25 }

[distill.train]
epochs = 2
optimizer = "adamw"

[prune]
amount = 0.35
protected = ["features.1"]
"""

YAML_TEXT = """
threads: 1
data:
  source: digits
  seed: 3
distill:
  temperature: 2.5
  alpha: 0.5
  mode: online
  student: {arch: mlp, width: 0.25}
  train:
    epochs: 2
    optimizer: adamw
prune:
  amount: 0.35
  protected: [features.1]
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,text", [("run.toml", TOML_TEXT), ("run.yaml", YAML_TEXT), ("run.yml", YAML_TEXT)])
def test_config_file_sets_every_section(tmp_path, name, text):
    cfg = load_config(_write(tmp_path, name, text))
    assert cfg.threads == 1
    assert (cfg.data.source, cfg.data.seed) == ("digits", 3)
    assert cfg.distill.temperature == 2.5 and cfg.distill.alpha == 0.5 and cfg.distill.mode == "online"
    assert (cfg.distill.student.arch, cfg.distill.student.width) == ("mlp", 0.25)
    assert cfg.distill.train.epochs == 2 and cfg.distill.train.optimizer == "adamw"
    assert cfg.prune.amount == 0.35 and cfg.prune.protected == ["features.1"]
    # Untouched fields keep their defaults, including those of a section that was only partly given.
    assert cfg.distill.train.batch_size == DistillConfig().train.batch_size
    assert cfg.quantize == PipelineConfig().quantize


def test_toml_and_yaml_give_the_same_config(tmp_path):
    assert load_config(_write(tmp_path, "a.toml", TOML_TEXT)) == load_config(_write(tmp_path, "a.yaml", YAML_TEXT))


def test_overrides_win_over_the_file_and_are_typed(tmp_path):
    cfg = load_config(_write(tmp_path, "a.toml", TOML_TEXT), [
        "distill.temperature=3",  # an int where a float is expected is accepted and converted
        "distill.train.epochs=7", "data.source=mnist",  # a bare word is a string
        "quantize.per_channel=false", 'prune.protected=["stem.0", "classifier"]', "data.image_size=none",
        "teacher.model.depth=8",
    ])
    assert cfg.distill.temperature == 3.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.distill.train.epochs == 7 and cfg.data.source == "mnist"
    assert cfg.quantize.per_channel is False
    assert cfg.prune.protected == ["stem.0", "classifier"]
    assert cfg.data.image_size is None and cfg.teacher.model.depth == 8


def test_parse_override():
    assert parse_override("distill.train.epochs=3") == ("distill.train.epochs", 3)
    assert parse_override(" data.source = digits ") == ("data.source", "digits")
    assert parse_override("x.y=[1, 2]") == ("x.y", [1, 2])
    with pytest.raises(CompressError, match="section.key=value"):
        parse_override("distill.temperature")


@pytest.mark.parametrize("override,message", [
    ("distill.train.epochs=2.5", "distill.train.epochs must be int, got 2.5"),
    ("distill.temperature=hot", "distill.temperature must be float, got 'hot'"),
    ("quantize.per_channel=1", "quantize.per_channel must be bool, got 1"),
    ("prune.protected=3", "prune.protected must be list"),
    ("threads=true", "threads must be int, got True"),
    ("distill.mode=3", "distill.mode must be str, got 3"),
])
def test_override_of_the_wrong_type_names_key_and_type(override, message):
    with pytest.raises(CompressError, match=message.replace("[", r"\[")):
        load_config(None, [override])


@pytest.mark.parametrize("override,key,valid", [
    ("distill.tempreature=2", "distill.tempreature", dataclasses.fields(DistillConfig)),
    ("distill.train.epoch=2", "distill.train.epoch", None),
    ("distil.temperature=2", "distil", dataclasses.fields(PipelineConfig)),
])
def test_unknown_key_lists_the_valid_keys(override, key, valid):
    with pytest.raises(CompressError, match=f"unknown config key {key}") as info:
        load_config(None, [override])
    valid_names = [f.name for f in valid] if valid else ["epochs", "batch_size", "lr", "optimizer", "schedule"]
    for name in valid_names:
        assert name in str(info.value)


def test_unknown_key_in_a_file_is_refused(tmp_path):
    with pytest.raises(CompressError, match=r"unknown config key quantize\.calibration_sample: valid keys .*calibration_samples"):
        load_config(_write(tmp_path, "a.toml", "[quantize]\ncalibration_sample = 8\n"))


@pytest.mark.parametrize("override,section,message", [
    ("distill.temperature=0", "distill", "distill.temperature must be > 0, got 0"),
    ("distill.alpha=1.5", "distill", r"distill.alpha must be within \[0, 1\], got 1.5"),
    ("distill.mode=sideways", "distill", "distill.mode must be one of offline, online"),
    ("prune.amount=1.0", "prune", r"prune.amount must be a fraction in \(0, 1\)"),
    ("prune.finetune.optimizer=adam", "prune.finetune", "optimizer must be one of sgd, adamw, got 'adam'"),
    ("distill.train.lr=0", "distill.train", "lr must be > 0"),
    ("distill.student.arch=vgg", "distill.student", "unknown architecture 'vgg': choose one of mlp, resnet, mobilenet"),
    ("quantize.method=kl", "quantize", "quantize.method must be one of minmax, entropy, percentile"),
    ("export.opset=9", "export", r"export.opset must be within 13..21"),
    ("data.val_fraction=0.7", "data", "data.val_fraction must be between 0 and 0.5"),
    ("teacher.source=internet", "teacher", "teacher.source must be one of auto, pretrained, train, file"),
    ("ship.accuracy_budget=-1", "ship", "ship.accuracy_budget must be >= 0"),
])
def test_bad_value_surfaces_as_compress_error_naming_section_and_key(override, section, message):
    """__post_init__ raises ValueError; the loader turns it into a CompressError that says where the bad value is,
    even for nested sections shared by several stages (teacher.train, distill.train, prune.finetune)."""
    with pytest.raises(CompressError, match=message) as info:
        load_config(None, [override])
    assert f"[{section}]" in str(info.value)
    assert isinstance(info.value.__cause__, (ValueError, CompressError))


def test_value_where_a_section_belongs_and_the_reverse():
    with pytest.raises(CompressError, match="distill must be a section"):
        load_config(None, ["distill=3"])
    with pytest.raises(CompressError, match="distill.temperature must be float"):
        load_config(None, ["distill.temperature.low=3"])


@pytest.mark.parametrize("name,text,message", [
    ("bad.toml", "[distill\ntemperature = 2", "cannot parse config"),
    ("bad.yaml", "distill: [unclosed", "cannot parse config"),
    ("list.yaml", "- a\n- b\n", "must be a mapping of sections"),
    ("run.json", "{}", r"must end in \.toml, \.yaml or \.yml"),
])
def test_unreadable_config_files(tmp_path, name, text, message):
    with pytest.raises(CompressError, match=message):
        load_config(_write(tmp_path, name, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(CompressError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_to_toml_round_trips_the_quick_preset(tmp_path):
    quick = PipelineConfig.quick()
    text = to_toml(to_dict(quick))
    tomllib.loads(text)  # valid TOML
    assert load_config(_write(tmp_path, "quick.toml", text)) == quick


def test_a_manifests_config_rebuilds_the_same_config():
    quick = PipelineConfig.quick()
    assert build(PipelineConfig, to_dict(quick)) == quick


def test_quick_preset_is_small():
    quick = PipelineConfig.quick()
    assert quick.data.source == "digits"
    assert quick.teacher.source == "train" and quick.teacher.model.arch == "mlp"
    assert quick.distill.student.arch == "mlp" and quick.distill.student.width < 1
    assert quick.quantize.calibration_samples <= 64
