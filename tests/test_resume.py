"""Checkpoints and resumed fits: an interrupted fit resumed from its checkpoint ends as the
uninterrupted fit does (weights, early stopping), and fits sharing a folder keep their own files.

CPU-sized: 16 Rotterdam pairs (conftest's ``rotterdam_pairs``) cropped to 32 px, ngf/ndf 8, 1-4
epochs, one thread: about 5 s.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from toolkit import Pix2Pix, prepare_data
from toolkit.models.checkpoint import load_checkpoint


def load(folder):
    """The 16 pairs cropped to 32 px at random (more random numbers to get right, less work)."""
    return prepare_data(folder, batch_size=8, val_split_pct=0.2, seed=0, chip_size=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Networks this small gain nothing from a second thread, and on a busy 2-core machine the
    two wait on each other: one thread is 2-5 times faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(rotterdam_pairs):
    data = load(rotterdam_pairs)
    assert data.n_inp == 1  # its once-only extra draw done (see below): every fit starts alike
    return data


def seeded(data, seed: int = 0) -> None:
    """Set the random numbers a fit draws: torch's (init, augmentation, dropout) and the training
    loader's shuffling (its own ``random.Random``; the loaders are shared between the tests)."""
    torch.manual_seed(seed)
    data.train.rng = random.Random(seed)


def model(data, folder, seed: int = 0) -> Pix2Pix:
    seeded(data, seed)
    return Pix2Pix(data, ngf=8, ndf=8, working_dir=folder)


def interrupted(m: Pix2Pix, epochs: int, at: int, **fit_kwargs) -> None:
    """``m.fit(epochs)`` stopped by a KeyboardInterrupt after epoch ``at`` (and its checkpoint)."""
    m.learn.add_cb(Interrupt(at))
    with pytest.raises(KeyboardInterrupt):
        m.fit(epochs, **fit_kwargs)
    m.learn.remove_cbs(Interrupt)


class Interrupt(Callback):
    order = 90  # after the checkpoint of the epoch

    def __init__(self, at: int) -> None:
        self.at = at

    def after_epoch(self) -> None:
        if self.epoch == self.at:
            raise KeyboardInterrupt


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.trained = []

    def before_train(self) -> None:
        self.trained.append(self.epoch)


class ScriptedLoss(Callback):
    """Replaces the recorded ``valid_loss`` by ``losses[epoch]``: early stopping made predictable."""

    order = 55  # after the Recorder (50), before History (61) and the checkpoint (65)

    def __init__(self, losses) -> None:
        self.losses = losses

    def after_epoch(self) -> None:
        if len(self.recorder.values[-1]):  # empty for the epochs fastai skips when resuming
            idx = list(self.recorder.metric_names[1:]).index("valid_loss")
            self.recorder.values[-1][idx] = self.losses[self.epoch]


class CpuScalers(Callback):
    """Gradient scalers as fp16 training has them (``learn.scaler``, ``GANTrainer.d_scaler``), on
    the CPU, made after the callbacks that make them (MixedPrecision 10, GANTrainer 20)."""

    order = 21

    def __init__(self, scale: float | None = None) -> None:
        self.scale = scale
        self.seen: list[tuple[float, float]] = []

    def before_fit(self) -> None:
        kwargs = {"init_scale": self.scale} if self.scale else {}
        self.learn.scaler = torch.amp.GradScaler("cpu", **kwargs)
        self.learn.gan_trainer.d_scaler = torch.amp.GradScaler("cpu", **kwargs)

    def before_train(self) -> None:
        self.seen.append((self.learn.scaler.get_scale(), self.learn.gan_trainer.d_scaler.get_scale()))


def weights(m: Pix2Pix) -> dict[str, torch.Tensor]:
    return {f"G.{k}": v.clone() for k, v in m.generator.state_dict().items()} | {
        f"D.{k}": v.clone() for k, v in m.discriminator.state_dict().items()}


