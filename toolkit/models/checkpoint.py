"""Checkpoints of a pix2pix fit, written atomically, from which an interrupted fit resumes exactly.

Each fit has an id (:func:`new_fit_id`) and its own files in the checkpoint folder::

    <name>-<fit id>_last.pth    after every epoch: what resuming needs
    <name>-<fit id>_best.pth    the epoch that was best by the monitored value

A checkpoint holds the model's state (both networks, both optimizers, history; given by the model)
and the state of the training loop: the epoch, the monitored value's best and its epoch, the
epochs waited by early stopping, the mixed-precision gradient scalers, the random-number states
(torch CPU and CUDA, numpy, ``random``, the training DataLoader's shuffling) and whether the fit
completed. Everything is plain tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it.

Layer: training.
"""

from __future__ import annotations

import random
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from toolkit._fastai import quiet_import
from toolkit._fs import atomic_file, remove_stale_in

with quiet_import():
    from fastai.callback.core import Callback, CancelFitException

__all__ = ["Checkpoint", "checkpoint_path", "find_resumable", "list_fits", "load_checkpoint",
           "mark_unsaved", "monitor_comparison", "new_fit_id", "plain_state", "rng_state", "set_rng_state"]

FIT_ID = r"\d{8}T\d{6}Z-[0-9a-f]{4}"


def monitor_comparison(monitor: str):
    """Lower is better for losses and errors (``l1``, CycleGAN's ``cycle`` errors), higher for
    other metrics (as fastai's trackers)."""
    lower = "loss" in monitor or "error" in monitor or monitor == "l1" or monitor.startswith("cycle")
    return np.less if lower else np.greater


def plain_state(obj):
    """``obj`` with numpy arrays turned into tensors, numpy scalars into Python numbers, tuples and
    fastcore lists into lists, so that ``torch.load(weights_only=True)`` can read it back; tensors
    are kept. Whoever restores converts back where the type matters (:func:`set_rng_state`)."""
    if torch.is_tensor(obj):
        return obj
    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "L":
        return [plain_state(v) for v in obj]
    if isinstance(obj, np.ndarray):
        # torch has no uint16/32/64 arithmetic; int64 holds all of their values.
        wide_unsigned = obj.dtype.kind == "u" and obj.dtype.itemsize > 1
        return torch.from_numpy(np.array(obj, dtype=np.int64 if wide_unsigned else obj.dtype))
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# --- random-number states ------------------------------------------------------------------------


def rng_state(train_dl=None) -> dict:
    """The random-number states a training epoch draws from, as plain tensors and numbers.

    Args:
        train_dl: the training DataLoader; fastai's keep their own ``random.Random`` (``rng``) for
            shuffling.

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor per device], "numpy": {...}, "python": {...},
        "train_dl": {...}}`` (``cuda`` empty while CUDA is not initialised; ``train_dl`` only
        when given and it has an ``rng``).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        # An uninitialised CUDA has drawn nothing (and a new session starts it alike): not
        # initialised here just to read it.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _random_state(random.getstate()),
    }
    if train_dl is not None and isinstance(getattr(train_dl, "rng", None), random.Random):
        state["train_dl"] = _random_state(train_dl.rng.getstate())
    return state


def set_rng_state(state: dict, train_dl=None) -> None:
    """Put back the states :func:`rng_state` returned (after a round trip through
    :func:`plain_state` and ``torch.load``). CUDA states are set for the devices present, up to
    as many as were saved."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["gauss"])))
    random.setstate(_random_tuple(state["python"]))
    if train_dl is not None and "train_dl" in state:
        # fastai replaces ``rng`` at every epoch (``randomize``), so set a new one, not the old.
        rng = random.Random()
        rng.setstate(_random_tuple(state["train_dl"]))
        train_dl.rng = rng


def _random_state(state: tuple) -> dict:
    version, internal, gauss_next = state  # internal: 625 ints below 2**32
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next}


def _random_tuple(state: dict) -> tuple:
    return (int(state["version"]), tuple(int(v) for v in state["internal"].tolist()),
            state["gauss_next"])


