"""arcgis.learn code runs unchanged (issue 14): the calls of an arcgis.learn notebook, verbatim, in
arcgis.learn 2.x's positional order, on real sample chips; and the arcgis.learn options the
toolkit cannot honour fail with errors that say why."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from toolkit import CycleGAN, Pix2Pix, prepare_data

TINY = dict(ngf=8, ndf=8)


def test_pix2pix_notebook_sequence_runs_unchanged(rotterdam_pairs, tmp_path):
    torch.manual_seed(0)
    path = str(rotterdam_pairs)
    work = tmp_path / "work"
    # --- the cells, as an arcgis.learn notebook has them -------------------------------------------
    data = prepare_data(path, None, 64, 0.1, 8, working_dir=str(work))
    classes = data.classes
    model = Pix2Pix(data, None, None, False, **TINY)
    lr = model.lr_find(allow_plot=False)
    model.fit(2, slice(1e-4, 2e-4), checkpoint="all", tensorboard=True, monitor="psnr")
    metrics = model.compute_metrics()
    emd = model.save("sharpen_v1", framework="PyTorch")
    loaded = Pix2Pix.from_model(emd_path=str(emd), data=None)
    chip = sorted((rotterdam_pairs / "images").glob("*.tif"))[0]
    expected = model.predict(chip)
    model.unfreeze()
    model.fit(1, 1e-4, True, False, True, False, "valid_loss")
    # --- what they did -------------------------------------------------------------------------------
    assert classes == [] and data.class_mapping == {}  # an image target has no classes
    assert data.chip_size == 64 and len(data.train_ds) + len(data.valid_ds) == 16
    assert lr > 0 and np.isfinite(lr)
    assert [r["epoch"] for r in model.history] == [0, 1, 0]
    assert all(np.isfinite(r["psnr"]) for r in model.history[:2])  # monitored: scored every epoch
    assert model.history[0]["lr"] <= 2e-4 + 1e-12  # slice(1e-4, 2e-4): its stop is the peak
    assert {"psnr", "ssim"} <= set(metrics)
    checkpoints = work / "models" / "checkpoints"
    fit_files = sorted(p.name for p in checkpoints.glob("pix2pix-*_epoch*.pth"))
    assert len(fit_files) == 2 and fit_files[0].endswith("_epoch0.pth") and fit_files[1].endswith("_epoch1.pth")
    assert list((work / "models" / "training_log").glob("pix2pix-*/events.out.tfevents.*"))
    assert emd == work / "models" / "sharpen_v1" / "sharpen_v1.emd" and emd.with_suffix(".dlpk").is_file()
    np.testing.assert_allclose(loaded.predict(chip), expected, rtol=1e-5, atol=1e-5)
    assert loaded.learn is None and loaded.config["ngf"] == 8


def test_classified_tiles_classes_and_class_mapping(atlanta_tiles):
    data = prepare_data(str(atlanta_tiles), {1: "building"}, 64, 0.2, 4)
    assert data.classes == ["building"] and data.class_mapping == {1: "building"}
    assert [(c["Value"], c["Name"]) for c in data.class_records] == [(1, "building")]
    plain = prepare_data(atlanta_tiles, batch_size=4)
    assert plain.class_mapping == {c["Value"]: c["Name"] for c in plain.class_records}
    with pytest.raises(ValueError, match=r"values \[7\] that are not classes"):
        prepare_data(atlanta_tiles, {7: "roads"})


def test_a_list_of_folders_is_read_as_one(rotterdam_pairs, atlanta_tiles, tmp_path):
    second = tmp_path / "second_export"
    shutil.copytree(rotterdam_pairs, second)
    one = prepare_data(rotterdam_pairs, batch_size=4, val_split_pct=0.25)
    both = prepare_data([rotterdam_pairs, second], batch_size=4, val_split_pct=0.25)
    assert len(both.train_ds) + len(both.valid_ds) == 2 * (len(one.train_ds) + len(one.valid_ds))
    assert both.n_bands_in == one.n_bands_in and both.n_bands_out == one.n_bands_out
    with pytest.raises(ValueError, match="must agree.*dataset type"):
        prepare_data([rotterdam_pairs, atlanta_tiles])


def test_arcgis_options_the_toolkit_cannot_honour_say_why(rotterdam_pairs, tmp_path):
    with pytest.warns(UserWarning, match=r"imagery_type=...\) is ignored: in arcgis.learn it names the imagery"):
        ignored = prepare_data(rotterdam_pairs, imagery_type="ms")
    assert ignored.n_bands_in == 4
    with pytest.raises(TypeError, match=r"does not take the keyword argument\(s\) no_such_option"):
        prepare_data(rotterdam_pairs, no_such_option=1)
    with pytest.raises(ValueError, match="bands must be a list of 0-based band indices"):
        prepare_data(rotterdam_pairs, bands=["red", "green"])
    assert prepare_data(rotterdam_pairs, bands=[0, 2]).n_bands_in == 2  # arcgis.learn's bands=
    data = prepare_data(rotterdam_pairs, None, 64, 0.1, 8)
    model = Pix2Pix(data, working_dir=tmp_path / "work", **TINY)
    with pytest.raises(ValueError, match="checkpoint must be True, False or 'all'.*checkpoint_name="):
        model.fit(1, checkpoint="my_run")
    with pytest.raises(ValueError, match="monitor 'accuracy' is not a metric of this model"):
        model.fit(1, monitor="accuracy")
    with pytest.raises(ValueError, match="lr must be > 0"):
        model.fit(1, lr=slice(None, 0.0))
    with pytest.raises(ValueError, match="framework 'TF-ONNX' is not supported"):
        model.save("m", framework="TF-ONNX")
    with pytest.raises(ValueError, match=r"publish=True.*ArcGIS Online.*m\.dlpk"):
        model.save("m", publish=True)
    assert not (tmp_path / "work" / "m").exists()  # refused before anything was written


def test_cyclegan_notebook_sequence_runs_unchanged(rotterdam_unpaired, tmp_path):
    torch.manual_seed(0)
    path = str(rotterdam_unpaired)
    data = prepare_data(path, None, 64, 0.1, 8, working_dir=str(tmp_path / "work"))
    model = CycleGAN(data, None, 2, True, **TINY)
    model.lr_find(allow_plot=False)
    model.fit(2, slice(1e-4, 1e-3), checkpoint="all", tensorboard=True, monitor="psnr")
    emd = model.save("ms2pan", framework="PyTorch")
    loaded = CycleGAN.from_model(emd_path=str(emd), data=None)
    model.unfreeze()
    assert data.classes == [] and data.class_mapping == {}
    assert all(np.isfinite(r["psnr"]) for r in model.history) and len(model.history) == 2
    assert len(list((tmp_path / "work" / "models" / "checkpoints").glob("cyclegan-*_epoch*.pth"))) == 2
    assert loaded.config["gen_blocks"] == 2 and loaded.config["lsgan"] is True
    chip = sorted((rotterdam_unpaired / "testA").glob("*.tif"))[0]
    np.testing.assert_allclose(loaded.predict(chip), model.predict(chip), rtol=1e-4, atol=1e-4)


def test_cyclegan_psnr_needs_true_pairs(rotterdam_cyclegan_export, tmp_path):
    data = prepare_data(rotterdam_cyclegan_export, dataset_type="CycleGAN", batch_size=4)
    model = CycleGAN(data, gen_blocks=1, working_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="monitor 'psnr' compares translations with true pairs"):
        model.fit(1, monitor="psnr")


def test_perceptual_loss_from_a_local_vgg16_file(rotterdam_pairs, atlanta_tiles, tmp_path):
    import torchvision

    from toolkit.models.gan import PerceptualLoss

    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features[:23]  # up to relu4_3; random weights
    weights = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, weights)
    loss = PerceptualLoss(weights)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == 0.0 and float(loss(x, x.flip(-1))) > 0
    assert float(loss(x[:, :1], -x[:, :1])) > 0  # one band: repeated as RGB

    data = prepare_data(str(rotterdam_pairs), None, 64, 0.1, 8)
    model = Pix2Pix(data, None, None, str(weights), working_dir=tmp_path / "work", **TINY)
    assert model.config["perceptual_loss"] is True
    model.fit(1, 1e-4, checkpoint=False)
    assert model.history[0]["perceptual_loss"] > 0
    plain = Pix2Pix(data, working_dir=tmp_path / "work", **TINY)
    assert "perceptual_loss" not in plain.trainer.loss_names

    with pytest.raises(ValueError, match="not a torchvision vgg16 state dict"):
        torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
        Pix2Pix(data, None, None, tmp_path / "bad.pth", **TINY)
    with pytest.raises(FileNotFoundError, match="no such file"):
        Pix2Pix(data, None, None, tmp_path / "missing.pth", **TINY)
    with pytest.raises(ValueError, match="class mask"):
        Pix2Pix(prepare_data(atlanta_tiles, batch_size=4), None, None, weights, **TINY)


def test_arcgis_learn_2_4_4_notebook_sequences_verbatim(rotterdam_pairs, rotterdam_unpaired, tmp_path):
    """Cells of arcgis.learn 2.4.4 notebooks as written there (its 2.4.4 signatures: fit's 8th
    argument mixed_precision, compute_metrics(show_progress=), perceptual_loss=True, CycleGAN's
    predict(img_path, convert_to) with "A"/"B"), on real chips."""
    torch.manual_seed(0)
    data = prepare_data(str(rotterdam_pairs), batch_size=None, chip_size=64, val_split_pct=0.1)
    model = Pix2Pix(data, perceptual_loss=True, working_dir=str(tmp_path / "p2p"), **TINY)
    model.lr_find(allow_plot=False, mixed_precision=False)
    model.fit(2, 2e-4, True, False, False, False, "valid_loss", False)  # 8th: mixed_precision
    model.fit(epochs=1, lr=1e-4, mixed_precision=False)
    metrics = model.compute_metrics(show_progress=True)
    psnr, ssim = metrics["PSNR"], metrics["SSIM"]
    chip = sorted((rotterdam_pairs / "images").glob("*.tif"))[0]
    prediction = model.predict(path=str(chip))
    assert data.train.bs == 8  # batch_size=None: chosen for the CPU
    assert np.isfinite(psnr) and 0 < ssim <= 1 and psnr == metrics["psnr"]
    assert model.config["perceptual_kind"] == "discriminator"
    assert all(r["perceptual_loss"] > 0 for r in model.history)  # trained with it, every epoch
    assert prediction.shape == (1, 64, 64) and np.isfinite(prediction).all()
    with pytest.raises(KeyError, match="FID needs ImageNet-trained Inception-v3 weights"):
        metrics["FID"]

    cdata = prepare_data(str(rotterdam_unpaired), None, 64, 0.1, 4, dataset_type="CycleGAN")
    cyclegan = CycleGAN(cdata, gen_blocks=1, working_dir=str(tmp_path / "cg"), **TINY)
    cyclegan.fit(1, 2e-4, True, False, False, False, "valid_loss", False)
    a_chip = sorted((rotterdam_unpaired / "testA").glob("*.tif"))[0]
    b_chip = sorted((rotterdam_unpaired / "testB").glob("*.tif"))[0]
    to_b = cyclegan.predict(a_chip, "B")
    to_a = cyclegan.predict(img_path=b_chip, convert_to="A")
    assert to_b.shape[0] == 1 and to_a.shape[0] == 4
    np.testing.assert_array_equal(to_b, cyclegan.predict(a_chip, convert_to="b"))
