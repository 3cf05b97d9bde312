"""Fault injection: the toolkit's writers killed with SIGKILL at random moments.

For ``export_training_data``, ``Pix2Pix.save``, ``Pix2Pix.predict_raster`` and ``Pix2Pix.fit``
(its checkpoints), a worker process (tests/fault_worker.py) writes the same output again and
again with ``overwrite=True`` and is killed at a random moment, as ``kill -9``, a crashed node or
a pre-empted job would. After each kill the output's name must hold the complete old content or
nothing, never a half-written one; the next run must succeed and leave no temporary
(``.<name>.<pid>-<hex>.partial*`` / ``.old``, see toolkit._fs) behind.

Delays are drawn from seeded ``random.Random`` instances, within about two operations after the
worker says READY; the worker's own output goes to ``worker-*.log`` in the test's tmp_path.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import toolkit
from toolkit import Pix2Pix, export_training_data, prepare_data
from toolkit._fs import MANIFEST
from toolkit.data.layouts import index_folder
from toolkit.export import EXPORT_KIND
from toolkit.models.model_folder import MODEL_KIND
from toolkit.raster import OUTPUT_TAG

WORKER = Path(__file__).with_name("fault_worker.py")
KILLS = 3  # random kills per writer
SPANS = 2.0  # kill within this many operations' time after READY
START_TIMEOUT = 180  # s for a worker to import torch, prepare and run its operation twice
ATLANTA_CHIPS = 49  # 900x900 px in 128 px tiles, edges trimmed


# --- the worker ---------------------------------------------------------------------------------


class Worker:
    """A fault_worker.py process: its protocol lines on a pipe, everything else in ``log``."""

    def __init__(self, op: str, config: dict, log: Path) -> None:
        self.log = log
        # the worker imports the very toolkit this test imported, whatever its cwd
        source = str(Path(toolkit.__file__).resolve().parents[1])
        env = dict(os.environ, MPLBACKEND="Agg",
                   PYTHONPATH=os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(WORKER), op, json.dumps(config)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, cwd=log.parent, env=env)
        self.buffer = b""

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # a failed test: do not leave it running
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.log.name} (last 3000 characters) ---\n{text[-3000:]}"

    def expect(self, marker: str, timeout: float) -> str:
        """Read protocol lines until one starts with ``marker``; return the rest of that line."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.decode()
                if text.split(" ", 1)[0] == marker:
                    return text[len(marker):].strip()
                if text.startswith("FINISHED"):
                    pytest.fail(f"the worker finished all its rounds before it was killed\n{self.tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {marker} from the worker within {timeout:.0f} s\n{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(timeout=30)
                    pytest.fail(f"the worker exited (status {self.proc.returncode}) before "
                                f"{marker}\n{self.tail()}")
                self.buffer += chunk

    def kill(self) -> None:
        """SIGKILL, and reap it: a zombie still counts as a running process to ``os.kill(pid, 0)``,
        which is how the toolkit tells a killed writer's temporaries from a live one's."""
        if self.proc.poll() is not None:
            pytest.fail(f"the worker ended (status {self.proc.returncode}) before it could be "
                        f"killed\n{self.tail()}")
        os.kill(self.proc.pid, signal.SIGKILL)
        status = self.proc.wait(timeout=30)
        assert status == -signal.SIGKILL, f"worker status {status}, expected SIGKILL\n{self.tail()}"


def report(kill: str, output: Path, *folders: Path) -> None:
    """Say what a kill left (shown with ``pytest -s``, and with a failure)."""
    left = [name for folder in folders for name in temporaries(folder)]
    print(f"{kill}: {output.name} {'present' if output.exists() else 'absent'}, temporaries {left or 'none'}")


def kill_at_random(op: str, config: dict, log: Path, rng: random.Random) -> float:
    """Start a worker, wait for READY, kill it a random delay later; return the delay."""
    with Worker(op, config, log) as worker:
        duration = float(worker.expect("DURATION", START_TIMEOUT))
        worker.expect("READY", 30)
        delay = rng.uniform(0.0, SPANS * duration)
        time.sleep(delay)
        worker.kill()
    return delay


def kill_while_held(op: str, config: dict, log: Path, rng: random.Random) -> str:
    """Start a worker with a ``hold``, kill it at a random moment of the held pause; return the
    path it was writing."""
    with Worker(op, config, log) as worker:
        worker.expect("READY", START_TIMEOUT)
        duration = float(config.get("hold_seconds", 2.0))
        where = worker.expect("WRITING", 60)
        time.sleep(rng.uniform(0.0, 0.5 * duration))
        worker.kill()
    return where


# --- checks -------------------------------------------------------------------------------------


def temporaries(folder: Path) -> list[str]:
    """What a writer of toolkit._fs may leave beside its output: ``.<name>.<pid>-<hex>.partial*``
    and ``.<name>.<pid>-<hex>.old`` (pathlib's glob matches names starting with a dot)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if fnmatch.fnmatch(p.name, ".*.partial*") or fnmatch.fnmatch(p.name, ".*.old*"))


def assert_no_temporaries(*folders: Path) -> None:
    for folder in folders:
        left = temporaries(folder)
        assert not left, f"temporaries left in {folder}: {left}"


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check_manifest(folder: Path, kind: str) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["kind"] == kind
    on_disk = set(files_in(folder)) - {MANIFEST}
    assert on_disk == set(manifest["files"]), "files on disk differ from the manifest's"


def check_export(folder: Path, reference: dict[str, bytes]) -> None:
    """A complete export: the layout indexes with every chip, the manifest lists every file,
    and every file is byte for byte the reference export's (the export is deterministic)."""
    index = index_folder(folder)
    assert len(index.pairs) == ATLANTA_CHIPS
    check_manifest(folder, EXPORT_KIND)
    written = files_in(folder)
    assert sorted(written) == sorted(reference)
    different = [name for name in written if written[name] != reference[name]]
    assert not different, f"files that differ from a complete export: {different[:10]}"


def check_saved_model(folder: Path) -> None:
    """A complete saved model: it loads from the folder and from its .dlpk; manifest complete."""
    check_manifest(folder, MODEL_KIND)
    for source in (folder, folder / f"{folder.name}.dlpk"):
        model = Pix2Pix.from_model(source)
        assert (model.config["ngf"], model.config["n_bands_in"], model.config["n_bands_out"]) == (8, 4, 1)


def check_prediction(path: Path, reference: np.ndarray) -> None:
    """A complete prediction: every pixel reads, it carries the toolkit's tag, and its values are
    the model's (the model is deterministic; a tolerance for thread-count rounding)."""
    with rasterio.open(path) as src:
        assert src.tags().get(OUTPUT_TAG) == "predict_raster"
        data = src.read()  # every block: a truncated file fails here
    assert data.shape == reference.shape
    np.testing.assert_allclose(data, reference, rtol=1e-4, atol=1e-4, equal_nan=True)


def check_checkpoints(folder: Path) -> list[Path]:
    """Every checkpoint (``*.pth``, not the hidden temporaries) loads with weights_only=True."""
    paths = sorted(p for p in folder.glob("*.pth") if not p.name.startswith("."))
    for path in paths:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - name the file
            pytest.fail(f"{path.name}: not a loadable checkpoint ({err})")
        assert "generator" in state, path.name
    return paths


# --- shared inputs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def atlanta_reference(atlanta, tmp_path_factory) -> dict[str, bytes]:
    """The files of a complete export of Atlanta (what every export below must equal)."""
    out = tmp_path_factory.mktemp("faults") / "reference_chips"
    summary = export_training_data(atlanta["image"], out, in_class_data=atlanta["footprints"],
                                   tile_size=128, progress=False)
    assert summary.num_chips == ATLANTA_CHIPS
    return files_in(out)


@pytest.fixture(scope="module")
def ms2pan(rotterdam, tmp_path_factory) -> Path:
    """Rotterdam multispectral (4 bands) -> panchromatic: 16 pairs of 64 px."""
    out = tmp_path_factory.mktemp("faults") / "ms2pan"
    export_training_data(rotterdam["multispectral_1"], out,
                         additional_input_raster=rotterdam["panchromatic_1"], tile_size=64, progress=False)
    return out


@pytest.fixture(scope="module")
def ms2pan_data(ms2pan):
    return prepare_data(ms2pan, batch_size=8, seed=0, num_workers=0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The workers use one thread too: on 2 shared cores a second one only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(ms2pan_data, tmp_path_factory) -> Path:
    """An (untrained) ngf=8 model saved once: what predict_raster runs."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("faults")
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8, working_dir=folder / "work")
    model.save(folder / "tiny", compute_metrics=False)
    return folder / "tiny"


# --- random kills -------------------------------------------------------------------------------


def test_killed_export_leaves_old_chips_or_none(atlanta, atlanta_reference, tmp_path):
    out = tmp_path / "out" / "atlanta_chips"
    rng = random.Random("test_faults: export")
    for kill in range(KILLS):
        delay = kill_at_random("export", {"out": str(out)}, tmp_path / f"worker-export-{kill}.log", rng)
        report(f"kill {kill} after {delay:.3f} s", out, out.parent)
        if out.exists():  # else: killed between moving the old folder aside and the new in
            check_export(out, atlanta_reference)
        summary = export_training_data(atlanta["image"], out, in_class_data=atlanta["footprints"],
                                       tile_size=128, overwrite=True, progress=False)
        assert summary.num_chips == ATLANTA_CHIPS
        check_export(out, atlanta_reference)
        assert_no_temporaries(out.parent)
        assert [p.name for p in out.parent.iterdir()] == [out.name], f"kill {kill} after {delay:.3f} s"


def test_killed_save_leaves_old_model_or_none(ms2pan, ms2pan_data, tmp_path):
    out = tmp_path / "out" / "ms2pan_model"
    rng = random.Random("test_faults: save")
    config = {"out": str(out), "data": str(ms2pan), "working_dir": str(tmp_path / "work")}
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8, working_dir=tmp_path / "work")
    for kill in range(KILLS):
        delay = kill_at_random("save", config, tmp_path / f"worker-save-{kill}.log", rng)
        report(f"kill {kill} after {delay:.3f} s", out, out.parent)
        if out.exists():
            check_saved_model(out)
        emd = model.save(out, overwrite=True)
        assert emd == out / f"{out.name}.emd"
        check_saved_model(out)
        assert_no_temporaries(out.parent)
        assert [p.name for p in out.parent.iterdir()] == [out.name], f"kill {kill} after {delay:.3f} s"


def test_killed_predict_raster_leaves_old_prediction_or_none(rotterdam, tiny_model, tmp_path):
    out = tmp_path / "out" / "prediction.tif"
    scene = rotterdam["multispectral_1"]
    model = Pix2Pix.from_model(tiny_model)
    reference_path = model.predict_raster(scene, tmp_path / "reference.tif", progress=False)
    with rasterio.open(reference_path) as src:
        reference = src.read()
    rng = random.Random("test_faults: predict_raster")
    config = {"out": str(out), "model": str(tiny_model), "in_raster": str(scene)}
    for kill in range(KILLS):
        delay = kill_at_random("predict", config, tmp_path / f"worker-predict-{kill}.log", rng)
        report(f"kill {kill} after {delay:.3f} s", out, out.parent)
        if out.exists():
            check_prediction(out, reference)
        model.predict_raster(scene, out, overwrite=True, progress=False)
        check_prediction(out, reference)
        assert_no_temporaries(out.parent)
        assert [p.name for p in out.parent.iterdir()] == [out.name], f"kill {kill} after {delay:.3f} s"


def test_killed_fit_leaves_loadable_checkpoints(ms2pan, ms2pan_data, tmp_path):
    working_dir = tmp_path / "work"
    checkpoints = working_dir / "checkpoints"
    rng = random.Random("test_faults: fit")
    config = {"out": str(checkpoints), "data": str(ms2pan), "working_dir": str(working_dir)}
    for kill in range(KILLS):
        before = set(check_checkpoints(checkpoints)) if checkpoints.is_dir() else set()
        delay = kill_at_random("fit", config, tmp_path / f"worker-fit-{kill}.log", rng)
        report(f"kill {kill} after {delay:.3f} s", checkpoints, working_dir, checkpoints)
        after = set(check_checkpoints(checkpoints))
        # complete checkpoints (earlier fits', and the worker's two fits before READY) stay
        assert before < after, f"kill {kill} after {delay:.3f} s: lost {sorted(before - after)}"
        model = Pix2Pix(ms2pan_data, ngf=8, ndf=8, working_dir=working_dir)
        with model.learn.no_bar(), model.learn.no_logging():
            model.fit(1, lr=1e-3, checkpoint=True)
        paths = check_checkpoints(checkpoints)
        assert any(model.fit_id in p.name for p in paths)
        assert_no_temporaries(working_dir, checkpoints)


# --- kills at the narrowest moments ---------------------------------------------------------------


def test_export_killed_between_moving_old_out_and_new_in(atlanta, atlanta_reference, tmp_path):
    """The one moment of atomic_folder when the final name holds nothing: the old export moved
    aside, the new one not yet moved in. Still never a half-written folder there, and the next
    export cleans up."""
    out = tmp_path / "out" / "atlanta_chips"
    config = {"out": str(out), "hold": "replace", "hold_seconds": 2.0}
    where = kill_while_held("export", config, tmp_path / "worker-export-held.log",
                            random.Random("held export"))
    assert Path(where).parent == out.parent
    report("kill while held", out, out.parent)
    if out.exists():
        check_export(out, atlanta_reference)
    export_training_data(atlanta["image"], out, in_class_data=atlanta["footprints"], tile_size=128,
                         overwrite=True, progress=False)
    check_export(out, atlanta_reference)
    assert_no_temporaries(out.parent)
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_fit_killed_while_moving_a_checkpoint_into_place(ms2pan, ms2pan_data, tmp_path):
    """Killed when a checkpoint's temporary file is complete but not yet renamed: the checkpoints
    that exist load, and the next fit in the same working folder leaves no temporary behind."""
    working_dir = tmp_path / "work"
    checkpoints = working_dir / "checkpoints"
    config = {"out": str(checkpoints), "data": str(ms2pan), "working_dir": str(working_dir),
              "hold": "checkpoint", "hold_seconds": 2.0}
    where = kill_while_held("fit", config, tmp_path / "worker-fit-held.log", random.Random("held fit"))
    assert Path(where).parent == checkpoints
    report("kill while held", checkpoints, working_dir, checkpoints)
    check_checkpoints(checkpoints)
    model = Pix2Pix(ms2pan_data, ngf=8, ndf=8, working_dir=working_dir)
    with model.learn.no_bar(), model.learn.no_logging():
        model.fit(1, lr=1e-3, checkpoint=True)
    check_checkpoints(checkpoints)
    assert_no_temporaries(working_dir, checkpoints)
