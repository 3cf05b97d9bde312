"""fit(tensorboard=True): the event files hold, per epoch, the losses, the learning rate, the
monitored validation metric and a show_results image; read back with TensorBoard's own reader."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit import Pix2Pix, prepare_data
from toolkit.models import tensorboard as tb_module
from toolkit.models.tensorboard import scalar_tag


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def data(rotterdam_pairs):
    return prepare_data(rotterdam_pairs, batch_size=8, seed=0)


def test_scalars_and_an_image_per_epoch(data, tmp_path):
    torch.manual_seed(0)
    model = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path)
    model.fit(2, lr=1e-3, tensorboard=True, monitor="ssim", checkpoint=False)
    runs = list((tmp_path / "training_log").iterdir())
    assert len(runs) == 1 and runs[0].name == f"pix2pix-{model.fit_id}"
    acc = _events(runs[0])
    tags = acc.Tags()
    expected = {"train_loss", "valid_loss", "losses/gen_loss", "losses/l1_loss", "losses/d_loss",
                "learning_rate", "metrics/ssim"}
    assert expected <= set(tags["scalars"]), tags["scalars"]
    for tag in expected:
        assert [e.step for e in acc.Scalars(tag)] == [0, 1], tag
    # the values are the ones the history recorded, epoch by epoch
    for key, tag in (("valid_loss", "valid_loss"), ("l1_loss", "losses/l1_loss"), ("ssim", "metrics/ssim"),
                     ("lr", "learning_rate")):
        np.testing.assert_allclose([e.value for e in acc.Scalars(tag)], [r[key] for r in model.history],
                                   rtol=1e-5, err_msg=tag)
    assert tags["images"] == ["show_results"]
    images = acc.Images("show_results")
    assert [e.step for e in images] == [0, 1]
    picture = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))
    assert picture.ndim == 3 and picture.shape[0] > 50 and picture.shape[1] > 50 and picture.std() > 0


def test_only_rank_zero_writes(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tb_module, "ddp", types.SimpleNamespace(is_main=lambda: False))
    model = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path)
    model.fit(1, lr=1e-3, tensorboard=True, checkpoint=False)
    assert not (tmp_path / "training_log").exists()


def test_tags():
    assert scalar_tag("valid_loss", ("gen_loss",)) == "valid_loss"
    assert scalar_tag("gen_loss", ("gen_loss",)) == "losses/gen_loss"
    assert scalar_tag("psnr", ("gen_loss",)) == "metrics/psnr"
