"""toolkit.prepare_data on folders of every layout made from the real samples."""

from __future__ import annotations

import json
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest
import rasterio
import torch
from fastai.data.core import DataLoaders
from fastai.vision.augment import Dihedral, Flip

from toolkit import export_training_data, prepare_data
from toolkit.data import BandNorm, MaskEncoding, read_pair
from toolkit.stats import BandStatistics


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def identity_pairs(atlanta, tmp_path_factory):
    """Export_Tiles whose target is the input raster itself: any paired transform keeps x == y."""
    out = tmp_path_factory.mktemp("identity") / "pairs"
    export_training_data(atlanta["image"], out, additional_input_raster=atlanta["image"],
                         tile_size=64, stride=96, progress=False)
    return out


def test_classified_tiles_gives_fastai_dataloaders(atlanta_tiles):
    before = snapshot(atlanta_tiles)
    data = prepare_data(atlanta_tiles, batch_size=4, num_workers=0)
    assert isinstance(data, DataLoaders)
    assert data.dataset_type == "Classified_Tiles" and data.path == atlanta_tiles
    assert (data.chip_size, data.n_bands_in, data.n_bands_out) == (128, 1, 1)
    assert len(data.train_ds) == 44 and len(data.valid_ds) == 5
    assert len(data.train) == 11 and len(data.valid) == 2
    x, y = data.one_batch()
    assert x.shape == (4, 1, 128, 128) and y.shape == (4, 1, 128, 128)
    assert x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert set(torch.unique(y).tolist()) <= {-1.0, 1.0}  # background -1, building +1
    assert [c["Value"] for c in data.class_records] == [1]
    json.dumps(data.stats)  # plain and serialisable
    assert data.stats["input"]["source"].startswith("AllTilesStats")
    for _ in data.valid:
        pass
    assert snapshot(atlanta_tiles) == before  # nothing written into the data folder


def test_mask_targets_match_the_label_chips(atlanta_tiles):
    data = prepare_data(atlanta_tiles, batch_size=4, transforms=False)
    for i in range(len(data.valid_ds)):
        _, y = data.valid_ds[i]
        with rasterio.open(data.valid_ds.pairs[i].target) as src:
            label = src.read(1)
        np.testing.assert_array_equal(y[0].numpy() > 0, label == 1)


def test_several_classes_are_one_hot(atlanta, tmp_path):
    out = tmp_path / "ringed"
    export_training_data(atlanta["image"], out, in_class_data=atlanta["footprints"], tile_size=128,
                         contour_width=2, progress=False)
    data = prepare_data(out, batch_size=4, transforms=False)
    assert [c["Name"] for c in data.class_records] == ["1", "boundary"] and data.n_bands_out == 2
    for i in range(len(data.valid_ds)):
        _, y = data.valid_ds[i]
        with rasterio.open(data.valid_ds.pairs[i].target) as src:
            label = src.read(1)
        np.testing.assert_array_equal(y[0].numpy() > 0, label == 1)
        np.testing.assert_array_equal(y[1].numpy() > 0, label == 2)
        np.testing.assert_array_equal(data.target_norm.decode(y.numpy()), label)


def test_export_tiles_multispectral_to_panchromatic(rotterdam_pairs):
    data = prepare_data(rotterdam_pairs, batch_size=4)
    assert data.dataset_type == "Pix2Pix" and (data.n_bands_in, data.n_bands_out) == (4, 1)
    x, y = data.one_batch()
    assert x.shape == (4, 4, 64, 64) and y.shape == (4, 1, 64, 64)
    emd = json.loads((rotterdam_pairs / "esri_model_definition.emd").read_text())
    assert data.stats["input"]["mean"] == [b["Mean"] for b in emd["AllTilesStats"]]
    assert data.stats["target"]["mean"] == [b["Mean"] for b in emd["AllTilesStats2"]]


def test_normalisation_maps_band_values_to_minus_one_one_and_back(rotterdam_pairs):
    data = prepare_data(rotterdam_pairs, batch_size=4, transforms=False)
    x, y = data.valid_ds[0]
    raw_x, _, raw_y, _ = read_pair(data.valid_ds.pairs[0])
    norm = data.target_norm
    inside = (raw_y >= norm.low[0]) & (raw_y <= norm.high[0])
    np.testing.assert_allclose(norm.denormalize(y.numpy())[inside], raw_y[inside], rtol=1e-5)
    assert -1 <= x.min() and x.max() <= 1
    assert inside.mean() > 0.95  # the 3-sigma range keeps nearly all real values


