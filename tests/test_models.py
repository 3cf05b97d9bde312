"""toolkit.models: the pix2pix networks, the GAN training on fastai and the Pix2Pix wrapper.

CPU-sized: ngf/ndf 8-16, chips of 64 to 200 px, a few epochs.
"""

from __future__ import annotations

import copy
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from toolkit import Pix2Pix, export_training_data, prepare_data
from toolkit.models import PatchDiscriminator, UNetGenerator, unet_depth


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def snapshot(net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def ms2pan(rotterdam, tmp_path_factory):
    """Rotterdam multispectral (4 bands, 1 m) -> panchromatic: 64 pairs of 64 px."""
    out = tmp_path_factory.mktemp("models") / "ms2pan"
    export_training_data(rotterdam["multispectral_1"], out, additional_input_raster=rotterdam["panchromatic_1"],
                         tile_size=64, stride=32, progress=False)
    return out


@pytest.fixture(scope="module")
def ms2pan_data(ms2pan):
    return prepare_data(ms2pan, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def trained(ms2pan_data):
    """A tiny model trained a few epochs, shared by the tests that only read it."""
    torch.manual_seed(0)
    model = Pix2Pix(ms2pan_data, ngf=16, ndf=16)
    untrained = float(model.learn.validate()[0])
    model.fit(6, lr=2e-3, checkpoint=False)
    return model, untrained


# --- networks ------------------------------------------------------------------------------------


def test_paper_sized_networks():
    g = UNetGenerator(3, 3, depth=8, ngf=64)
    d = PatchDiscriminator(6, ndf=64)
    assert round(n_params(g) / 1e6, 1) == 54.4 and round(n_params(d) / 1e6, 2) == 2.77
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 3
    g.eval()
    with torch.no_grad():
        assert g(torch.zeros(1, 3, 256, 256)).shape == (1, 3, 256, 256)
        assert d(torch.zeros(1, 6, 256, 256)).shape == (1, 1, 30, 30)  # 70x70 patches


@pytest.mark.parametrize("size", [32, 64, 96, 200, 256])
def test_generator_takes_any_chip_size(size):
    depth = unet_depth(size)
    assert 1 <= size / 2**depth < 2  # the paper's: down to a 1x1 bottleneck (8 at 256 px)
    g = UNetGenerator(4, 1, depth=depth, ngf=8).train()  # BatchNorm, batch size 1: still works
    y = g(torch.randn(1, 4, size, size + 8))
    assert y.shape == (1, 1, size, size + 8) and y.abs().max() <= 1


# --- training ------------------------------------------------------------------------------------


def test_training_lowers_validation_l1_on_real_pairs(trained):
    model, untrained = trained
    valid = [r["valid_loss"] for r in model.history]
    assert len(valid) == 6
    assert min(valid) < 0.6 * untrained, (untrained, valid)
    assert all(np.isfinite([r["gen_loss"], r["l1_loss"], r["d_loss"]]).all() for r in model.history)


class StepProbe(Callback):
    """Snapshots both nets around the D step (GANTrainer.after_pred, order 20) and the G step."""

    order = 25

    def __init__(self, d, g):
        self.d, self.g, self.events = d, g, []

    def before_batch(self):
        if self.training:
            self.start = (snapshot(self.d), snapshot(self.g))

    def after_pred(self):
        if self.training:
            self.mid = (snapshot(self.d), snapshot(self.g))

    def after_step(self):
        d0, g0 = self.start
        d1, g1 = self.mid
        d2, g2 = snapshot(self.d), snapshot(self.g)
        self.events.append((not same(d0, d1), same(g0, g1), same(d1, d2), not same(g1, g2)))


def test_d_step_changes_only_d_and_g_step_changes_only_g(ms2pan_data):
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8)
    probe = StepProbe(model.discriminator, model.generator)
    model.learn.fit(1, 1e-3, cbs=[probe])
    assert len(probe.events) == len(ms2pan_data.train)
    # per batch: D step moved D and not G; G step moved G and not D
    assert all(all(e) for e in probe.events), probe.events


def test_plain_l1_unet_never_trains_d(ms2pan_data):
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8, gan_weight=0)
    d0 = snapshot(model.discriminator)
    model.fit(1, checkpoint=False)
    assert same(d0, snapshot(model.discriminator))
    assert np.isnan(model.history[0]["d_loss"])


