"""TrainConfig validation (issue 12): every field type-checked from its annotation, ranges from FIELD_RULES,
config files named in the message; the CLI's options go through the same check."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from napari_lgg_seg.config import FIELD_RULES, ConfigError, TrainConfig, field_problem, parse_field


@pytest.mark.parametrize(("field", "value"), [
    ("epochs", "3"), ("epochs", 0), ("epochs", 2.5), ("epochs", True),
    ("batch_size", 0), ("batch_size", -1), ("steps_per_epoch", -1), ("steps_per_epoch", 0),
    ("num_threads", -1), ("val_batch_size", 0), ("lr", 0.0), ("lr", float("nan")), ("lr", "0.1"),
    ("flip", 1), ("flip", "yes"), ("model_features", [4, "8"]), ("model_features", []), ("model_features", [-4]),
    ("model_bottleneck", 10**6), ("image_size", 1), ("image_size", -256), ("image_size", 100), ("image_size", 4096),
    ("crop_size", 40), ("tumour_fraction", 1.5), ("threshold", 1.5), ("threshold", 0.0), ("val_fraction", 1.0),
    ("precision", "fp16"), ("device", "tpu"), ("loss", "focal"), ("scheduler", "step"), ("train_patients", "P1"),
    ("train_patients", [1, 2]), ("cache_dir", 5), ("plateau_factor", 1.0), ("rotate_degrees", -1.0), ("seed", -1),
])
def test_bad_field_is_refused_naming_it(field, value):
    config = dataclasses.replace(TrainConfig(), **{field: value})
    with pytest.raises(ConfigError, match=rf"^{field} must be"):
        config.validate()


@pytest.mark.parametrize(("field", "value"), [
    ("steps_per_epoch", None), ("crop_size", None), ("crop_size", 128), ("tumour_fraction", None),
    ("tumour_fraction", 0.5), ("lr", 1), ("threshold", 0.3), ("model_features", (8, 16)), ("num_threads", 0),
])
def test_good_values_pass(field, value):
    dataclasses.replace(TrainConfig(), **{field: value}).validate()


def test_every_field_of_the_dataclass_is_type_checked():
    """The check is driven by the annotations: a field added later is covered without touching validate()."""

    @dataclasses.dataclass
    class Extended(TrainConfig):
        new_flag: bool = False
        new_size: int | None = None

    Extended().validate()
    with pytest.raises(ConfigError, match="^new_flag must be true or false"):
        Extended(new_flag="yes").validate()
    with pytest.raises(ConfigError, match="^new_size must be a whole number or absent"):
        Extended(new_size="3").validate()
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):  # the defaults themselves are valid
        assert field_problem(f.name, getattr(TrainConfig(), f.name)) is None, f.name
        assert f.name in hints
    assert set(FIELD_RULES) <= set(hints)  # no rule for a field that does not exist


def test_toml_with_a_string_number_names_the_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('epochs = "3"\n')
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_file(path)
    assert str(path) in str(info.value) and "epochs must be a whole number" in str(info.value)


@pytest.mark.parametrize("text", ['batch_size = -1\n', 'image_size = 1\n', 'nonsense = 1\n', 'epochs = \n'])
def test_toml_errors_name_the_file(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        TrainConfig.from_file(path)


def test_shipped_configs_validate():
    for path in sorted((Path(__file__).resolve().parents[1] / "training" / "configs").glob("*.toml")):
        TrainConfig.from_file(path).validate()


def test_parse_field_parses_by_annotation_and_checks_the_range():
    assert parse_field("epochs", "3") == 3
    assert parse_field("lr", "0.5") == 0.5
    assert parse_field("steps_per_epoch", "7") == 7
    assert parse_field("device", "cpu") == "cpu"
    for name, text in (("batch_size", "0"), ("batch_size", "-1"), ("steps_per_epoch", "-1"), ("num_threads", "-1"),
                       ("epochs", "x"), ("lr", "nan"), ("val_batch_size", "0")):
        with pytest.raises(ConfigError, match="^must be"):
            parse_field(name, text)