def saved_weights(state: dict) -> dict[str, torch.Tensor]:
    return {f"G.{k}": v for k, v in state["generator"].items()} | {
        f"D.{k}": v for k, v in state["discriminator"].items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_plus_two_epochs_equal_four(rotterdam_pairs, tmp_path):
    # Each run with new loaders, as in a new session: a fastai loader's first batch draws random
    # numbers once more (TfmdDL._one_pass), and the resumed fit must not be thrown off by it.
    straight = model(load(rotterdam_pairs), tmp_path / "straight")
    straight.fit(4, lr=1e-3)
    last = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"pix2pix-{straight.fit_id}_last.pth")

    first = model(load(rotterdam_pairs), tmp_path / "resumed")
    interrupted(first, 4, at=1, lr=1e-3)
    data = load(rotterdam_pairs)
    seeded(data, 123)  # a new session draws other random numbers: the checkpoint's must come back
    resumed = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path / "resumed")
    resumed.fit(4, resume=True)
    again = load_checkpoint(tmp_path / "resumed" / "checkpoints" / f"pix2pix-{resumed.fit_id}_last.pth")

    # bit for bit: the last epoch's G and D, and what the fit left (the best epoch's weights)
    assert_same(saved_weights(last), saved_weights(again))
    assert_same(weights(straight), weights(resumed))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    assert resumed.history == straight.history  # the smoothed train_loss too
    assert last["completed"] and again["completed"]


def test_resumed_early_stopping_stops_where_a_straight_fit_stops(data, tmp_path):
    # Best 4.0 at epoch 1, then 2 epochs without improvement: with patience 2 a straight fit
    # trains epochs 0-3 and stops. Interrupted after epoch 2 (best 4.0 at epoch 1, waited 1), the
    # resumed fit must train epoch 3 only: not crash (fastai's EarlyStoppingCallback reads the
    # empty Recorder rows of the skipped epochs), and not start waiting anew (it would train on).
    losses = [5.0, 4.0, 4.5, 4.6, 3.0, 2.0]
    first = model(data, tmp_path)
    first.learn.add_cb(ScriptedLoss(losses))
    interrupted(first, 6, at=2, lr=1e-3, early_stopping=2)
    resumed = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path)
    resumed.learn.add_cbs([ScriptedLoss(losses), counter := CountEpochs()])
    resumed.fit(6, resume=True, early_stopping=2)
    assert counter.trained == [3]
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    folder = tmp_path / "checkpoints"
    last = load_checkpoint(folder / f"pix2pix-{resumed.fit_id}_last.pth")
    loop = (last["epoch"], last["best"], last["best_epoch"], last["wait"], last["completed"])
    assert loop == (3, 4.0, 1, 2, True)
    best = load_checkpoint(folder / f"pix2pix-{resumed.fit_id}_best.pth")
    assert best["epoch"] == 1
    assert_same(weights(resumed), saved_weights(best))  # the best epoch's weights are restored


def test_checkpoint_holds_random_states_and_scalers(data, tmp_path):
    first = model(data, tmp_path)
    first.learn.add_cb(CpuScalers(scale=512.0))
    interrupted(first, 2, at=0, lr=1e-3)
    first.learn.remove_cbs(CpuScalers)
    path = tmp_path / "checkpoints" / f"pix2pix-{first.fit_id}_last.pth"
    state = torch.load(path, weights_only=True)
    assert {"generator", "discriminator", "g_opt", "d_opt", "fit", "fit_id", "epoch", "completed",
            "saved_at", "best", "best_epoch", "wait", "scalers", "rng", "smooth_loss"} <= state.keys()
    assert state["completed"] is False and state["fit_id"] == first.fit_id
    assert state["scalers"]["scaler"]["scale"] == 512.0 and state["scalers"]["d_scaler"]["scale"] == 512.0
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python", "train_dl"}

    # what was saved puts the random states back exactly, after the weights_only load
    from toolkit.models.checkpoint import rng_state, set_rng_state

    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    data.train.rng = random.Random(1)
    set_rng_state(state["rng"], data.train)
    back, saved = rng_state(data.train), state["rng"]
    assert torch.equal(back["torch"], saved["torch"])
    assert torch.equal(back["numpy"]["keys"], saved["numpy"]["keys"])
    assert back["numpy"]["pos"] == saved["numpy"]["pos"]
    for key in ("python", "train_dl"):
        assert back[key]["internal"].tolist() == saved[key]["internal"].tolist()

    # and so do the scalers, into the ones the resumed fit makes anew
    resumed = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path)
    resumed.learn.add_cb(probe := CpuScalers())
    resumed.fit(2, resume=True)
    assert probe.seen == [(512.0, 512.0)]