def test_lr_find_suggests_the_next_rate(ms2pan_data):
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8)
    d0 = snapshot(model.discriminator)
    g0 = snapshot(model.generator)
    lr = model.lr_find(num_it=12, allow_plot=True)
    plt.close("all")
    assert 1e-7 < lr < 1e-1
    assert same(d0, snapshot(model.discriminator)) and same(g0, snapshot(model.generator))
    model.fit(1, checkpoint=False, one_cycle=False)
    assert model.history[0]["lr"] == pytest.approx(lr)


def test_linear_decay_schedule(ms2pan_data):
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8)
    model.fit(4, lr=1e-3, schedule="linear_decay", checkpoint=False)
    lrs = [r["lr"] for r in model.history]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] <= 1e-3 and lrs[3] < 0.2e-3


class Interrupt(Callback):
    order = 90  # after the checkpoint of the epoch

    def after_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt


class CountEpochs(Callback):
    def __init__(self):
        self.trained = []

    def before_train(self):
        self.trained.append(self.epoch)


def test_resume_continues_an_interrupted_fit(ms2pan_data, tmp_path):
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8, working_dir=tmp_path)
    model.learn.add_cb(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        model.fit(4, lr=1e-3)
    model.learn.remove_cbs(Interrupt)
    assert (tmp_path / "checkpoints" / f"pix2pix-{model.fit_id}_last.pth").is_file()

    fresh = Pix2Pix(ms2pan_data, ngf=8, ndf=8, working_dir=tmp_path)  # e.g. after a restart
    with pytest.raises(ValueError, match="resume it with fit\\(4, resume=True\\)"):
        fresh.fit(6, resume=True)
    counter = CountEpochs()
    fresh.learn.add_cb(counter)
    fresh.fit(4, resume=True)
    assert counter.trained == [2, 3]
    assert [r["epoch"] for r in fresh.history] == [0, 1, 2, 3]
    assert fresh.fit_id == model.fit_id


def test_generator_adam_is_fused_and_resumes_fastai_adam_state():
    """The generator trains with PyTorch's fused Adam (fastai's updates tensor by tensor); an
    optimizer state written by fastai's Adam (checkpoints of earlier toolkits) resumes exactly."""
    from fastai.optimizer import Adam

    from toolkit.models.checkpoint import plain_state
    from toolkit.models.training import _load_opt_state, adam

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    old = Adam(list(a.parameters()), lr=1e-2, mom=0.5, sqr_mom=0.999, eps=1e-8, wd=0.0)
    grads = [[torch.randn_like(p) for p in a.parameters()] for _ in range(4)]
    for step in grads[:2]:
        for p, g in zip(a.parameters(), step):
            p.grad = g.clone()
        old.step()
    new = adam((0.5, 0.999), torch.device("cpu"))(list(b.parameters()), lr=1e-2)
    assert new.opt.param_groups[0]["fused"]
    b.load_state_dict(a.state_dict())
    _load_opt_state(new, copy.deepcopy(plain_state(old.state_dict())))  # as read back from a file
    for step in grads[2:]:
        for pa, pb, g in zip(a.parameters(), b.parameters(), step):
            pa.grad, pb.grad = g.clone(), g.clone()
        old.step()
        new.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    assert new.opt.param_groups[0]["fused"]  # the run's setting, not the saved one's


def test_checkpoint_restores_the_best_epoch(ms2pan_data, tmp_path):
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8, working_dir=tmp_path)
    model.fit(3, lr=1e-3)
    best = min(model.history, key=lambda r: r["valid_loss"])
    assert float(model.learn.validate()[0]) == pytest.approx(best["valid_loss"], rel=1e-4)


# --- inference, metrics, figures ------------------------------------------------------------------


def test_save_from_model_predict_round_trip(trained, ms2pan_data, tmp_path):
    model, _ = trained
    chip = ms2pan_data.valid_ds.pairs[0].input
    before = model.predict(chip)
    assert before.shape == (1, 64, 64) and before.dtype == np.float32
    emd_path = model.save("ms2pan_v1")
    folder = emd_path.parent
    assert folder == ms2pan_data.path / "models" / "ms2pan_v1"
    for name in ("ms2pan_v1.pth", "ms2pan_v1.emd", "ms2pan_v1.dlpk", "ModelCharacteristics/loss_graph.png",
                 "ModelCharacteristics/show_results.png"):
        assert (folder / name).is_file(), name
    emd = json.loads(emd_path.read_text())
    assert (emd["ModelType"], emd["ModelConfiguration"], emd["n_intput_channel"], emd["n_channel"]) == \
        ("Pix2Pix", "_pix2pix", 4, 1)
    assert len(emd["NormalizationStats"]["band_min_values"]) == 4 and "psnr" in emd
    for source in (emd_path, folder, folder / "ms2pan_v1.dlpk"):
        loaded = Pix2Pix.from_model(source)
        np.testing.assert_array_equal(loaded.predict(chip), before)
    with pytest.raises(RuntimeError, match="loaded for inference"):
        Pix2Pix.from_model(emd_path).fit(1)
    on_cpu = Pix2Pix.from_model(emd_path, device="cpu")  # e.g. Pro's device=-1 on a GPU machine
    assert on_cpu.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in on_cpu.generator.parameters())
    np.testing.assert_array_equal(on_cpu.predict(chip), before)
    with pytest.raises(ValueError, match="device= only without data"):
        Pix2Pix.from_model(emd_path, ms2pan_data, device="cpu")


