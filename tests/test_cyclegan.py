"""toolkit.CycleGAN: unpaired translation on the shared model base, on real Rotterdam chips.

Learning is tested on panchromatic -> green band synthesis from three parts of one scene
(``rotterdam_pan_green``: domain A, domain B and the true pairs that score it share no pixel),
where the identity loss applies. The mechanics are tested on 4-band multispectral <-> panchromatic
(``rotterdam_unpaired``), where it cannot: there, at CPU size, CycleGAN settles on a translation
with inverted brightness (correlation about -0.7 with the true pan), which is as cycle-consistent
as the right one: the ambiguity the paper's identity loss is for.
CPU-sized: ngf/ndf 8, 2 residual blocks, 64 px chips, a few epochs.
"""

from __future__ import annotations

import json
import random
import zipfile

import matplotlib.pyplot as plt
import numpy as np
import pytest
import rasterio
import torch
from fastai.callback.core import Callback

from toolkit import CycleGAN, Pix2Pix, load_model, prepare_data
from toolkit.models import ImagePool, ResnetGenerator
from toolkit.models.checkpoint import load_checkpoint

TINY = dict(ngf=8, ndf=8, gen_blocks=2)


def snapshot(net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def unpaired(rotterdam_unpaired):
    return prepare_data(rotterdam_unpaired, dataset_type="CycleGAN", batch_size=4, seed=0)


@pytest.fixture(scope="module")
def pan_green(rotterdam_pan_green):
    return prepare_data(rotterdam_pan_green, batch_size=2, seed=0)  # detected: trainA + trainB


@pytest.fixture(scope="module")
def trained(pan_green, tmp_path_factory):
    """A tiny CycleGAN trained a few epochs, with the scores of its untrained self on the true pairs."""
    torch.manual_seed(0)
    model = CycleGAN(pan_green, working_dir=tmp_path_factory.mktemp("cyclegan"), **TINY)
    untrained = model.pair_scores(pan_green.test_pairs)
    model.fit(8, lr=1e-3, checkpoint=False)
    return model, untrained


# --- networks and pieces ----------------------------------------------------------------------------


def test_paper_sized_resnet_generator():
    g = ResnetGenerator(3, 3, ngf=64, n_blocks=9)
    assert round(sum(p.numel() for p in g.parameters()) / 1e6, 2) == 11.38  # the reference's 11.378 M
    g.eval()
    with torch.no_grad():
        assert g(torch.zeros(1, 3, 256, 256)).shape == (1, 3, 256, 256)
        assert ResnetGenerator(4, 1, ngf=8, n_blocks=1)(torch.zeros(2, 4, 50, 70)).shape == (2, 1, 50, 70)


def test_image_pool_keeps_a_history():
    torch.manual_seed(0)
    pool = ImagePool(3)
    first = torch.arange(2.0).view(2, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and len(pool.images) == 2
    pool.query(torch.full((1, 1, 1, 1), 2.0))
    queried = 10.0 + torch.arange(40.0)
    returned = torch.cat([pool.query(v.view(1, 1, 1, 1)) for v in queried]).flatten()
    from_history = returned != queried
    assert 8 < int(from_history.sum()) < 32  # about half come from the history
    assert (returned[from_history] < queried[from_history]).all()  # earlier images
    assert len(pool.images) == 3
    assert torch.equal(ImagePool(0).query(first), first)


# --- training -----------------------------------------------------------------------------------------


def test_unpaired_training_learns_the_translation(trained):
    """PSNR of A -> B (panchromatic -> green) on true pairs of a part neither domain saw."""
    model, untrained = trained
    metrics = model.compute_metrics()
    assert metrics["psnr"] >= untrained["psnr"] + 3.0, (untrained, metrics)
    assert metrics["psnr_a"] >= untrained["psnr_a"] + 3.0, (untrained, metrics)
    assert metrics["ssim"] > untrained["ssim"] + 0.1
    assert {"cycle", "cycle_a", "cycle_b", "ssim", "ssim_a"} <= set(metrics)
    assert metrics["cycle"] == pytest.approx(float(model.learn.validate()[0]), rel=1e-4)
    record = model.history[-1]
    assert all(np.isfinite(record[k]) and record[k] > 0
               for k in ("gen_loss", "cycle_loss", "identity_loss", "d_a_loss", "d_b_loss"))
    assert model.config["identity"] and "identity loss on" in repr(model)


def test_no_identity_loss_across_band_counts(unpaired, tmp_path):
    model = CycleGAN(unpaired, working_dir=tmp_path, **TINY)  # 4 bands <-> 1 band
    assert not model.config["identity"] and "identity loss off (4 -> 1 bands)" in repr(model)
    model.fit(1, lr=1e-3, checkpoint=False)
    assert np.isnan(model.history[0]["identity_loss"]) and np.isfinite(model.history[0]["cycle_loss"])


class StepProbe(Callback):
    """Records, per batch, whether the discriminators changed in the G step (they must not) and
    in the D step that follows it (they must)."""

    order = 30  # after the trainer (20): its after_step has run when ours does

    def __init__(self, model):
        self.model, self.log = model, []

    def before_batch(self):
        self.d0 = snapshot(self.model.discriminator_a) + snapshot(self.model.discriminator_b)
        self.g0 = snapshot(self.model.generator_ab)

    def before_step(self):
        self.in_g_step = same(self.d0, snapshot(self.model.discriminator_a) + snapshot(self.model.discriminator_b))

    def after_step(self):
        d1 = snapshot(self.model.discriminator_a) + snapshot(self.model.discriminator_b)
        self.log.append((self.in_g_step, same(self.d0, d1), same(self.g0, snapshot(self.model.generator_ab))))


def test_generator_step_then_discriminator_step(unpaired, tmp_path):
    model = CycleGAN(unpaired, working_dir=tmp_path, **TINY)
    probe = StepProbe(model)
    model.learn.fit(1, 1e-3, cbs=[probe])
    assert probe.log and all(d_untouched_in_g and not d_same_after and not g_same
                             for d_untouched_in_g, d_same_after, g_same in probe.log)
    assert all(not p.requires_grad for d in (model.discriminator_a, model.discriminator_b) for p in d.parameters())
    assert len(model.trainer.pool_a.images) == min(50, len(unpaired.train_ds))


def test_lr_find_linear_schedule_and_losses_plot(unpaired, tmp_path):
    model = CycleGAN(unpaired, working_dir=tmp_path, **TINY)
    lr = model.lr_find(num_it=8, allow_plot=False)
    assert 1e-7 < lr < 1e-1
    model.fit(2, lr=1e-3, schedule="linear", checkpoint=False)
    assert model.history[0]["lr"] == pytest.approx(1e-3) and model.history[1]["lr"] < 1e-3
    fig = model.plot_losses()
    assert len(fig.axes) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="monitor 'psnr_b' is not a metric of this model"):
        model.fit(1, monitor="psnr_b")


class Interrupt(Callback):
    order = 90  # after the checkpoint of the epoch

    def after_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt


def seeded(data, seed: int) -> None:
    """The random numbers a fit draws (weights, chips of B, crops, pools, shuffling) from ``seed``."""
    # a fastai loader's first use loads one extra item to count its inputs: done here, before
    # seeding, so that every fit on ``data`` draws the same numbers
    data.train.n_inp, data.valid.n_inp
    torch.manual_seed(seed)
    data.train.rng = random.Random(seed)


def test_checkpoints_hold_everything_and_resume_exactly(unpaired, tmp_path):
    seeded(unpaired, 1)
    straight = CycleGAN(unpaired, working_dir=tmp_path / "straight", **TINY)
    straight.fit(3, lr=1e-3, one_cycle=False)

    seeded(unpaired, 1)
    first = CycleGAN(unpaired, working_dir=tmp_path / "resumed", **TINY)
    first.learn.add_cb(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        first.fit(3, lr=1e-3, one_cycle=False)
    state = load_checkpoint(tmp_path / "resumed" / "checkpoints" / f"cyclegan-{first.fit_id}_last.pth")
    assert {"generator_ab", "generator_ba", "discriminator_a", "discriminator_b", "g_opt", "d_opt",
            "trainer"} <= set(state)
    assert len(state["trainer"]["pool_a"]) > 0

    seeded(unpaired, 123)  # a new session draws other numbers: the checkpoint's must come back
    resumed = CycleGAN(unpaired, working_dir=tmp_path / "resumed", **TINY)
    resumed.fit(3, resume=True)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    assert json.dumps(resumed.history) == json.dumps(straight.history)  # NaN-aware
    for name in ("generator_ab", "generator_ba", "discriminator_a", "discriminator_b"):
        for k, v in getattr(straight, name).state_dict().items():
            torch.testing.assert_close(getattr(resumed, name).state_dict()[k], v, rtol=0, atol=0)


def test_cyclegan_refuses_paired_data(rotterdam_pairs):
    paired = prepare_data(rotterdam_pairs, batch_size=4)
    with pytest.raises(ValueError, match="two unpaired domains.*dataset_type='CycleGAN'"):
        CycleGAN(paired, **TINY)


# --- inference, saving ------------------------------------------------------------------------------


def busiest_pair(folder):
    """The true pair (testA, testB chips of one name) whose B chip varies most."""
    def spread(chip):
        with rasterio.open(chip) as src:
            return float(src.read().std())
    chip_b = max(sorted((folder / "testB").glob("*.tif")), key=spread)
    return folder / "testA" / chip_b.name, chip_b


def test_predict_both_directions(trained, rotterdam_pan_green, rotterdam_unpaired):
    model, _ = trained
    chip_a, chip_b = busiest_pair(rotterdam_pan_green)
    as_b = model.predict(chip_a, convert_to="b")
    as_a = model.predict(chip_b, convert_to="a")
    assert as_b.shape == (1, 64, 64) and as_a.shape == (1, 64, 64)
    # in each domain's units: within the band ranges its normalisation maps to [-1, 1]
    norm_a, norm_b = model.data.norm_a, model.data.norm_b
    assert norm_b.low[0] - 1e-3 <= as_b.min() and as_b.max() <= norm_b.high[0] + 1e-3
    for band, low, high in zip(as_a, norm_a.low, norm_a.high):
        assert low - 1e-3 <= band.min() and band.max() <= high + 1e-3 and band.std() > 0
    with pytest.raises(ValueError, match="convert_to must be 'b' \\(A -> B\\) or 'a'"):
        model.predict(chip_a, convert_to="AtoB")
    multispectral = sorted((rotterdam_unpaired / "testA").glob("*.tif"))[0]
    with pytest.raises(ValueError, match="takes 1 band"):
        model.predict(multispectral, convert_to="b")


def test_save_from_model_dlpk_round_trip(trained, rotterdam_pan_green, tmp_path):
    model, _ = trained
    chip_a, chip_b = busiest_pair(rotterdam_pan_green)
    before = model.predict(chip_a), model.predict(chip_b, convert_to="a")
    emd_path = model.save(tmp_path / "pan2green")
    emd = json.loads(emd_path.read_text())
    assert (emd["ModelType"], emd["n_intput_channel"], emd["n_channel"]) == ("CycleGAN", 1, 1)
    assert emd["ModelParameters"]["gen_blocks"] == 2 and "cycle" in emd["Toolkit"]["metrics"]
    package = emd_path.with_suffix(".dlpk")
    assert {"pan2green.emd", "pan2green.pth"} <= set(zipfile.ZipFile(package).namelist())
    for source in (emd_path, emd_path.parent, package):
        loaded = CycleGAN.from_model(source)
        assert loaded.learn is None
        np.testing.assert_array_equal(loaded.predict(chip_a), before[0])
        np.testing.assert_array_equal(loaded.predict(chip_b, convert_to="a"), before[1])
    assert isinstance(load_model(package), CycleGAN)
    with pytest.raises(ValueError, match="a CycleGAN model, not a Pix2Pix.*CycleGAN.from_model"):
        Pix2Pix.from_model(package)


def test_predict_raster_keeps_the_grid(trained, rotterdam, rotterdam_pan_green, tmp_path):
    model, _ = trained
    green_chip = sorted((rotterdam_pan_green / "testB").glob("*.tif"))[0]
    for convert_to, scene, bands in (("b", rotterdam["panchromatic_3"], 1), ("a", green_chip, 1)):
        out = model.predict_raster(scene, tmp_path / f"as_{convert_to}.tif", convert_to=convert_to,
                                   padding=8, progress=False)
        with rasterio.open(scene) as src, rasterio.open(out) as dst:
            assert (dst.crs, dst.transform, dst.width, dst.height) == (src.crs, src.transform, src.width, src.height)
            assert dst.count == bands and dst.dtypes[0] == "float32"
            assert np.isfinite(dst.read()).all()


def test_show_results_rows_both_ways(trained):
    model, _ = trained
    fig = model.show_results(rows=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:6] == ["A", "A → B", "A → B → A", "B", "B → A", "B → A → B"]
    plt.close(fig)
    viewer = model.show_results(interactive=True)
    assert viewer.index.max == len(model.data.valid_ds) - 1 and len(viewer.image.value) > 0