def test_statistics_from_the_training_chips_when_the_emd_has_none(arcgis_imitation):
    data = prepare_data(arcgis_imitation, batch_size=2, val_split_pct=0.2)
    assert data.stats["input"]["source"].startswith("15 of the 15 training chips")
    expected = BandStatistics(3)
    for pair in data.train_ds.pairs:
        x, valid, _, _ = read_pair(pair)
        expected.update(x, valid)
    assert data.stats["input"]["mean"] == pytest.approx(expected.mean.tolist())
    assert data.stats["input"]["max"] == expected.max.tolist()
    # ArcGIS's classes 1 (ground) and 2 (building): one band each
    assert data.n_bands_out == 2 and [c["Value"] for c in data.class_records] == [1, 2]
    sampled = prepare_data(arcgis_imitation, batch_size=2, val_split_pct=0.2, norm_pct=0.4)
    assert sampled.stats["input"]["source"].startswith("6 of the 15 training chips")


def test_nodata_is_left_out_of_statistics_and_zeroed(hand_made):
    data = prepare_data(hand_made, batch_size=3, val_split_pct=0.25, transforms=False)
    assert data.dataset_type == "Pix2Pix" and (data.n_bands_in, data.n_bands_out) == (3, 4)
    stats = data.stats["target"]
    assert all(np.isfinite(stats["mean"])) and all(np.isfinite(stats["min"]))  # NaN left out
    for i in range(len(data.train_ds)):
        _, y = data.train_ds[i]
        _, _, raw, valid = read_pair(data.train_ds.pairs[i])
        assert torch.isfinite(y).all()
        assert (y.numpy()[~valid] == 0).all()


def test_side_by_side_halves_and_direction(side_by_side):
    data = prepare_data(side_by_side, batch_size=2, transforms=False)
    assert len(data.train_ds) == 8 and len(data.valid_ds) == 2  # val/ is the validation set
    x, y = data.valid_ds[0]
    assert x.shape == (3, 128, 128) and y.shape == (3, 128, 128)
    flipped = prepare_data(side_by_side, batch_size=2, transforms=False, direction="BtoA")
    x2, y2 = flipped.valid_ds[0]
    # same statistics both ways only if the halves swapped their roles: compare raw halves
    a, _, b, _ = read_pair(data.valid_ds.pairs[0])
    a2, _, b2, _ = read_pair(flipped.valid_ds.pairs[0])
    np.testing.assert_array_equal(a, b2)
    np.testing.assert_array_equal(b, a2)
    assert data.stats["input"]["mean"] == pytest.approx(flipped.stats["target"]["mean"])


def test_split_is_reproducible(atlanta_tiles):
    names = lambda d: [p.name for p in d.valid_ds.pairs]  # noqa: E731
    a = prepare_data(atlanta_tiles, seed=1)
    assert names(a) == names(prepare_data(atlanta_tiles, seed=1))
    assert names(a) != names(prepare_data(atlanta_tiles, seed=2))
    assert not set(names(a)) & {p.name for p in a.train_ds.pairs}


def test_default_augmentation_is_paired_and_training_only(identity_pairs):
    data = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2)
    plain = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2, transforms=False)
    changed = 0
    for i in range(len(data.train_ds)):
        for _ in range(3):
            x, y = data.train_ds[i]
            torch.testing.assert_close(x, y)  # the same flip/rotation went to both
            changed += not torch.equal(x, plain.train_ds[i][0])
    assert changed > len(data.train_ds)  # it does augment
    for i in range(len(data.valid_ds)):
        torch.testing.assert_close(data.valid_ds[i][0], plain.valid_ds[i][0])  # not on validation


def test_turns_and_zooms_go_to_input_and_target_alike(identity_pairs):
    data = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2, max_rotate=45, max_zoom=1.3)
    plain = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2, transforms=False)
    changed = 0
    for i in range(len(data.train_ds)):
        x, y = data.train_ds[i]
        torch.testing.assert_close(x, y)  # the same turn and zoom went to both
        changed += not torch.equal(x, plain.train_ds[i][0])
    assert changed == len(data.train_ds)
    torch.testing.assert_close(data.valid_ds[0][0], plain.valid_ds[0][0])  # not on validation


