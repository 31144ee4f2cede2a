"""``--labels`` values are type-checked as the run config checks ``data.labels`` (one check,
``data.field_types.coerce``). Before, ``{"energy_per_atom": "false"}`` counted as true (every
energy divided by the atom count once too often, silently) and ``{"max_stress_gpa": "1000"}``
ended the conversion in a TypeError traceback."""

from __future__ import annotations

import json

import pytest

from fastchgnet.cli import main
from fastchgnet.data.ase_labels import AseLabels, labels_from_json


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"energy_per_atom": "false"}', "energy_per_atom='false': expected true or false"),
        ('{"max_stress_gpa": "1000"}', "max_stress_gpa='1000': expected float"),
        ('{"energy": 3}', "energy=3: expected str"),
        ('{"stress_unit": "bar"}', "stress_unit='bar': choose one of"),
    ],
)
def test_labels_of_the_wrong_type_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=r"^--labels ") as refusal:
        labels_from_json(text)
    assert str(refusal.value).startswith(f"--labels {message}")
    with pytest.raises(ValueError, match=message.split(":")[0]):
        AseLabels(**json.loads(text))


def test_labels_json_and_the_run_config_give_the_same_message():
    from fastchgnet.train.config import TrainConfig

    with pytest.raises(ValueError, match="expected true or false") as config:
        TrainConfig.from_dict({"data": {"labels": {"energy_per_atom": "false"}}})
    with pytest.raises(ValueError, match="expected true or false") as labels:
        labels_from_json('{"energy_per_atom": "false"}')
    assert str(config.value) == "config data.labels." + str(labels.value).removeprefix("--labels ")


def test_an_integer_limit_is_a_float():
    assert labels_from_json('{"max_stress_gpa": 500}').max_stress_gpa == 500.0


def test_convert_refuses_a_string_boolean_in_one_line(tmp_path, capsys):
    source = tmp_path / "one.extxyz"
    source.write_text('1\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
                      "Cu 0 0 0\n")  # fmt: skip
    args = ["data", "convert", str(source), "-o", str(tmp_path / "c"), "--workers", "1"]
    assert main([*args, "--labels", '{"energy_per_atom": "false"}']) == 1
    err = capsys.readouterr().err.strip()
    assert "energy_per_atom='false': expected true or false" in err
    assert "\n" not in err
