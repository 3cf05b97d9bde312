"""toolkit.esri against real files written by ArcGIS Pro (tests/fixtures/esri_formats)."""

from __future__ import annotations

import json
from pathlib import Path

from affine import Affine

from toolkit import esri

FORMATS = Path(__file__).parent / "fixtures" / "esri_formats"


def test_read_map_of_a_real_arcgis_export():
    rows = esri.read_map(FORMATS / "map.txt")
    assert len(rows) == 20
    assert rows[0] == ("images/000000019.tif", "labels/000000019.tif")  # order is not sorted
    assert all(len(r) == 2 and "\\" not in r[0] and not r[1].endswith(" ") for r in rows)


def test_map_line_is_byte_identical_to_arcgis():
    first = (FORMATS / "map.txt").read_bytes().split(b"\n")[0] + b"\n"
    line = esri.map_line(["images/000000019.tif", "labels/000000019.tif"])
    assert line.encode() == first


def test_write_map_round_trips(tmp_path):
    rows = [("images/000000000.tif", "images2/000000000.tif"), ("images/000000001.tif", "images2/000000001.tif")]
    esri.write_map(tmp_path / "map.txt", rows)
    assert esri.read_map(tmp_path / "map.txt") == rows
    assert (tmp_path / "map.txt").read_bytes().count(b"\r\n") == 2


def test_world_file_round_trip(tmp_path):
    transform = Affine(0.5, 0.0, 733601.0, 0.0, -0.5, 3725139.0)
    esri.write_world_file(tmp_path / "a.tfw", transform)
    lines = (tmp_path / "a.tfw").read_text().split()
    assert [float(v) for v in lines] == [0.5, 0.0, 0.0, -0.5, 733601.25, 3725138.75]  # pixel centre
    assert esri.read_world_file(tmp_path / "a.tfw") == transform


def test_chip_names():
    assert esri.chip_name(0, ".tif") == "000000000.tif"
    assert esri.chip_name(3381, ".png") == "000003381.png"


def test_real_stats_file_uses_the_keys_we_write():
    stats = json.loads((FORMATS / "esri_accumulated_stats.json").read_text())
    assert stats["MetaDataMode"] == esri.CLASSIFIED_TILES
    assert esri.classes_for_stats([{"Value": 1, "Name": "1", "Color": [1, 2, 3]}]) == \
        [{"ClassValue": 1, "ClassName": "1", "Color": [1, 2, 3]}]
    emd = json.loads((FORMATS / "esri_model_definition.emd").read_text())
    ours = esri.model_definition(tile_size=(400, 400), band_count=3, classes=emd["Classes"],
                                 all_tiles_stats=[], all_tiles_stats2=None, input_rasters_props={})
    assert set(emd) <= set(ours) | {"DataRange", "ModelPadding", "BatchSize", "PerProcessGPUMemoryFraction"}
    assert ours["Classes"] == emd["Classes"]