def test_lighting_changes_the_input_only(identity_pairs):
    plain = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2, transforms=False)
    lit = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2, transforms=False, max_lighting=0.3)
    for i in range(len(lit.train_ds)):
        x, y = lit.train_ds[i]
        x0, y0 = plain.train_ds[i]
        torch.testing.assert_close(y, y0)  # the target keeps its values
        assert not torch.equal(x, x0) and -1 <= x.min() and x.max() <= 1
        # brightness and contrast change, the picture stays: still strongly correlated
        assert np.corrcoef(x.numpy().ravel(), x0.numpy().ravel())[0, 1] > 0.8


def test_masks_get_the_extra_augmentation_by_default(atlanta_tiles, identity_pairs):
    from toolkit.data.loaders import MASK_AUGMENTATION

    masks = prepare_data(atlanta_tiles).train_ds
    assert (masks.lighting, masks.rotate, masks.zoom) == tuple(MASK_AUGMENTATION.values())
    images = prepare_data(identity_pairs).train_ds
    assert (images.lighting, images.rotate, images.zoom) == (0.0, 0.0, 1.0)
    off = prepare_data(atlanta_tiles, transforms=False).train_ds
    assert (off.lighting, off.rotate, off.zoom) == (0.0, 0.0, 1.0)
    # turned labels keep their class values (nearest neighbour)
    for i in range(8):
        _, y = masks[i]
        assert set(torch.unique(y).tolist()) <= {-1.0, 1.0}
    for bad in ({"max_lighting": 1.0}, {"max_rotate": -5}, {"max_zoom": 0.8}, {"max_lighting": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            prepare_data(atlanta_tiles, **bad)


def test_chips_are_read_from_disk_once(atlanta_tiles, monkeypatch):
    from toolkit.data import dataset

    data = prepare_data(atlanta_tiles, batch_size=4)
    first = [data.valid_ds[i] for i in range(len(data.valid_ds))]
    reads = []
    monkeypatch.setattr(dataset, "read_pair", lambda *a, **k: reads.append(a) or pytest.fail("read again"))
    for i, (x, y) in enumerate(first):
        again = data.valid_ds[i]
        torch.testing.assert_close(again[0], x)
        torch.testing.assert_close(again[1], y)
    assert not reads
    monkeypatch.setattr(dataset, "CHIP_CACHE_BYTES", 0)  # over the budget: read every time
    fresh = prepare_data(atlanta_tiles, batch_size=4).valid_ds
    with pytest.raises(pytest.fail.Exception, match="read again"):
        fresh[0]


def test_fastai_transforms_are_applied_to_both(identity_pairs):
    data = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2, transforms=[Dihedral(p=1.0), Flip(p=0.5)])
    plain = prepare_data(identity_pairs, batch_size=8, val_split_pct=0.2, transforms=False)
    torch.manual_seed(0)
    x, y = data.one_batch()
    torch.testing.assert_close(x, y)
    assert len(data.train.after_batch.fs) == 2
    xv, _ = next(iter(data.valid))
    xp, _ = next(iter(plain.valid))
    torch.testing.assert_close(xv, xp)  # batch augmentation skips validation


def test_chip_size_crops_and_resize_to_resizes(atlanta_tiles):
    data = prepare_data(atlanta_tiles, batch_size=4, chip_size=96, transforms=False)
    full = prepare_data(atlanta_tiles, batch_size=4, transforms=False)
    assert data.chip_size == 96
    x, _ = data.valid_ds[0]
    torch.testing.assert_close(x, full.valid_ds[0][0][:, 16:112, 16:112])  # centred for validation
    assert data.train_ds[0][0].shape == (1, 96, 96)
    small = prepare_data(atlanta_tiles, batch_size=4, resize_to=64, transforms=False)
    x, y = small.valid_ds[0]
    assert small.chip_size == 64 and x.shape == (1, 64, 64) and set(torch.unique(y).tolist()) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="chip_size .* is larger"):
        prepare_data(atlanta_tiles, chip_size=256)


def test_workers(atlanta_tiles):
    from toolkit.data import default_num_workers

    assert default_num_workers() >= 0
    data = prepare_data(atlanta_tiles, batch_size=8, num_workers=1)
    batches = list(data.train)
    assert len(batches) == len(data.train) and batches[0][0].shape == (8, 1, 128, 128)
    with pytest.raises(ValueError, match="num_workers"):
        prepare_data(atlanta_tiles, num_workers=-1)


