"""Shared fixtures: the real SpaceNet samples from toolkit.datasets.

Tests that use a sample fixture are marked ``sample_data``: when the package registry cannot be
reached they fail with the download error, which names the wheel and where to put it by hand.
Deselect them with ``-m "not sample_data"`` to run the rest offline.
"""

from __future__ import annotations

import os

import matplotlib
import pytest

matplotlib.use("Agg")  # tests draw figures without a screen

from toolkit import datasets  # noqa: E402

SAMPLE_FIXTURES = {"atlanta", "rotterdam", "vegas", "nebraska", "solaris_wheel"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SAMPLE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sample_data)


def _fetch(name: str) -> dict:
    try:
        return datasets.fetch(name)
    except datasets.SampleDataError as err:
        pytest.fail(f"[sample_data] the SpaceNet sample {name!r} is not available: {err}", pytrace=False)


@pytest.fixture(scope="session")
def atlanta() -> dict:
    """SpaceNet Atlanta: 'image' (900x900 uint16 panchromatic, EPSG:32616) and 'footprints' (43 polygons)."""
    return _fetch("atlanta_buildings")


@pytest.fixture(scope="session")
def rotterdam() -> dict:
    return _fetch("rotterdam")


@pytest.fixture(scope="session")
def vegas() -> dict:
    return _fetch("vegas_roads")


@pytest.fixture(scope="session")
def nebraska() -> dict:
    return _fetch("nebraska_landsat")


@pytest.fixture(scope="session")
def solaris_wheel(atlanta) -> str:
    """Path of the verified sample wheel in the cache (fetched by the atlanta fixture)."""
    return os.fspath(datasets.cache_dir() / datasets.WHEEL_NAME)
