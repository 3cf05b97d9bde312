"""toolkit.viz: rasters drawn in map coordinates, footprints over them."""

from __future__ import annotations

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pytest
import rasterio

from toolkit.viz import plot_footprints, show_raster, to_display


def test_show_raster_is_georeferenced_and_nodata_is_transparent(atlanta, tmp_path):
    with rasterio.open(atlanta["image"]) as src:
        profile, data = src.profile, src.read()
        left, bottom, right, top = src.bounds
    data[:, :100, :200] = profile["nodata"]  # a nodata corner, as at a scene's edge
    path = tmp_path / "corner.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    ax = show_raster(path)
    assert ax.images[0].get_extent() == pytest.approx([left, right, bottom, top])
    assert ax.get_xlabel() == profile["crs"].to_string()
    np.testing.assert_array_equal(np.ma.getmaskarray(ax.images[0].get_array()),
                                  data[0] == profile["nodata"])
    plt.close(ax.figure)


def test_show_raster_bands(rotterdam):
    ax = show_raster(rotterdam["multispectral_1"], rgb_bands=[3, 0, 1])
    assert ax.images[0].get_array().shape[-1] == 4  # RGB + alpha for nodata
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="rgb_bands"):
        to_display(np.zeros((4, 8, 8)), rgb_bands=[0, 1])


def test_plot_footprints_reprojects_each_layer(atlanta):
    truth = gpd.read_file(atlanta["footprints"])
    fig = plot_footprints(atlanta["image"], {"A": truth, "B (WGS84)": truth.to_crs("EPSG:4326")})
    a, b = fig.axes
    assert a.get_title() == f"A ({len(truth)})" and b.get_title() == f"B (WGS84) ({len(truth)})"
    # the polygons reprojected from WGS84 land where the originals are, in the image's CRS
    outline_a = np.concatenate([p.vertices for c in a.collections for p in c.get_paths()])
    outline_b = np.concatenate([p.vertices for c in b.collections for p in c.get_paths()])
    np.testing.assert_allclose(outline_b.min(axis=0), outline_a.min(axis=0), atol=0.01)
    np.testing.assert_allclose(outline_b.max(axis=0), outline_a.max(axis=0), atol=0.01)
    plt.close(fig)


def test_plot_footprints_outlines_an_area(atlanta):
    from shapely.geometry import box

    truth = gpd.read_file(atlanta["footprints"])
    with rasterio.open(atlanta["image"]) as src:
        east = box(*(src.transform @ (600, src.height)), *(src.transform @ (src.width, 0)))
    fig = plot_footprints(atlanta["image"], {"Truth": truth}, area=east, area_label="held out")
    (ax,) = fig.axes
    outline = ax.collections[-1]  # drawn after the footprints
    vertices = np.concatenate([p.vertices for p in outline.get_paths()])
    np.testing.assert_allclose([*vertices.min(axis=0), *vertices.max(axis=0)], east.bounds)
    assert outline.get_linestyle()[0][1] is not None  # dashed
    assert [t.get_text() for t in ax.texts] == [" held out"]
    plt.close(fig)