def test_predict_in_target_units_writes_georeferenced_geotiff(trained, ms2pan_data, tmp_path):
    model, _ = trained
    chip = ms2pan_data.valid_ds.pairs[0].input
    out = tmp_path / "pan.tif"
    result = model.predict(chip, output=out)
    with rasterio.open(chip) as src, rasterio.open(out) as dst, \
            rasterio.open(ms2pan_data.valid_ds.pairs[0].target) as truth:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.count, dst.dtypes[0]) == (1, "float32")
        np.testing.assert_array_equal(dst.read(), result)
        # target units: the panchromatic band's digital numbers, not [-1, 1]
        assert abs(float(result.mean()) - float(truth.read().mean())) < 0.5 * float(truth.read().std()) + 50
    # an array of another size
    with rasterio.open(chip) as src:
        big = np.concatenate([src.read()] * 2, axis=2)
    assert model.predict(big).shape == (1, 64, 128)
    with pytest.raises(ValueError, match="takes 4 band"):
        model.predict(big[:3])


def test_metrics_and_figures(trained, tmp_path):
    model, _ = trained
    metrics = model.compute_metrics()
    assert set(metrics) == {"psnr", "ssim", "l1"}
    assert metrics["psnr"] > 10 and 0 < metrics["ssim"] <= 1
    assert metrics["l1"] == pytest.approx(model.learn.validate()[0], rel=1e-4)
    fig = model.show_results(rows=3, rgb_bands=[2, 1, 0])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["Input", "Target", "Prediction"] and len(fig.axes) == 9
    plt.close(fig)
    plt.close(model.plot_losses())
    assert "psnr" in model.available_metrics and None in Pix2Pix.supported_backbones


@pytest.mark.parametrize("size", [96, 200])
def test_chip_sizes_96_and_200_on_footprint_masks(size, atlanta, tmp_path):
    chips = tmp_path / f"chips{size}"
    export_training_data(atlanta["image"], chips, in_class_data=atlanta["footprints"], tile_size=size,
                         stride=size // 2, progress=False)
    data = prepare_data(chips, batch_size=4)
    model = Pix2Pix(data, ngf=8, ndf=8)
    model.fit(1, checkpoint=False)
    metrics = model.compute_metrics()
    assert {"iou", "f1", "precision", "recall"} <= set(metrics)
    scores = model.predict(data.valid_ds.pairs[0].input)
    assert scores.shape == (1, size, size) and 0 <= scores.min() and scores.max() <= 1


def test_backbone_generator(ms2pan_data):
    model = Pix2Pix(ms2pan_data, backbone="resnet18", ndf=8)
    model.fit(1, checkpoint=False)
    assert model.predict(ms2pan_data.valid_ds.pairs[0].input).shape == (1, 64, 64)
    with pytest.raises(ValueError, match="backbone must be one of"):
        Pix2Pix(ms2pan_data, backbone="vgg16")


# --- bad paths and files ---------------------------------------------------------------------------


def test_bad_paths_and_corrupt_weights(trained, tmp_path):
    model, _ = trained
    emd_path = model.save(tmp_path / "good")
    with pytest.raises(FileNotFoundError, match="nowhere.emd"):
        Pix2Pix.from_model(tmp_path / "nowhere.emd")
    weights = emd_path.with_suffix(".pth")
    weights.write_bytes(b"\x80\x02not torch")
    with pytest.raises(ValueError, match=r"good\.pth: corrupt or unreadable weights"):
        Pix2Pix.from_model(emd_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"good\.pth: the model's weights file is missing"):
        Pix2Pix.from_model(emd_path)
    emd_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"good\.emd: not a valid \.emd"):
        Pix2Pix.from_model(emd_path)
    other = tmp_path / "other.dlpk"
    other.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match=r"other\.dlpk: not a readable \.dlpk"):
        Pix2Pix.from_model(other)


