"""toolkit.config: one typed config per stage, the command line generated from them, runs repeated
from a file or a saved model's .emd."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from pathlib import Path

import pytest

from toolkit import config
from toolkit.cli import _parser, main
from toolkit.runs import RunConfig


def test_a_field_added_to_a_config_is_a_cli_option(monkeypatch):
    """The command line is generated from the configs: a new field appears in --help with its
    range and default, parses into the config, and is refused outside its range."""
    @dataclasses.dataclass(frozen=True)
    class Extended(config.FitConfig):
        warmup_epochs: int = config.setting(2, "epochs of linear warm-up", low=0, high=100)

    monkeypatch.setattr(config, "FitConfig", Extended)
    parser = _parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    assert "--warmup-epochs" in train.format_help() and "epochs of linear warm-up (default 2)" in \
        " ".join(train.format_help().split())
    args = parser.parse_args(["train", "chips", "--out", "m", "--warmup-epochs", "5"])
    assert config.from_options(Extended, args).warmup_epochs == 5
    assert config.from_options(Extended, parser.parse_args(["train", "chips", "--out", "m"])).warmup_epochs == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "chips", "--out", "m", "--warmup-epochs", "101"])


STAGES = [  # (config, the function whose keywords it holds)
    (config.ExportConfig, "toolkit.export:export_training_data"),
    (config.DataConfig, "toolkit.data:prepare_data"),
    (config.Pix2PixConfig, "toolkit.models.pix2pix:Pix2Pix.__init__"),
    (config.CycleGANConfig, "toolkit.models.cyclegan:CycleGAN.__init__"),
    (config.FitConfig, "toolkit.models.training:Training.fit"),
    (config.PredictConfig, "toolkit.inference:predict_raster"),
    (config.VectorizeConfig, "toolkit.vector:vectorize"),
]


@pytest.mark.parametrize("stage, function", STAGES, ids=[s.__name__ for s, _ in STAGES])
def test_each_config_field_is_a_keyword_with_the_same_default(stage, function):
    module, name = function.split(":")
    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    parameters = inspect.signature(target).parameters
    for field in dataclasses.fields(stage):
        assert field.name in parameters, f"{field.name} is not a keyword of {function}"
        default = parameters[field.name].default
        if stage is config.FitConfig and field.name == "checkpoint":
            assert default is True and field.default == "best"  # fit's True is the config's "best"
            continue
        assert default == field.default, (function, field.name, default, field.default)


def test_a_run_file_is_checked(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text('{"model": "pix2pix", "pix2pix": {"ngf": 0}}')
    with pytest.raises(ValueError, match=r"run.json: pix2pix: ngf is 0; expected an integer from 1 to 1024"):
        RunConfig.read(bad)
    bad.write_text('{"model": "pix2pix", "fit": {"epoch": 3}}')
    with pytest.raises(ValueError, match="'epoch' is not a setting of FitConfig"):
        RunConfig.read(bad)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(bad)]) == 1
    good = tmp_path / "run.yaml"
    good.write_text("model: cyclegan\ndata: {batch_size: 2, chip_size: [64, 32]}\ncyclegan: {gen_blocks: 3}\n")
    run = RunConfig.read(good)
    assert (run.model, run.data.chip_size, run.model_config.gen_blocks, run.fit.epochs) == \
        ("cyclegan", (64, 32), 3, config.FitConfig.epochs)
    assert RunConfig.from_dict(run.to_dict()) == run


def _train(argv: list[str], capsys) -> dict:
    assert main(["train", *argv]) == 0, capsys.readouterr().err[-3000:]
    return json.loads(capsys.readouterr().out)


def test_a_saved_model_repeats_its_run(rotterdam_pairs, tmp_path, capsys):
    """``toolkit train --config model.emd`` trains with the settings that made the model: the new
    .emd's model config and run equal the first's; options given on top still win."""
    first = _train([str(rotterdam_pairs), "--out", str(tmp_path / "first"), "--epochs", "1", "--ngf", "8",
                    "--ndf", "8", "--batch-size", "4", "--chip-size", "64", "--seed", "3", "--lambda-l1", "50",
                    "--norm", "instance", "--lr", "0.001", "--checkpoint", "none"], capsys)
    emd = json.loads(Path(first["emd"]).read_text())
    run = emd["Toolkit"]["run"]
    assert run["data"] == dict(config.DataConfig.defaults(), batch_size=4, chip_size=64, seed=3)
    assert (run["fit"]["epochs"], run["fit"]["lr"], run["fit"]["checkpoint"]) == (1, 0.001, "none")
    assert RunConfig.from_emd(emd).to_dict() == first["run"]

    again = _train([str(rotterdam_pairs), "--out", str(tmp_path / "again"), "--config", first["emd"]], capsys)
    repeated = json.loads(Path(again["emd"]).read_text())
    assert repeated["Toolkit"]["config"] == emd["Toolkit"]["config"]
    assert repeated["Toolkit"]["run"] == run and again["run"] == first["run"]

    yaml_run = tmp_path / "run.yaml"
    yaml_run.write_text("model: pix2pix\ndata: {batch_size: 4, chip_size: 64, seed: 3}\n"
                        "pix2pix: {ngf: 8, ndf: 8, lambda_l1: 50.0, norm: instance}\n"
                        "fit: {epochs: 1, lr: 0.001, checkpoint: none}\n")
    from_yaml = _train([str(rotterdam_pairs), "--out", str(tmp_path / "yaml"), "--config", str(yaml_run),
                        "--ngf", "16"], capsys)
    config_yaml = json.loads(Path(from_yaml["emd"]).read_text())["Toolkit"]["config"]
    assert config_yaml == dict(emd["Toolkit"]["config"], ngf=16)


def test_an_option_of_another_model_is_refused(rotterdam_pairs, tmp_path, capsys):
    assert main(["train", str(rotterdam_pairs), "--out", str(tmp_path / "m"), "--gen-blocks", "3"]) == 1
    assert "--gen-blocks is an option of --model cyclegan, not of pix2pix" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
