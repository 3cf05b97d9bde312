"""Reading saved models safely: .dlpk members read alone and size-capped, ModelFile confined to the
package or folder, the .emd checked key by key, and network sizes checked against the weights
before anything is built.

One tiny model (ngf=ndf=8, one epoch on real Rotterdam pairs) is saved once; each test tampers
with a copy.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit import Pix2Pix, export_training_data, prepare_data
from toolkit.models import model_folder
from toolkit.models.emd_schema import check_weights_fit


@pytest.fixture(scope="module")
def data(rotterdam, tmp_path_factory):
    """Rotterdam multispectral (4 bands) -> panchromatic: 16 pairs of 64 px."""
    chips = tmp_path_factory.mktemp("model_files") / "chips"
    export_training_data(rotterdam["multispectral_1"], chips, additional_input_raster=rotterdam["panchromatic_1"],
                         tile_size=64, stride=64, progress=False)
    return prepare_data(chips, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """``(folder, chip, prediction)``: a saved tiny model, a validation chip and its prediction."""
    torch.manual_seed(0)
    model = Pix2Pix(data, ngf=8, ndf=8)
    model.fit(1, checkpoint=False)
    emd_path = model.save(tmp_path_factory.mktemp("saved") / "m", compute_metrics=False)
    chip = data.valid_ds.pairs[0].input
    return emd_path.parent, chip, model.predict(chip)


def copy_model(saved, tmp_path: Path) -> Path:
    """A fresh copy of the saved folder: ``<tmp_path>/m/`` with m.emd, m.pth, m.dlpk."""
    return Path(shutil.copytree(saved[0], tmp_path / "m"))


def edit_emd(emd_path: Path, edit) -> None:
    emd = json.loads(emd_path.read_text())
    edit(emd)
    emd_path.write_text(json.dumps(emd))


def make_package(dest: Path, members) -> Path:
    """A .dlpk holding ``members``: ``(name or ZipInfo, bytes)`` pairs."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return dest


@pytest.fixture
def bytes_read(monkeypatch) -> dict:
    """Counts the bytes read out of zip members, by member name."""
    counts: dict[str, int] = {}
    original = zipfile.ZipExtFile.read

    def read(self, n=-1):
        chunk = original(self, n)
        counts[self.name] = counts.get(self.name, 0) + len(chunk)
        return chunk

    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
    return counts


# --- packages are read member by member -----------------------------------------------------------


def test_package_with_a_big_extra_member_is_not_extracted(saved, tmp_path, bytes_read):
    folder, chip, before = saved
    package = tmp_path / "big.dlpk"
    shutil.copy(folder / "m.dlpk", package)
    zeros = bytes(2**20)
    with zipfile.ZipFile(package, "a", zipfile.ZIP_DEFLATED) as archive, archive.open("junk.bin", "w") as junk:
        for _ in range(100):  # 100 MiB of zeros, ~100 kB deflated
            junk.write(zeros)
    assert package.stat().st_size < 2 * (folder / "m.dlpk").stat().st_size
    model = Pix2Pix.from_model(package)
    np.testing.assert_array_equal(model.predict(chip), before)
    # only the .emd and the weights were read, each once
    assert set(bytes_read) == {"m.emd", "m.pth"}, bytes_read
    assert bytes_read["m.emd"] == (folder / "m.emd").stat().st_size
    assert bytes_read["m.pth"] == (folder / "m.pth").stat().st_size


def test_member_declaring_more_than_the_cap_is_not_read(saved, tmp_path, monkeypatch, bytes_read):
    folder = copy_model(saved, tmp_path)
    monkeypatch.setattr(model_folder, "MAX_WEIGHTS_BYTES", 50_000)
    with pytest.raises(ValueError, match=r"m\.dlpk: member 'm\.pth' declares .* more than the cap of 50000 bytes"):
        Pix2Pix.from_model(folder / "m.dlpk")
    assert "m.pth" not in bytes_read
    with pytest.raises(ValueError, match=r"m\.pth: .* more than the cap of 50000 bytes"):
        Pix2Pix.from_model(folder)
    monkeypatch.setattr(model_folder, "MAX_EMD_BYTES", 100)
    with pytest.raises(ValueError, match=r"m\.dlpk: member 'm\.emd' declares .* more than the cap of 100 bytes"):
        Pix2Pix.from_model(folder / "m.dlpk")


def lie_about_size(package: Path, name: str, size: int) -> None:
    """Make the central directory of ``package`` understate the size of the member ``name``."""
    raw = bytearray(package.read_bytes())
    at = 0
    while True:
        at = raw.index(b"PK\x01\x02", at)
        name_length = int.from_bytes(raw[at + 28:at + 30], "little")
        if raw[at + 46:at + 46 + name_length] == name.encode():
            break
        at += 4
    raw[at + 24:at + 28] = size.to_bytes(4, "little")  # uncompressed size
    package.write_bytes(bytes(raw))