def test_weights_of_another_network_are_refused(trained, ms2pan_data, tmp_path):
    model, _ = trained
    emd_path = model.save(tmp_path / "ngf16")
    small = Pix2Pix(ms2pan_data, ngf=8, ndf=8)
    with pytest.raises(ValueError, match="do not fit this network"):
        small.load(emd_path)


def test_pretrained_path_and_early_stopping(trained, ms2pan_data, tmp_path):
    model, _ = trained
    emd_path = model.save(tmp_path / "start")
    chip = ms2pan_data.valid_ds.pairs[0].input
    again = Pix2Pix(ms2pan_data, ngf=16, ndf=16, pretrained_path=emd_path)
    np.testing.assert_array_equal(again.predict(chip), model.predict(chip))
    again.fit(2, lr=1e-4, early_stopping=1, checkpoint=False)
    assert 1 <= len(again.history) <= 2
    with pytest.raises(ValueError, match="monitor .accuracy. is not a metric of this model"):
        again.fit(1, monitor="accuracy")


def test_interactive_results_viewer(trained):
    model, _ = trained
    viewer = model.show_results(interactive=True)
    first = bytes(viewer.image.value)
    assert first.startswith(b"\x89PNG") and viewer.index.max == len(model.data.valid_ds) - 1
    viewer.index.value = 3  # drive the slider: another chip is rendered
    assert bytes(viewer.image.value) != first
    assert [p.description for p in viewer.band_pickers] == ["Red", "Green", "Blue"]
    shown = bytes(viewer.image.value)
    viewer.band_pickers[0].value = 3  # show the fourth band as red
    assert viewer.rgb_bands == [3, 1, 2] and bytes(viewer.image.value) != shown


def test_balanced_l1_weighs_class_and_background_equally():
    from toolkit.models.gan import balanced_l1

    target = -torch.ones(1, 2, 4, 4)
    target[0, 0, 0, 0] = 1  # band 0: 1 class pixel of 16; band 1: no class pixel
    pred = torch.zeros(1, 2, 4, 4)
    # band 0: class error 1 (weight 1/2), background error 1 (weight 1/2); band 1: error 1
    assert float(balanced_l1(pred, target)) == pytest.approx(1.0)
    pred[0, 0, 0, 0] = 1  # the class pixel right: only the background half is wrong
    assert float(balanced_l1(pred, target)) == pytest.approx((0.5 + 1.0) / 2)
    pred[0, 0] = -1
    pred[0, 0, 0, 0] = 1
    assert float(balanced_l1(pred, target)) == pytest.approx(0.5)  # band 0 right, band 1 wrong


def test_balanced_l1_shares_the_rest_of_a_band_by_class():
    """Contour-reinforced masks: in the outline band, the footprint interior is a quarter of the
    loss (the rest, half, shared with the background), not a sliver of it by pixel count, which
    taught the band to cover whole buildings."""
    from toolkit.data.normalization import MaskEncoding
    from toolkit.models.gan import balanced_l1

    label = np.zeros((16, 16), np.uint8)
    label[2:12, 2:12] = 2  # a footprint drawn with a 1 px outline (class 2) round its interior (1)
    label[3:11, 3:11] = 1
    encoding = MaskEncoding([{"Value": 1, "Name": "building"}, {"Value": 2, "Name": "boundary"}])
    target = torch.from_numpy(encoding.encode(label))[None]  # (1, 2, 16, 16)
    assert float(balanced_l1(-target, target)) == pytest.approx(2.0)  # each band's weights sum to 1
    outline_band = {"fires over the interior": (label == 1, 1.0, 0.25),
                    "misses the outline": (label == 2, -1.0, 0.5),
                    "fires over the background": (label == 0, 1.0, 0.25)}
    for what, (where, value, share) in outline_band.items():
        wrong = target.clone()
        wrong[0, 1][torch.from_numpy(where)] = value
        assert float(balanced_l1(wrong, target)) == pytest.approx(2 * share / 2), what