# --- files ---------------------------------------------------------------------------------------


def new_fit_id(folder: str | Path | None = None, name: str | None = None) -> str:
    """A new fit's id: its UTC start time and 4 random hex digits, e.g. ``20250314T093012Z-7f3a``;
    with ``folder`` and ``name``, one that no checkpoint there has.

    The hex digits come from the OS (``secrets``), not from ``random``: starting a fit must not
    move the random-number states that a resumed fit reproduces."""
    while True:
        fit_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
        if folder is None or not any(checkpoint_path(folder, name, fit_id, kind).exists()
                                     for kind in ("last", "best")):
            return fit_id


def checkpoint_path(folder: str | Path, name: str, fit_id: str, kind: str = "last") -> Path:
    """``<folder>/<name>-<fit_id>_<kind>.pth``; ``kind`` is ``"last"`` or ``"best"``."""
    return Path(folder) / f"{name}-{fit_id}_{kind}.pth"


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """Read a checkpoint with ``weights_only=True`` onto the CPU; ``FileNotFoundError`` when there
    is none, ``ValueError`` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; run fit() with "
                                "checkpoint=True first.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err}).") from err


def list_fits(folder: str | Path, name: str) -> list[dict]:
    """The fits with checkpoints named ``name`` in ``folder``, oldest first by the time their
    last epoch was saved.

    Returns:
        one dict per fit: ``fit_id``, ``path`` (its ``_last.pth``), ``epoch`` (last saved, from 0),
        ``epochs`` (of the fit), ``completed``, ``unsaved`` (completed, but saving the model
        failed: :func:`mark_unsaved`) and ``saved_at`` (seconds since the epoch; the
        file's mtime for a file that does not say). Unreadable files are left out.
    """
    pattern = re.compile(re.escape(name) + f"-({FIT_ID})_last\\.pth")
    fits = []
    for path in Path(folder).glob(f"{name}-*_last.pth") if Path(folder).is_dir() else ():
        match = pattern.fullmatch(path.name)
        if not match:
            continue  # another name that starts with this one, e.g. "<name>-v2"
        try:
            # mmap: only a few small entries are read, not the weights
            state = load_checkpoint(path, mmap=True)
        except (OSError, ValueError):
            continue
        fits.append({"fit_id": match.group(1), "path": path, "epoch": int(state.get("epoch", -1)),
                     "epochs": int(state.get("fit", {}).get("epochs", 0)),
                     "completed": bool(state.get("completed", False)),
                     "unsaved": bool(state.get("unsaved", False)),
                     "saved_at": float(state.get("saved_at") or path.stat().st_mtime)})
        del state  # release the mapping before the file can be replaced
    return sorted(fits, key=lambda f: (f["saved_at"], f["fit_id"]))


def find_resumable(folder: str | Path, name: str, fit_id: str | None = None) -> Path:
    """The ``_last.pth`` of the fit to resume: ``fit_id``'s, or else the unfinished fit named
    ``name`` whose last epoch was saved most recently; a completed fit whose model could not be
    saved (:func:`mark_unsaved`) counts as unfinished. Raises ``FileNotFoundError`` when there
    is none, ``ValueError`` when ``fit_id``'s fit completed."""
    fits = list_fits(folder, name)
    if fit_id is not None:
        chosen = [f for f in fits if f["fit_id"] == fit_id]
        if not chosen:
            known = ", ".join(f["fit_id"] for f in fits) or "none"
            raise FileNotFoundError(f"{checkpoint_path(folder, name, fit_id)}: no checkpoint of fit "
                                    f"{fit_id!r} named {name!r} (fits there: {known}).")
        if chosen[0]["completed"] and not chosen[0]["unsaved"]:
            raise ValueError(f"fit {fit_id!r} completed ({chosen[0]['epoch'] + 1} epochs); there is "
                             "nothing to resume.")
        return chosen[0]["path"]
    unfinished = [f for f in fits if not f["completed"] or f["unsaved"]]
    if not unfinished:
        done = f" ({len(fits)} completed)" if fits else ""
        raise FileNotFoundError(f"{Path(folder)}: no unfinished fit named {name!r} to resume{done}; "
                                "run fit() with checkpoint=True first.")
    return unfinished[-1]["path"]


def mark_unsaved(path: str | Path, unsaved: bool = True) -> None:
    """Set whether a completed fit's ``_last.pth`` still waits for its model to be saved
    (``fit(keep_until_saved=True)`` writes it so; ``save`` clears it): while it does, resuming
    the fit gives the trained model back without training again."""
    path = Path(path)
    state = load_checkpoint(path)
    if bool(state.get("unsaved", False)) == unsaved:
        return
    state["unsaved"] = unsaved
    Checkpoint._save(state, path)


# --- the callback --------------------------------------------------------------------------------


class Checkpoint(Callback):
    """Tracks the best epoch by ``monitor``, stops early, writes the fit's checkpoints and, on
    resume, puts the training loop's state back.

    After every epoch: the best value, its epoch and the epochs since (early stopping's wait) are
    updated; with a ``folder``, ``<name>-<fit_id>_last.pth`` is written, and ``_best.pth`` when the
    epoch was best. With ``patience``, the fit stops (after the checkpoint is written) once
    ``monitor`` has not improved for that many epochs. After the fit the best epoch's weights are
    restored (when there is a folder), and the last checkpoint records that the fit completed.

    Epochs before ``resume``'s are the ones fastai skips when resuming: they are ignored.

    Args:
        folder: where the checkpoints go; ``None`` writes none (early stopping only).
        name, fit_id: the file name stem and the fit's id (:func:`new_fit_id`).
        monitor: a value the Recorder records (``valid_loss``...).
        state: ``state()`` -> the model's part of a checkpoint (networks, optimizers, history...).
        restore_best: ``restore_best(checkpoint)`` loads the best epoch's weights after the fit.
        scalers: name -> function giving a ``GradScaler`` or ``None``, e.g. fastai's
            ``learn.scaler``; enabled ones are saved and restored.
        patience: stop after this many epochs without improvement; ``None`` never.
        resume: the checkpoint the fit resumes from; training starts at its epoch + 1.
        verbose: say when early stopping stops the fit.
        every_epoch: also keep each epoch's checkpoint as ``<name>-<fit_id>_epoch<N>.pth``
            (``fit(checkpoint="all")``).
        unsaved: a completed fit's last checkpoint says ``unsaved`` (resumable) until the model
            is saved (``fit(keep_until_saved=True)``).
    """

    order = 65  # after History (61), which records the epoch

    def __init__(self, folder: Path | None, name: str, fit_id: str, monitor: str,
                 state: Callable[[], dict], restore_best: Callable[[dict], None], *,
                 scalers: dict[str, Callable] | None = None, patience: int | None = None,
                 resume: dict | None = None, verbose: bool = True, every_epoch: bool = False,
                 unsaved: bool = False) -> None:
        self.verbose, self.every_epoch, self.unsaved = verbose, every_epoch, unsaved
        self.folder = Path(folder) if folder is not None else None
        self.stem, self.fit_id, self.monitor = name, fit_id, monitor
        self.state, self.restore_best = state, restore_best
        self.scalers = scalers or {}
        self.patience = patience
        self.comp = monitor_comparison(monitor)
        self.resume = resume
        self.start_epoch = int(resume["epoch"]) + 1 if resume else 0
        self.best: float | None = resume.get("best") if resume else None
        self.best_epoch: int | None = resume.get("best_epoch") if resume else None
        self.wait = int(resume.get("wait", 0)) if resume else 0
        self.completed = False

    @property
    def last_path(self) -> Path | None:
        return checkpoint_path(self.folder, self.stem, self.fit_id, "last") if self.folder else None

    @property
    def best_path(self) -> Path | None:
        return checkpoint_path(self.folder, self.stem, self.fit_id, "best") if self.folder else None

    def before_fit(self) -> None:
        self.skip = hasattr(self.learn, "lr_finder")
        if self.folder is not None and not self.skip:
            # Each fit writes new names, so a killed fit's temporaries would never be written
            # over: clear those of every fit here.
            remove_stale_in(self.folder)
        names = list(self.recorder.metric_names[1:])
        if self.monitor not in names:
            raise ValueError(f"monitor {self.monitor!r} is not recorded; choose one of "
                             f"{[n for n in names if n != 'time']}.")
        self.idx = names.index(self.monitor)
        if self.resume and not self.skip:
            # The scalers and the smoothed loss are made anew by the callbacks before this one.
            for key, saved in self.resume.get("scalers", {}).items():
                scaler = self.scalers[key]() if key in self.scalers else None
                if scaler is not None and scaler.is_enabled():
                    scaler.load_state_dict(saved)
            smooth = self.resume.get("smooth_loss")
            if smooth is not None:
                self.recorder.smooth_loss.count = int(smooth["count"])
                self.recorder.smooth_loss.val = smooth["val"].clone()

    def before_epoch(self) -> None:
        # At the first epoch trained, not in before_fit: nothing between here and the first batch
        # draws random numbers, so the resumed epoch sees what the uninterrupted one saw.
        if self.resume and not self.skip and self.epoch == self.start_epoch:
            # The Learner's first batch asks the loaders for ``n_inp``, which a new fastai loader
            # finds by loading one extra item (TfmdDL._one_pass), augmented: the uninterrupted
            # fit drew those random numbers in its first epoch; here they are drawn before the
            # restore, not after it.
            getattr(self.learn.dls, "n_inp", None)
            set_rng_state(self.resume["rng"], self.learn.dls.train)

    def after_epoch(self) -> None:
        if self.epoch < self.start_epoch or self.skip:
            return  # skipped by fastai when resuming: the Recorder has no values for it
        value = float(self.recorder.values[-1][self.idx])
        improved = self.best is None or bool(self.comp(value, self.best))
        if improved:
            self.best, self.best_epoch, self.wait = value, int(self.epoch), 0
        else:
            self.wait += 1
        stop = self.patience is not None and self.wait >= self.patience
        self.completed = stop or self.epoch >= self.n_epoch - 1
        if self.folder is not None:
            state = self._checkpoint()
            self._save(state, self.last_path)
            if improved:
                self._save(state, self.best_path)
            if self.every_epoch:  # fit(checkpoint="all"): the early-stopped epoch's too
                self._save(state, checkpoint_path(self.folder, self.stem, self.fit_id, f"epoch{int(self.epoch)}"))
        if stop:
            if self.verbose:
                print(f"No improvement in {self.monitor} since epoch {self.best_epoch}: early stopping")
            raise CancelFitException()

    def after_fit(self) -> None:
        if self.skip or self.folder is None:
            return
        if not self.completed and self.last_path.is_file():
            # Cancelled by another callback: still a finished fit, not one to resume.
            state = load_checkpoint(self.last_path)
            state["completed"] = self.completed = True
            state["unsaved"] = self.unsaved
            self._save(state, self.last_path)
        if self.best is not None and self.best_path.is_file():
            self.restore_best(load_checkpoint(self.best_path))

    def _checkpoint(self) -> dict:
        """The model's state and the loop's, after this epoch."""
        smooth = self.recorder.smooth_loss
        scalers = {}
        for key, get in self.scalers.items():
            scaler = get()
            if scaler is not None and scaler.is_enabled():
                scalers[key] = scaler.state_dict()
        return self.state() | {
            "fit_id": self.fit_id, "epoch": int(self.epoch), "completed": self.completed,
            "unsaved": self.unsaved and self.completed,
            "saved_at": time.time(), "monitor": self.monitor, "best": self.best,
            "best_epoch": self.best_epoch, "wait": self.wait, "scalers": scalers,
            "smooth_loss": {"count": int(smooth.count), "val": torch.as_tensor(smooth.val).detach().cpu()},
            "rng": rng_state(self.learn.dls.train),
        }

    @staticmethod
    def _save(state: dict, path: Path) -> None:
        with atomic_file(path) as tmp:
            torch.save(plain_state(state), tmp)
