"""toolkit.data.layouts: every chip layout detected and paired by name; bad folders refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio

from toolkit.data import CLASSIFIED_TILES, PIX2PIX, index_folder
from toolkit.data.chips import ChipHeader, _tiff_header, read_header
from toolkit.raster import write_raster


def copy(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


def test_classified_tiles_export(atlanta_tiles):
    folder = index_folder(atlanta_tiles)
    assert (folder.layout, folder.dataset_type) == ("Classified_Tiles", CLASSIFIED_TILES)
    assert len(folder.pairs) == 49
    assert [c["Value"] for c in folder.classes] == [1]
    assert folder.input_stats is not None and folder.target_stats is None
    for pair in folder.pairs:
        assert pair.input.parent.name == "images" and pair.target.parent.name == "labels"
        assert pair.input.name == pair.target.name
        with rasterio.open(pair.input) as a, rasterio.open(pair.target) as b:
            assert a.transform == b.transform  # the pair covers the same ground


def test_export_tiles_on_different_grids_and_band_counts(rotterdam_pairs):
    folder = index_folder(rotterdam_pairs)
    assert (folder.layout, folder.dataset_type) == ("Export_Tiles", PIX2PIX)
    assert (folder.input_header.bands, folder.target_header.bands) == (4, 1)
    assert len(folder.input_stats) == 4 and len(folder.target_stats) == 1


def test_arcgis_export_byte_for_byte(arcgis_imitation):
    raw = (arcgis_imitation / "map.txt").read_bytes()
    assert b"\r\n" in raw and b"images\\000000019.tif" in raw
    folder = index_folder(arcgis_imitation)
    assert folder.dataset_type == CLASSIFIED_TILES
    # 20 lines, 000000019 twice: 19 distinct pairs, each image with its own label
    assert [p.name for p in folder.pairs] == [f"{i:09d}" for i in range(1, 20)]
    assert all(p.input.name == p.target.name for p in folder.pairs)
    assert [(c["Value"], c["Name"]) for c in folder.classes] == [(1, "1"), (2, "2")]
    assert folder.input_stats is None  # the template .emd holds no statistics
    assert (folder.input_header.bands, folder.input_header.width) == (3, 400)


def test_pairs_follow_map_txt_not_sorted_position(arcgis_imitation, tmp_path):
    # A map.txt that pairs image 3 with label 5 and image 5 with label 3: pairing goes through
    # the map's names, whatever the files' sorted positions.
    folder = copy(arcgis_imitation, tmp_path)
    text = (folder / "map.txt").read_bytes().decode()
    text = text.replace("labels\\000000003.tif", "labels\\TMP").replace(
        "labels\\000000005.tif", "labels\\000000003.tif").replace("labels\\TMP", "labels\\000000005.tif")
    (folder / "map.txt").write_bytes(text.encode())
    pairs = {p.name: p for p in index_folder(folder).pairs}
    assert pairs["000000003"].target == folder / "labels" / "000000005.tif"
    assert pairs["000000005"].target == folder / "labels" / "000000003.tif"
    assert pairs["000000004"].target == folder / "labels" / "000000004.tif"


def test_side_by_side_research_layout(side_by_side):
    folder = index_folder(side_by_side)
    assert (folder.layout, folder.dataset_type) == ("side_by_side", PIX2PIX)
    assert len(folder.pairs) == 8 and len(folder.valid_pairs) == 2
    assert folder.input_header.width == 128 and folder.target_header.width == 128
    assert all(p.side_by_side == "AtoB" for p in folder.pairs)
    assert index_folder(side_by_side, direction="BtoA").pairs[0].side_by_side == "BtoA"


def test_hand_made_train_a_train_b(hand_made):
    folder = index_folder(hand_made)
    assert (folder.layout, folder.dataset_type) == ("Images/train_a+train_b", PIX2PIX)
    assert len(folder.pairs) == 9
    assert all(p.input.stem == p.target.stem for p in folder.pairs)
    assert (folder.input_header.bands, folder.target_header.bands) == (3, 4)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_headers_match_gdal(atlanta_tiles, side_by_side, hand_made):
    """The fast header readers (tifffile, PIL) agree with rasterio."""
    for path in [next((atlanta_tiles / "images").glob("*.tif")), next((side_by_side / "train").glob("*.jpg")),
                 next((hand_made / "Images" / "train_a").glob("*.png"))]:
        header = read_header(path)
        with rasterio.open(path) as src:
            assert (header.bands, header.height, header.width, header.dtype) == \
                (src.count, src.height, src.width, src.dtypes[0])


def test_dataset_type_override(rotterdam, tmp_path):
    from toolkit import export_training_data

    out = tmp_path / "change"
    export_training_data(rotterdam["rgb"], out, additional_input_raster=rotterdam["sar"],
                         tile_size=50, progress=False)
    (out / "labels").mkdir()
    for chip in (out / "images").glob("*.tif"):
        shutil.copy(chip, out / "labels" / chip.name)
    (out / "map.txt").unlink()
    with pytest.raises(ValueError, match="both images2/ and labels/"):
        index_folder(out)
    assert index_folder(out, dataset_type="Pix2Pix").pairs[0].target.parent.name == "images2"
    assert index_folder(out, dataset_type="Classified_Tiles").pairs[0].target.parent.name == "labels"
    with pytest.raises(ValueError, match="dataset_type must be one of"):
        index_folder(out, dataset_type="ObjectDetection")


# --- bad input -----------------------------------------------------------------------------------


def test_folder_that_matches_no_layout(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match="matches no chip folder layout") as info:
        index_folder(tmp_path)
    for tree in ("images2/000000000.tif", "labels/000000000.tif", "Images/train_a", "train/1.jpg"):
        assert tree in str(info.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        index_folder(tmp_path / "nowhere")


def test_chip_missing_its_pair(atlanta_tiles, tmp_path):
    folder = copy(atlanta_tiles, tmp_path)
    (folder / "labels" / "000000007.tif").unlink()
    with pytest.raises(ValueError, match=r"map.txt lists 1 chips that do not exist: labels/000000007\.tif"):
        index_folder(folder)
    (folder / "map.txt").unlink()
    with pytest.raises(ValueError, match=r"1 in .*images have no namesake in .*labels: 000000007"):
        index_folder(folder)


def test_corrupt_chip(atlanta_tiles, tmp_path):
    folder = copy(atlanta_tiles, tmp_path)
    (folder / "images" / "000000003.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match=r"000000003\.tif: corrupt or unreadable chip"):
        index_folder(folder)


def test_chips_of_different_sizes(atlanta_tiles, tmp_path):
    folder = copy(atlanta_tiles, tmp_path)
    odd = folder / "images" / "000000005.tif"
    with rasterio.open(odd) as src:
        data, transform, crs = src.read(), src.transform, src.crs
    write_raster(odd, np.pad(data, ((0, 0), (0, 8), (0, 8))), transform=transform, crs=crs, nodata=0)
    with pytest.raises(ValueError, match=r"000000005\.tif: 1 band\(s\) of 136x136 px, but .* 128x128 px"):
        index_folder(folder)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32", "float64"])
@pytest.mark.parametrize("options", [{}, {"BIGTIFF": "YES"}, {"ENDIANNESS": "BIG", "TILED": "YES"}])
def test_tiff_header_parser_agrees_with_gdal(dtype, options, tmp_path):
    path = tmp_path / "chip.tif"
    with rasterio.open(path, "w", driver="GTiff", width=48, height=40, count=5, dtype=dtype,
                       crs="EPSG:32616", transform=rasterio.Affine(0.5, 0, 0, 0, -0.5, 0), **options) as dst:
        dst.write(np.ones((5, 40, 48), dtype=dtype))
    assert _tiff_header(path) == read_header(path) == ChipHeader(5, 40, 48, dtype)  # fast path, no GDAL