def test_a_new_fit_does_not_delete_another_fits_files(data, tmp_path):
    first = model(data, tmp_path)
    interrupted(first, 2, at=0, lr=1e-3)
    folder = tmp_path / "checkpoints"
    files = sorted(folder.glob(f"pix2pix-{first.fit_id}_*.pth"))
    assert [p.name for p in files] == [f"pix2pix-{first.fit_id}_best.pth", f"pix2pix-{first.fit_id}_last.pth"]
    before = {p.name: digest(p) for p in files}

    first.fit(1, lr=1e-3)  # a new fit, by the same model, in the same folder
    assert first.fit_id not in before and {p.name: digest(p) for p in files} == before


def test_two_fits_in_one_folder_keep_separate_files(data, tmp_path):
    a, b = model(data, tmp_path, seed=1), model(data, tmp_path, seed=2)
    a.fit(1, lr=1e-3, checkpoint_name="ms2pan")
    b.fit(1, lr=1e-3, checkpoint_name="ms2pan")
    assert a.fit_id != b.fit_id
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"ms2pan-{m.fit_id}_{kind}.pth" for m in (a, b) for kind in ("best", "last"))
    for m in (a, b):  # one epoch: the last is the best, and the model's weights
        state = load_checkpoint(folder / f"ms2pan-{m.fit_id}_last.pth")
        assert_same(weights(m), saved_weights(state))


def test_resume_picks_the_unfinished_fit(data, tmp_path):
    fits = []
    for _ in range(3):  # three unfinished fits, saved one after the other
        fits.append(model(data, tmp_path))
        interrupted(fits[-1], 2, at=0, lr=1e-3)
    first, second, third = (m.fit_id for m in fits)

    resumed = Pix2Pix(data, ngf=8, ndf=8, working_dir=tmp_path)
    resumed.learn.add_cb(counter := CountEpochs())
    resumed.fit(2, resume=first)  # a given fit
    assert resumed.fit_id == first and counter.trained == [1]
    resumed.fit(2, resume=True)  # the unfinished fit saved last
    assert resumed.fit_id == third and counter.trained == [1, 1]
    resumed.fit(2, resume=True)  # the one left, though completed fits were saved since
    assert resumed.fit_id == second and counter.trained == [1, 1, 1]
    with pytest.raises(FileNotFoundError, match="no unfinished fit named 'pix2pix'"):
        resumed.fit(2, resume=True)
    with pytest.raises(ValueError, match="completed"):
        resumed.fit(2, resume=first)
    assert len(list((tmp_path / "checkpoints").glob("*.pth"))) == 6


def test_checkpoint_all_keeps_every_epoch_also_the_early_stopped_one(data, tmp_path):
    seeded(data)
    m = Pix2Pix(data, ngf=8, ndf=8, norm="instance", working_dir=tmp_path)  # no running statistics
    # a step too small to move float32 weights: the validation loss stays as it is after epoch 0,
    # so patience 1 stops the fit after epoch 1
    m.fit(5, lr=1e-30, one_cycle=False, checkpoint="all", early_stopping=1)
    assert [r["epoch"] for r in m.history] == [0, 1]
    kinds = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "checkpoints").glob(f"pix2pix-{m.fit_id}_*.pth"))
    assert kinds == ["best.pth", "epoch0.pth", "epoch1.pth", "last.pth"]
    assert load_checkpoint(tmp_path / "checkpoints" / f"pix2pix-{m.fit_id}_epoch1.pth")["epoch"] == 1
