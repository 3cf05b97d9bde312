"""Unpaired (CycleGAN) folders: both layouts detected, each domain with its own numbers."""

from __future__ import annotations

import json
import shutil
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import rasterio
import torch
from fastai.data.core import DataLoaders

from toolkit import prepare_data
from toolkit.data import (BandNorm, ChipDataLoaders, UnpairedDataLoaders, UnpairedDataset, index_folder,
                          index_unpaired, read_image, unpaired_layout)
from toolkit.raster import write_raster


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in folder.rglob("*"))


def pixel_stats(chips) -> dict:
    """What numpy says of the chips' valid pixels, band by band, all at once."""
    arrays = [read_image(c) for c in chips]
    bands = [np.concatenate([data[b][valid[b]] for data, valid in arrays]).astype(np.float64)
             for b in range(arrays[0][0].shape[0])]
    return {key: [float(f(v)) for v in bands] for key, f in
            (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}


def dihedral_variants(x: np.ndarray) -> list[np.ndarray]:
    return [np.flip(np.rot90(x, k, axes=(-2, -1)), -1) if flip else np.rot90(x, k, axes=(-2, -1))
            for k in range(4) for flip in (False, True)]


def copy(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


@pytest.fixture(scope="module")
def reference(rotterdam_unpaired) -> UnpairedDataLoaders:
    return prepare_data(rotterdam_unpaired, batch_size=4, num_workers=0)


# --- the reference layout (trainA/ + trainB/) -------------------------------------------------------


def test_reference_layout_gives_two_domains_with_their_own_numbers(rotterdam_unpaired):
    before = snapshot(rotterdam_unpaired)
    assert unpaired_layout(rotterdam_unpaired) == "trainA+trainB"
    data = prepare_data(rotterdam_unpaired, batch_size=4, num_workers=0)  # detected: no dataset_type
    assert isinstance(data, DataLoaders) and isinstance(data, UnpairedDataLoaders)
    assert data.dataset_type == "CycleGAN" and data.path == rotterdam_unpaired
    assert (data.n_bands_a, data.n_bands_b) == (data.n_bands_in, data.n_bands_out) == (4, 1)
    assert (data.folder.a.header.dtype, data.folder.b.header.dtype) == ("float64", "uint16")
    assert data.input_norm is data.norm_a and data.target_norm is data.norm_b
    assert data.chip_size == 64 and data.classes == []
    assert data.train_ds.extract_bands is None and data.valid_ds.extract_bands is None

    # each domain's statistics are those of its own training chips
    for norm, chips in ((data.norm_a, data.train_ds.chips_a), (data.norm_b, data.train_ds.chips_b)):
        expected = pixel_stats(chips)
        assert norm.mean == pytest.approx(expected["mean"], rel=1e-9)
        assert norm.std == pytest.approx(expected["std"], rel=1e-9)
        assert (norm.min, norm.max) == (expected["min"], expected["max"])
    assert data.stats["input"]["source"].startswith("14 of the 14 training chips")
    assert data.stats["target"]["source"].startswith("16 of the 16 training chips")
    assert data.norm_b.max[0] > 255 and data.norm_b.max[0] == int(data.norm_b.max[0])  # 16-bit counts
    json.dumps(data.stats)

    # different chip counts: 16 and 18, split 14 + 2 and 16 + 2
    assert (len(data.train_ds.chips_a), len(data.train_ds.chips_b)) == (14, 16)
    assert (len(data.valid_ds.chips_a), len(data.valid_ds.chips_b)) == (2, 2)
    assert len(data.train_ds) == 16 and len(data.valid_ds) == 2 and len(data.train) == 4

    a, b = data.one_batch()
    assert a.shape == (4, 4, 64, 64) and b.shape == (4, 1, 64, 64)
    assert a.dtype == b.dtype == torch.float32
    # in [-1, 1] and not constant (a batch of four dark B chips can lie wholly below 0)
    assert -1 <= a.min() < a.max() <= 1 and -1 <= b.min() < b.max() <= 1
    for _ in data.valid:
        pass

    assert data.cell_size == data.cell_size_b == pytest.approx((1.0000483, 1.0000483))
    assert {p.name for p in data.folder.input_paths} == {"trainA", "trainB", "testA", "testB"}
    assert "UnpairedDataLoaders(CycleGAN, trainA+trainB layout" in repr(data)
    assert snapshot(rotterdam_unpaired) == before  # nothing written into the data folder


def test_domains_do_not_share_ground(rotterdam_unpaired):
    def bounds(folder):
        for chip in sorted((rotterdam_unpaired / folder).glob("*.tif")):
            with rasterio.open(chip) as src:
                yield src.bounds

    for ba in bounds("trainA"):
        for bb in bounds("trainB"):
            assert ba.right <= bb.left or bb.right <= ba.left or ba.top <= bb.bottom or bb.top <= ba.bottom


def test_training_items_visit_the_larger_domain_and_draw_the_other(reference):
    ds = reference.train_ds
    n_a, n_b = len(ds.chips_a), len(ds.chips_b)
    assert n_b > n_a
    torch.manual_seed(0)
    drawn = [ds.indices(i) for i in range(len(ds))]
    assert [ib for _, ib in drawn] == list(range(n_b))  # every B chip once an epoch
    assert all(0 <= ia < n_a for ia, _ in drawn) and len({ia for ia, _ in drawn}) > n_a // 2
    # the other way round: A larger
    swapped = UnpairedDataset(ds.chips_b, ds.chips_a, norm_a=reference.norm_b, norm_b=reference.norm_a,
                              train=True, augment=False)
    drawn = [swapped.indices(i) for i in range(len(swapped))]
    assert len(swapped) == n_b and [ia for ia, _ in drawn] == list(range(n_b))
    assert len({ib for _, ib in drawn}) > n_a // 2


def test_validation_is_deterministic(reference):
    ds = reference.valid_ds
    for i in range(len(ds)):
        a, b = ds[i]
        a2, b2 = ds[i]
        torch.testing.assert_close(a, a2)
        torch.testing.assert_close(b, b2)
        raw_a, valid_a = read_image(ds.chips_a[i % len(ds.chips_a)])
        raw_b, valid_b = read_image(ds.chips_b[i % len(ds.chips_b)])
        np.testing.assert_array_equal(a.numpy(), reference.norm_a.normalize(raw_a, valid_a))
        np.testing.assert_array_equal(b.numpy(), reference.norm_b.normalize(raw_b, valid_b))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_is_seeded_per_domain(rotterdam_unpaired):
    def split(data):
        return ([p.name for p in data.valid_ds.chips_a], [p.name for p in data.valid_ds.chips_b])

    one = prepare_data(rotterdam_unpaired, seed=1, val_split_pct=0.25)
    assert split(one) == split(prepare_data(rotterdam_unpaired, seed=1, val_split_pct=0.25))
    assert split(one) != split(prepare_data(rotterdam_unpaired, seed=2, val_split_pct=0.25))
    assert (len(one.valid_ds.chips_a), len(one.valid_ds.chips_b)) == (4, 4)  # round(16 / 4), round(18 / 4)
    assert not {p.name for p in one.valid_ds.chips_a} & {p.name for p in one.train_ds.chips_a}
    assert not {p.name for p in one.valid_ds.chips_b} & {p.name for p in one.train_ds.chips_b}


def test_augmentation_is_drawn_for_each_domain_and_training_only(reference, rotterdam_unpaired):
    chip = reference.train_ds.chips_a[0]
    plain = reference.norm_a.normalize(*read_image(chip))
    variants = dihedral_variants(plain)
    # the same chip in both domains: any difference comes from independent draws
    ds = UnpairedDataset([chip], [chip], norm_a=reference.norm_a, norm_b=reference.norm_a, train=True,
                         augment=True)
    torch.manual_seed(0)
    differ = 0
    for _ in range(24):
        a, b = (t.numpy() for t in ds[0])
        assert any(np.array_equal(a, v) for v in variants) and any(np.array_equal(b, v) for v in variants)
        differ += not np.array_equal(a, b)
    assert differ > 6
    # random crops are drawn independently too
    cropped = UnpairedDataset([chip], [chip], norm_a=reference.norm_a, norm_b=reference.norm_a, train=True,
                              augment=False, chip_size=(40, 40))
    assert sum(not torch.equal(*cropped[0]) for _ in range(10)) > 5
    # not on validation; transforms=False turns it off
    still = prepare_data(rotterdam_unpaired, batch_size=4, transforms=False)
    for i in range(len(reference.valid_ds)):
        torch.testing.assert_close(reference.valid_ds[i], still.valid_ds[i])
    _, b = still.train_ds[0]  # B is the larger domain: item 0 takes its chip 0
    np.testing.assert_array_equal(b.numpy(), reference.norm_b.normalize(*read_image(still.train_ds.chips_b[0])))


def test_test_pairs_are_true_pairs(reference, rotterdam_unpaired):
    pairs = reference.test_pairs
    assert isinstance(pairs, UnpairedDataset) and len(pairs) == 9
    assert [p.name for p in pairs.chips_a] == [p.name for p in pairs.chips_b]
    for i in range(len(pairs)):
        with rasterio.open(pairs.chips_a[i]) as a_src, rasterio.open(pairs.chips_b[i]) as b_src:
            assert a_src.transform == b_src.transform  # the same ground
        a, b = pairs[i]
        torch.testing.assert_close(pairs[i][0], a)  # deterministic
        np.testing.assert_array_equal(b.numpy(), reference.norm_b.normalize(*read_image(pairs.chips_b[i])))
        assert np.corrcoef(a.numpy().mean(axis=0).ravel(), b.numpy()[0].ravel())[0, 1] > 0.7
    # centre-cropped to the model's chip size
    small = prepare_data(rotterdam_unpaired, chip_size=48)
    a, b = small.test_pairs[0]
    assert a.shape == (4, 48, 48) and b.shape == (1, 48, 48)
    torch.testing.assert_close(a, pairs[0][0][:, 8:56, 8:56])


def test_test_chips_that_do_not_all_pair(rotterdam_unpaired, tmp_path):
    folder = copy(rotterdam_unpaired, tmp_path)
    (folder / "testB" / "r3_004.tif").unlink()
    with pytest.warns(UserWarning, match=r"1 test chip\(s\) of testA/ and testB/ have no namesake.*r3_004"):
        data = prepare_data(folder)
    assert data.test_pairs is None


def test_show_batch_draws_both_domains(reference, tmp_path):
    fig = reference.show_batch(rows=3, rgb_bands=[2, 1, 0])
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["Domain A", "Domain B"]
    shown_a = fig.axes[0].images[0].get_array()
    shown_b = fig.axes[1].images[0].get_array()
    assert shown_a.shape == (64, 64, 3) and shown_b.shape == (64, 64)  # RGB picked, pan in grey
    assert np.std(shown_a) > 0.05 and np.std(shown_b) > 0.05
    fig.savefig(tmp_path / "batch.png")
    plt.close(fig)


def test_use_normalization(reference, rotterdam_unpaired):
    data = prepare_data(rotterdam_unpaired, transforms=False)
    other = BandNorm.from_dict(data.norm_a.to_dict() | {"mean": [m + 0.01 for m in data.norm_a.mean]})
    data.use_normalization(other, data.norm_b)
    assert data.norm_a is other and data.train_ds.norm_a is other and data.test_pairs.norm_a is other
    assert not torch.equal(data.valid_ds[0][0], reference.valid_ds[0][0])
    with pytest.raises(ValueError, match="domain B has 1 band"):
        data.use_normalization(other, other)


def test_nodata_is_left_out_and_zeroed(rotterdam_unpaired, tmp_path):
    folder = copy(rotterdam_unpaired, tmp_path)
    for chip in sorted((folder / "trainB").glob("*.tif")):
        with rasterio.open(chip) as src:
            data, transform, crs = src.read(), src.transform, src.crs
        data[:, :16, :] = 65535  # a strip of nodata
        write_raster(chip, data, transform=transform, crs=crs, nodata=65535)
    data = prepare_data(folder, transforms=False, val_split_pct=0.2)
    assert data.norm_b.max[0] < 65535
    b = data.valid_ds[0][1].numpy()
    assert (b[:, :16] == 0).all() and (b[:, 16:] != 0).any()


# --- the Esri export (A/ + B/) ----------------------------------------------------------------------


def test_esri_cyclegan_export_is_detected_with_its_statistics(rotterdam_cyclegan_export):
    before = snapshot(rotterdam_cyclegan_export)
    assert unpaired_layout(rotterdam_cyclegan_export) == "A+B"
    data = prepare_data(rotterdam_cyclegan_export, batch_size=4, num_workers=0)
    assert isinstance(data, UnpairedDataLoaders) and data.folder.layout == "A+B"
    assert (len(data.folder.a.chips), len(data.folder.b.chips)) == (16, 64)
    assert (data.n_bands_a, data.n_bands_b) == (4, 1)
    for domain, norm in (("A", data.norm_a), ("B", data.norm_b)):
        emd = json.loads((rotterdam_cyclegan_export / domain / "esri_model_definition.emd").read_text())
        assert norm.mean == [b["Mean"] for b in emd["AllTilesStats"]]
        assert norm.source == f"AllTilesStats of {rotterdam_cyclegan_export / domain / 'esri_model_definition.emd'}"
    assert data.test_pairs is None  # an export holds no true pairs
    assert data.cell_size == pytest.approx((1.0000483, 1.0000483))
    assert data.cell_size_b == pytest.approx((0.4999935, 0.4999935))
    a, b = data.one_batch()
    assert a.shape == (4, 4, 64, 64) and b.shape == (4, 1, 64, 64)
    assert len(data.train_ds) == len(data.train_ds.chips_b) == 58
    files = {p.name for p in data.folder.input_paths}
    assert {"images", "esri_model_definition.emd", "map.txt", "esri_accumulated_stats.json"} <= files
    data.rgb_bands_b = [0]
    fig = data.show_batch(rows=2)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["Domain A", "Domain B"]
    plt.close(fig)
    with pytest.raises(ValueError, match="rgb_bands must name 1 or 3 of the 1 bands"):
        data.show_batch(rows=2, rgb_bands_b=[0, 1, 2])
    assert snapshot(rotterdam_cyclegan_export) == before


def test_images_and_images2_are_pix2pix_unless_the_metadata_says_cyclegan(rotterdam_pairs, tmp_path):
    folder = copy(rotterdam_pairs, tmp_path)
    assert isinstance(prepare_data(folder), ChipDataLoaders)  # an Export_Tiles export: pairs
    unpaired = prepare_data(folder, dataset_type="cyclegan")  # asked for: read as two domains
    assert isinstance(unpaired, UnpairedDataLoaders) and unpaired.folder.layout == "images+images2"
    emd = json.loads((folder / "esri_model_definition.emd").read_text())
    assert unpaired.norm_b.mean == [b["Mean"] for b in emd["AllTilesStats2"]]
    stats_file = folder / "esri_accumulated_stats.json"
    stats = json.loads(stats_file.read_text())
    stats_file.write_text(json.dumps(stats | {"MetaDataMode": "CycleGAN"}))
    detected = prepare_data(folder)
    assert isinstance(detected, UnpairedDataLoaders) and detected.dataset_type == "CycleGAN"
    assert detected.norm_a.mean == [b["Mean"] for b in emd["AllTilesStats"]]


def test_hand_made_train_a_train_b_when_asked(hand_made):
    assert isinstance(prepare_data(hand_made), ChipDataLoaders)  # pairs by default, as before
    data = prepare_data(hand_made, dataset_type="CycleGAN", val_split_pct=0.25)
    assert data.folder.layout == "Images/train_a+train_b" and (data.n_bands_a, data.n_bands_b) == (3, 4)
    assert torch.isfinite(data.valid_ds[0][1]).all()  # NaN outside the SAR swath: zeroed


# --- bad folders ------------------------------------------------------------------------------------


def test_a_chip_unlike_its_domain_is_named(rotterdam_unpaired, tmp_path):
    folder = copy(rotterdam_unpaired, tmp_path)
    odd = folder / "trainB" / "pan2_007.tif"
    with rasterio.open(odd) as src:
        data, transform, crs = src.read(), src.transform, src.crs
    write_raster(odd, np.pad(data, ((0, 0), (0, 8), (0, 8))), transform=transform, crs=crs, nodata=None)
    with pytest.raises(ValueError, match=r"pan2_007\.tif: 1 band\(s\) of 72x72 px, but .*pan2_000\.tif .* 64x64 px"):
        prepare_data(folder)


def test_domains_of_different_pixel_sizes(rotterdam_unpaired, tmp_path):
    folder = copy(rotterdam_unpaired, tmp_path)
    for chip in (folder / "trainB").glob("*.tif"):
        with rasterio.open(chip) as src:
            data, transform, crs = src.read(), src.transform, src.crs
        write_raster(chip, data[:, :32, :32], transform=transform, crs=crs, nodata=None)
    with pytest.raises(ValueError, match=r"domain A are 64x64 px .* domain B 32x32 px .*resize_to"):
        prepare_data(folder)
    data = prepare_data(folder, resize_to=48)
    a, b = data.train_ds[0]
    assert a.shape == (4, 48, 48) and b.shape == (1, 48, 48)
    assert data.cell_size == pytest.approx((1.0000483 * 64 / 48,) * 2)
    assert data.cell_size_b == pytest.approx((1.0000483 * 32 / 48,) * 2)


def test_half_an_unpaired_folder(rotterdam_unpaired, tmp_path):
    folder = copy(rotterdam_unpaired, tmp_path)
    shutil.rmtree(folder / "trainB")
    with pytest.raises(ValueError, match=r"holds trainA/ but no trainB/") as info:
        prepare_data(folder)
    assert "A/images/000000000.tif" in str(info.value)  # the expected trees


def test_cyclegan_asked_of_a_classified_tiles_folder(atlanta_tiles):
    with pytest.raises(ValueError, match=r"images/ \+ labels/, a Classified_Tiles export"):
        prepare_data(atlanta_tiles, dataset_type="CycleGAN")
    with pytest.raises(ValueError, match="index_unpaired"):
        index_folder(atlanta_tiles, dataset_type="CycleGAN")


def test_keywords_that_do_not_apply(rotterdam_unpaired):
    with pytest.raises(ValueError, match="extract_bands applies to paired folders"):
        prepare_data(rotterdam_unpaired, extract_bands=[0, 1, 2])
    with pytest.raises(TypeError, match="imagery_typ"):
        prepare_data(rotterdam_unpaired, imagery_typ="ms")


def test_index_unpaired_reads_headers_only(rotterdam_cyclegan_export):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder = index_unpaired(rotterdam_cyclegan_export)
    assert folder.a.header.bands == 4 and folder.b.header.dtype == "uint16"
    assert len(folder.a.stats) == 4 and folder.b.stats_key == "AllTilesStats"
