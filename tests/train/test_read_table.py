"""A config file that is not valid TOML or JSON is one error line naming the file."""

from __future__ import annotations

import re

import pytest

from fastchgnet.train.config import load_config, read_table


def test_toml_syntax_error_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[optim\nlr = 1e-3\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not valid TOML: ") as info:
        load_config(path)
    assert "line 1" in str(info.value)
    assert "\n" not in str(info.value)


def test_json_syntax_error_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"optim": {"lr": 1e-3,}}')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not valid JSON: "):
        read_table(path)


def test_valid_files_still_read(tmp_path) -> None:
    (tmp_path / "ok.toml").write_text("[optim]\nlr = 0.002\n")
    (tmp_path / "ok.json").write_text('{"optim": {"lr": 0.002}}')
    assert read_table(tmp_path / "ok.toml") == read_table(tmp_path / "ok.json")