def test_member_whose_header_lies_about_its_size_is_stopped(saved, tmp_path, monkeypatch, bytes_read):
    folder = copy_model(saved, tmp_path)
    package = make_package(tmp_path / "lying.dlpk", [("m.emd", (folder / "m.emd").read_bytes()),
                                                     ("m.pth", (folder / "m.pth").read_bytes())])
    lie_about_size(package, "m.pth", 1000)
    cap = 20_000
    assert (folder / "m.pth").stat().st_size > 5 * cap
    monkeypatch.setattr(model_folder, "MAX_WEIGHTS_BYTES", cap)
    # CPython's zipfile stops at the declared size and then fails the CRC check; the next test
    # covers a reader that would go on
    with pytest.raises(ValueError, match=r"lying\.dlpk: member 'm\.pth': corrupt or unreadable"):
        Pix2Pix.from_model(package)
    assert bytes_read.get("m.pth", 0) <= cap


def test_reading_stops_at_the_cap_whatever_the_header_says():
    """Where a zip reader yields more than the declared size, reading stops once past the cap."""

    class Stream(io.BytesIO):
        served = 0

        def read(self, n=-1):
            chunk = super().read(n)
            Stream.served += len(chunk)
            return chunk

    class LyingArchive:
        stream = Stream(bytes(10 * 2**20))

        def getinfo(self, name):
            info = zipfile.ZipInfo(name)
            info.file_size = 10  # the lie
            return info

        def open(self, info):
            return self.stream

    archive = LyingArchive()
    with pytest.raises(ValueError, match=r"x\.dlpk: member 'm\.pth': holds more than the cap of 65536 bytes"):
        model_folder.read_package_member(archive, "x.dlpk", "m.pth", cap=65536)
    assert Stream.served == 65537


def test_compressed_records_inside_the_weights_are_refused(saved, tmp_path):
    """torch.load inflates deflated records: a small weights file could unpack to terabytes."""
    folder = copy_model(saved, tmp_path)
    weights = folder / "m.pth"
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(weights) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    torch.load(deflated, weights_only=True)  # torch itself would read it
    shutil.move(deflated, weights)
    with pytest.raises(ValueError, match=r"m\.pth: corrupt or unreadable weights file \(record .* is compressed"):
        Pix2Pix.from_model(folder)


