"""A training run as a file: :class:`RunConfig`, the model's name and the settings of each stage
(:mod:`toolkit.config`), read from YAML, JSON or a saved model's ``.emd``
(``toolkit train --config``).

Layer: formats, I/O and runtime (pure Python).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.config import MODEL_CONFIGS, DataConfig, FitConfig, Pix2PixConfig, StageConfig

__all__ = ["RunConfig"]


@dataclass(frozen=True)
class RunConfig:
    """A training run, as ``toolkit train --config`` reads it: the model's name and the settings
    of each stage. A YAML or JSON file::

        model: pix2pix
        data: {batch_size: 4, chip_size: 64}
        pix2pix: {ngf: 16, ndf: 16}
        fit: {epochs: 5, lr: 0.0002}

    or a saved model's ``.emd`` (its ``ModelType``, ``Toolkit.config`` and ``Toolkit.run``)."""

    model: str = "pix2pix"
    data: DataConfig = field(default_factory=DataConfig)
    model_config: StageConfig = field(default_factory=Pix2PixConfig)
    fit: FitConfig = field(default_factory=FitConfig)

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data.to_dict(), self.model: self.model_config.to_dict(),
                "fit": self.fit.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> RunConfig:
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected an object with model, data, <model> and fit settings.")
        model = values.get("model", "pix2pix")
        if model not in MODEL_CONFIGS:
            raise ValueError(f"{source}: model is {model!r}; expected one of {sorted(MODEL_CONFIGS)}.")
        unknown = sorted(set(values) - {"model", "data", "fit", *MODEL_CONFIGS})
        if unknown:
            raise ValueError(f"{source}: {unknown[0]!r} is not a section of a run; expected model, data, "
                             f"{model} and fit.")
        return cls(model, DataConfig.from_dict(values.get("data", {}), f"{source}: data"),
                   MODEL_CONFIGS[model].from_dict(values.get(model, {}), f"{source}: {model}"),
                   FitConfig.from_dict(values.get("fit", {}), f"{source}: fit"))

    @classmethod
    def from_emd(cls, emd: dict, source: str = ".emd") -> RunConfig:
        """The run that trained a saved model: its model settings from ``Toolkit.config`` (the
        keys the data fixed, like bands and chip size, are the data's again), the data and fit
        settings from ``Toolkit.run``."""
        names = {config.__name__.removesuffix("Config").lower(): name for name, config in MODEL_CONFIGS.items()}
        model = names.get(str(emd.get("ModelType", "")).lower())
        toolkit = emd.get("Toolkit")
        if model is None or not isinstance(toolkit, dict):
            raise ValueError(f"{source}: not a model the toolkit saved (ModelType {emd.get('ModelType')!r}, "
                             "no Toolkit section): it holds no run to repeat.")
        run = toolkit.get("run") or {}
        return cls(model, DataConfig.from_dict(run.get("data", {}), f"{source}: Toolkit.run.data"),
                   MODEL_CONFIGS[model].from_dict(toolkit.get("config", {}), f"{source}: Toolkit.config",
                                                  strict=False),
                   FitConfig.from_dict(run.get("fit", {}), f"{source}: Toolkit.run.fit"))

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunConfig:
        """A run from a YAML or JSON file, or from a saved model's ``.emd``; ``ValueError``
        naming the file for anything it cannot use."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"{path}: cannot read the run configuration ({err.strerror or err}).") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                values = yaml.safe_load(text)
            else:
                values = json.loads(text)
        except Exception as err:  # yaml's and json's errors say where
            raise ValueError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                             f"{err}") from None
        if path.suffix.lower() == ".emd":
            return cls.from_emd(values, str(path))
        return cls.from_dict(values, str(path))
