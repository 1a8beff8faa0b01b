"""training/config.py: where config/train.yaml is found when no source tree holds it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from saom_ros.training import config

TRAIN_YAML = Path("share") / "saom_ros" / "config" / "train.yaml"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """config.py as a plain (non-symlink) install holds it: no config/ beside the package, and a
    Python prefix without share/saom_ros. Returns an empty folder to use as a prefix."""
    module = tmp_path / "site-packages" / "saom_ros" / "training" / "config.py"
    module.parent.mkdir(parents=True)
    monkeypatch.setattr(config, "__file__", str(module))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "python-prefix"))
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    return tmp_path


def ament_prefix(prefix: Path, with_config: bool = True) -> Path:
    """A colcon install prefix of saom_ros: the ament index marker and, if asked, train.yaml."""
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "saom_ros"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    if with_config:
        (prefix / TRAIN_YAML).parent.mkdir(parents=True)
        (prefix / TRAIN_YAML).write_text("train: {}\n")
    return prefix


def test_the_source_tree_config_comes_first():
    assert config.default_config_path() == Path(config.__file__).resolve().parents[1] / \
        "config" / "train.yaml"


def test_an_install_space_on_the_ament_index_is_found(installed, monkeypatch):
    prefix = ament_prefix(installed / "install" / "saom_ros")
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{installed / 'elsewhere'}:{prefix}")
    assert config.default_config_path() == prefix / TRAIN_YAML


def test_the_python_prefix_is_the_last_resort(installed, monkeypatch):
    # the ament index knows a prefix of saom_ros without the file (e.g. a partial install)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(ament_prefix(installed / "other", False)))
    (Path(sys.prefix) / TRAIN_YAML).parent.mkdir(parents=True)
    (Path(sys.prefix) / TRAIN_YAML).write_text("train: {}\n")
    assert config.default_config_path() == Path(sys.prefix) / TRAIN_YAML


@pytest.mark.parametrize("ament", ["unset", "without saom_ros", "not installed"])
def test_not_found_names_every_place_looked_at(installed, monkeypatch, ament):
    if ament == "without saom_ros":
        (installed / "empty-prefix").mkdir()
        monkeypatch.setenv("AMENT_PREFIX_PATH", str(installed / "empty-prefix"))
    elif ament == "not installed":  # training runs without ROS
        monkeypatch.setitem(sys.modules, "ament_index_python.packages", None)
    with pytest.raises(FileNotFoundError, match="config/train.yaml not found") as err:
        config.default_config_path()
    assert str(installed / "site-packages" / "saom_ros" / "config" / "train.yaml") in str(err.value)
    assert str(Path(sys.prefix) / TRAIN_YAML) in str(err.value)