@pytest.mark.parametrize("bands", [1, 3, 4, 6])
def test_show_batch_renders(bands, atlanta_tiles, arcgis_imitation, rotterdam_pairs, rotterdam, tmp_path):
    if bands == 1:
        folder, kwargs = atlanta_tiles, {}
    elif bands == 3:
        folder, kwargs = arcgis_imitation, {}
    elif bands == 4:
        folder, kwargs = rotterdam_pairs, {"rgb_bands": [2, 1, 0]}
    else:
        folder, kwargs = six_band_pairs(rotterdam, tmp_path), {"rgb_bands": [3, 2, 1]}
    data = prepare_data(folder, batch_size=2)
    assert data.n_bands_in == bands
    fig = data.show_batch(rows=3, **kwargs)
    assert len(fig.axes) == 6 and [ax.get_title() for ax in fig.axes[:2]] == ["Input", "Target"]
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape[:2] == (data.chip_size, data.chip_size) and np.std(shown) > 0.05
    if bands >= 3:
        assert shown.shape[2] == 3  # picked bands shown as RGB
    fig.savefig(tmp_path / "batch.png")
    plt.close(fig)
    if bands == 6:
        plt.close(data.show_batch(rows=2))  # default bands


def six_band_pairs(rotterdam, tmp_path):
    """6 bands: Rotterdam's 4 multispectral bands plus NDVI-like ratios, -> panchromatic."""
    with rasterio.open(rotterdam["multispectral_1"]) as src:
        ms, profile = src.read(), src.profile
    ratio = lambda a, b: (a - b) / (a + b + 1e-6)  # noqa: E731
    stack = np.concatenate([ms, ratio(ms[3], ms[2])[None], ratio(ms[1], ms[3])[None]])
    path = tmp_path / "six.tif"
    with rasterio.open(path, "w", **(profile | {"count": 6})) as dst:
        dst.write(stack)
    out = tmp_path / "six_pairs"
    export_training_data(path, out, additional_input_raster=rotterdam["panchromatic_1"], tile_size=64,
                         progress=False)
    return out


# --- bad input -----------------------------------------------------------------------------------


def test_label_values_not_among_the_classes(atlanta_tiles, tmp_path):
    folder = shutil.copytree(atlanta_tiles, tmp_path / "bad_labels")
    data = prepare_data(folder, batch_size=4, transforms=False)
    bad = data.valid_ds.pairs[0].target
    with rasterio.open(bad) as src:
        label, profile = src.read(), src.profile
    label[0, :4, :4] = 5
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(label)
    with pytest.raises(ValueError, match=rf"{bad.name}: label values \[5\] are not among the classes \[1\]"):
        data.valid_ds[0]


def test_truncated_chip_is_named_when_read(atlanta_tiles, tmp_path):
    folder = shutil.copytree(atlanta_tiles, tmp_path / "truncated")
    data = prepare_data(folder, batch_size=4, transforms=False)
    chip = data.valid_ds.pairs[1].input
    chip.write_bytes(chip.read_bytes()[: chip.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{chip.name}: corrupt or unreadable chip"):
        data.valid_ds[1]


def test_empty_set_after_the_split(atlanta_tiles, tmp_path):
    folder = tmp_path / "one"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for sub in ("images", "labels"):
        shutil.copy(atlanta_tiles / sub / "000000000.tif", folder / sub)
    shutil.copy(atlanta_tiles / "esri_model_definition.emd", folder)
    with pytest.raises(ValueError, match="training set is empty after the split"):
        prepare_data(folder)
    with pytest.raises(ValueError, match="validation set is empty after the split"):
        prepare_data(folder, val_split_pct=0.0)


def test_unknown_keyword(atlanta_tiles):
    with pytest.raises(TypeError, match="imagery_typ"):
        prepare_data(atlanta_tiles, imagery_typ="ms")


def test_norms_round_trip_through_dicts(rotterdam_pairs, atlanta_tiles):
    from toolkit.data import target_from_dict

    image = prepare_data(rotterdam_pairs)
    mask = prepare_data(atlanta_tiles)
    assert isinstance(target_from_dict(json.loads(json.dumps(image.target_norm.to_dict()))), BandNorm)
    assert isinstance(target_from_dict(json.loads(json.dumps(mask.target_norm.to_dict()))), MaskEncoding)
    restored = BandNorm.from_dict(image.input_norm.to_dict())
    np.testing.assert_array_equal(restored.low, image.input_norm.low)