# --- ModelFile stays inside the package or folder -------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "parent", "subfolder", "backslash", "symlink"])
def test_model_file_outside_the_folder_is_refused(saved, tmp_path, kind):
    folder = copy_model(saved, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(folder / "m.pth", elsewhere / "w.pth")  # valid weights: loading them would succeed
    name = {"absolute": str(elsewhere / "w.pth"), "parent": "../elsewhere/w.pth", "subfolder": "sub/w.pth",
            "backslash": "sub\\w.pth", "symlink": "link.pth"}[kind]
    if kind in ("subfolder", "backslash"):
        (folder / "sub").mkdir()
        shutil.copy(folder / "m.pth", folder / name.replace("\\", "/"))
        if kind == "backslash":
            shutil.copy(folder / "m.pth", folder / name)  # a file named so, on POSIX
    if kind == "symlink":
        os.symlink(elsewhere / "w.pth", folder / name)
    edit_emd(folder / "m.emd", lambda emd: emd.update(ModelFile=name))
    expected = "is a symbolic link" if kind == "symlink" else "is not a plain file name"
    with pytest.raises(ValueError, match=rf"m\.emd: ModelFile {re.escape(repr(name))}.*{expected}"):
        Pix2Pix.from_model(folder)


@pytest.mark.parametrize("kind", ["absolute", "parent", "subfolder"])
def test_model_file_outside_the_package_is_refused(saved, tmp_path, kind):
    folder = copy_model(saved, tmp_path)
    outside = tmp_path / "w.pth"
    shutil.copy(folder / "m.pth", outside)
    name = {"absolute": str(outside), "parent": "../w.pth", "subfolder": "sub/w.pth"}[kind]
    edit_emd(folder / "m.emd", lambda emd: emd.update(ModelFile=name))
    weights = (folder / "m.pth").read_bytes()
    package = make_package(tmp_path / "p.dlpk", [("m.emd", (folder / "m.emd").read_bytes()),
                                                 ("sub/w.pth", weights), ("../w.pth", weights)])
    with pytest.raises(ValueError, match=rf"p\.dlpk: member 'm\.emd': ModelFile {re.escape(repr(name))} is not a plain"):
        Pix2Pix.from_model(package)


def test_symlink_member_and_emd_below_the_root_are_refused(saved, tmp_path):
    folder = copy_model(saved, tmp_path)
    link = zipfile.ZipInfo("m.pth")
    link.create_system = 3  # Unix: the mode is in the high 16 bits
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    package = make_package(tmp_path / "link.dlpk", [("m.emd", (folder / "m.emd").read_bytes()),
                                                    (link, str(folder / "m.pth"))])
    with pytest.raises(ValueError, match=r"link\.dlpk: member 'm\.pth' is a symbolic link"):
        Pix2Pix.from_model(package)
    nested = make_package(tmp_path / "nested.dlpk", [("m/m.emd", (folder / "m.emd").read_bytes()),
                                                     ("m/m.pth", (folder / "m.pth").read_bytes())])
    with pytest.raises(ValueError, match=r"nested\.dlpk: the package holds no \.emd file \(found m/m\.emd; "
                                         r"it must be at the package's root\)"):
        Pix2Pix.from_model(nested)


# --- the .emd is checked key by key ------------------------------------------------------------


def _drop(*keys):
    def edit(emd):
        target = emd
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return edit


def _set(value, *keys):
    def edit(emd):
        target = emd
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


BAD_EMDS = {
    "no Toolkit": (_drop("Toolkit"), r"Toolkit is missing; expected an object"),
    "config a list": (_set([1, 2], "Toolkit", "config"),
                      r"Toolkit\.config is \[1, 2\] \(a list\); expected an object"),
    "ngf a string": (_set("8", "Toolkit", "config", "ngf"),
                     r"Toolkit\.config\.ngf is '8' \(a string\); expected an integer >= 1"),
    "ndf missing": (_drop("Toolkit", "config", "ndf"), r"Toolkit\.config\.ndf is missing; expected an integer >= 1"),
    "norm unknown": (_set("group", "Toolkit", "config", "norm"), r"Toolkit\.config\.norm is 'group'"),
    "depth too deep": (_set(1000, "Toolkit", "config", "depth"), r"Toolkit\.config\.depth is 1000 .*from 2 to 8"),
    "std not numbers": (_set(["a"] * 4, "Toolkit", "input_norm", "std"),
                        r"Toolkit\.input_norm\.std is .*; expected a list of finite numbers"),
    "band count": (_set([0.0] * 3, "Toolkit", "input_norm", "min"),
                   r"Toolkit\.input_norm\.min lists 3 band\(s\); expected Toolkit\.config\.n_bands_in \(4\)"),
    "history an object": (_set({"epoch": 0}, "Toolkit", "history"), r"Toolkit\.history is .*a list of objects"),
    "not Pix2Pix": (_set("ObjectDetection", "ModelType"), r"ModelType is 'ObjectDetection' .*expected 'Pix2Pix'"),
}


@pytest.mark.parametrize("case", list(BAD_EMDS))
def test_bad_emd_names_the_file_and_the_key(saved, tmp_path, case):
    edit, message = BAD_EMDS[case]
    folder = copy_model(saved, tmp_path)
    edit_emd(folder / "m.emd", edit)
    with pytest.raises(ValueError, match=r"m\.emd: " + message):
        Pix2Pix.from_model(folder / "m.emd")
    package = make_package(tmp_path / "p.dlpk", [("m.emd", (folder / "m.emd").read_bytes()),
                                                 ("m.pth", (folder / "m.pth").read_bytes())])
    with pytest.raises(ValueError, match=r"p\.dlpk: member 'm\.emd': " + message):
        Pix2Pix.from_model(package)


def test_emd_that_is_not_an_object(saved, tmp_path):
    folder = copy_model(saved, tmp_path)
    (folder / "m.emd").write_text("[]")
    with pytest.raises(ValueError, match=r"m\.emd: the \.emd is \[\] \(a list\); expected a JSON object"):
        Pix2Pix.from_model(folder)


# --- network sizes against the weights, before building ---------------------------------------------


@pytest.mark.parametrize("key, value, tensor", [("ngf", 100_000, r"generator\.model\.model\.0\.weight: "
                                                                 r"expected shape \(100000, 4, 4, 4\), found \(8, 4, 4, 4\)"),
                                                ("ndf", 100_000, r"discriminator\.model\.0\.weight: expected shape \(100000, "),
                                                ("depth", 3, r"generator\.")])
def test_config_that_the_weights_do_not_fit_is_refused_fast(saved, tmp_path, key, value, tensor):
    folder = copy_model(saved, tmp_path)
    edit_emd(folder / "m.emd", _set(value, "Toolkit", "config", key))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"m\.emd: the weights do not fit the networks of the \.emd's config .*"
                                         + tensor):
        Pix2Pix.from_model(folder)
    assert time.perf_counter() - start < 2.0


def test_backbone_networks_are_checked_on_the_meta_device(data):
    model = Pix2Pix(data, backbone="resnet18", ndf=8)
    weights = {"generator": model.generator.state_dict(), "discriminator": model.discriminator.state_dict()}
    check_weights_fit(model.config, weights, "x.emd")
    with pytest.raises(ValueError, match=r"x\.emd: the weights do not fit .*resnet50 U-Net.*generator\.unet\."):
        check_weights_fit(dict(model.config, backbone="resnet50"), weights, "x.emd")