def test_bce_dice_scores_class_bands_by_overlap():
    from toolkit.models.gan import bce_dice

    target = -torch.ones(2, 2, 8, 8)
    target[:, 0, :2, :2] = 1  # band 0: a small class; band 1: a large one
    target[:, 1, 2:, :] = 1
    right, wrong = bce_dice(target.clone(), target), bce_dice(-target, target)
    assert float(right) < 1e-3 and float(wrong) > 10
    # missing the small class costs as much Dice as missing the large one, by pixels much less
    small, large = target.clone(), target.clone()
    small[:, 0], large[:, 1] = -1, -1

    def bce(pred):
        return float(F.binary_cross_entropy(((pred + 1) / 2).clamp(1e-6, 1 - 1e-6), (target > 0).float()))

    assert bce(small) < bce(large) / 10
    dice_small, dice_large = float(bce_dice(small, target)) - bce(small), float(bce_dice(large, target)) - bce(large)
    assert dice_small == pytest.approx(dice_large, abs=0.06) and dice_small > 0.4
    pred = torch.zeros_like(target, requires_grad=True)
    bce_dice(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[target > 0] < 0).all()


def test_segmentation_options_on_footprints(atlanta, tmp_path):
    """A plain segmentation U-Net (no dropout, cross-entropy plus Dice) trains on footprint masks,
    and its options are saved with it; on images they are refused."""
    summary = export_training_data(atlanta["image"], tmp_path / "chips", in_class_data=atlanta["footprints"],
                                   tile_size=64, contour_width=2, output_nofeature_tiles=False, progress=False)
    data = prepare_data(summary.out_folder, batch_size=8, seed=0)
    model = Pix2Pix(data, ngf=8, ndf=8, gan_weight=0, dropout=False, mask_loss="bce_dice",
                    working_dir=tmp_path / "work")
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.generator.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in Pix2Pix(data, ngf=8, ndf=8).generator.modules())
    model.fit(2, lr=2e-3, checkpoint=False)
    first, last = model.learn.recorder.values[0], model.learn.recorder.values[-1]
    assert np.isfinite(last[:2]).all() and last[0] < first[0]  # train and validation loss; train fell
    loaded = Pix2Pix.from_model(model.save(tmp_path / "m", compute_metrics=False))
    assert loaded.config["dropout"] is False and loaded.config["mask_loss"] == "bce_dice"
    chip = data.valid_ds.pairs[0].input
    assert np.allclose(loaded.predict(chip), model.predict(chip), atol=1e-5)
    with pytest.raises(ValueError, match="class_balance"):
        Pix2Pix(data, ngf=8, ndf=8, mask_loss="bce_dice", class_balance=True)


def test_mask_options_only_for_mask_targets(ms2pan_data):
    with pytest.raises(ValueError, match="mask_loss"):
        Pix2Pix(ms2pan_data, ngf=8, ndf=8, mask_loss="bce_dice")


def test_class_balance_only_for_mask_targets(ms2pan_data):
    with pytest.raises(ValueError, match="class_balance"):
        Pix2Pix(ms2pan_data, ngf=8, ndf=8, class_balance=True)


def test_tune_footprints_sets_the_defaults_of_vectorize(atlanta, tmp_path):
    """Thresholds from data: chosen by object F1 on the validation chips, saved with the model,
    written into the prediction's tags, used by vectorize(prediction) without arguments."""
    from toolkit import vectorize
    from toolkit.vector import BOUNDARY_BAND_TAG, SETTINGS_TAG

    summary = export_training_data(atlanta["image"], tmp_path / "chips", in_class_data=atlanta["footprints"],
                                   tile_size=64, contour_width=2, output_nofeature_tiles=False, progress=False)
    data = prepare_data(summary.out_folder, batch_size=8, seed=0, val_split_pct=0.2)
    torch.manual_seed(0)
    model = Pix2Pix(data, ngf=8, ndf=8, class_balance=True, working_dir=tmp_path / "work")
    model.fit(2, lr=2e-3, checkpoint=False)
    tuned = model.tune_footprints(thresholds=(0.3, 0.5, 0.7), boundary_thresholds=(0.3, 0.5),
                                  min_areas=(0.0, 5.0))
    assert tuned["f1"] >= tuned["default_f1"]
    settings = {k: tuned[k] for k in ("threshold", "boundary_threshold", "min_area", "marker_erosion")}
    assert model.footprint_settings == settings

    loaded = Pix2Pix.from_model(model.save(tmp_path / "m", compute_metrics=False))
    assert loaded.footprint_settings == settings
    out = loaded.predict_raster(atlanta["image"], tmp_path / "scores.tif", progress=False)
    with rasterio.open(out) as src:
        assert src.descriptions == ("1", "boundary")
        assert src.tags()[BOUNDARY_BAND_TAG] == "2" and json.loads(src.tags()[SETTINGS_TAG]) == settings
    by_tags = vectorize(out)
    explicit = vectorize(out, boundary_band=1, **settings)
    assert by_tags.geometry.equals(explicit.geometry)
