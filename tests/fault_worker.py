"""The process that tests/test_faults.py kills with SIGKILL (not a test module itself).

    python tests/fault_worker.py OP CONFIG_JSON

OP is ``export``, ``save``, ``predict`` or ``fit``. The worker prepares what OP needs, performs it
twice (the first run leaves complete content at the output and warms up; the second is timed),
then writes on its protocol stream::

    DURATION <seconds of one operation>
    READY

and performs OP again and again, each time over the same output with ``overwrite=True`` (for
``fit``: a new ``fit(..., checkpoint=True)`` in the same working folder), until it is killed,
at most ``max_rounds`` rounds or ``max_seconds`` seconds (then it writes ``FINISHED``, which the
test treats as a failure: it should have been killed).

With ``hold`` in CONFIG, the worker widens one moment of the write so a kill lands there for
sure: ``"checkpoint"`` (fit) pauses after a checkpoint's temporary file is complete, before it is
moved into place; ``"replace"`` (export) pauses after an export folder's old content was moved
aside, before the new one is moved in. It writes ``WRITING <path>`` when it pauses.

The protocol stream is the original stdout; everything else the toolkit, fastai or tqdm print
goes to stderr (the test points it to a log file), so the pipe never fills up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # fd 1 (print, progress bars) -> stderr


def say(*parts) -> None:
    print(*parts, file=PROTOCOL, flush=True)


def main(op: str, config: dict) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import toolkit

    out = Path(config["out"])
    armed = False  # holds pause only after READY

    if op == "export":
        sample = toolkit.datasets.fetch("atlanta_buildings")

        def operation():
            toolkit.export_training_data(sample["image"], out, in_class_data=sample["footprints"],
                                         tile_size=128, overwrite=True, progress=False)

    elif op in ("save", "fit"):
        import torch

        torch.set_num_threads(1)  # 2 shared cores: a second thread only adds contention
        torch.manual_seed(0)
        data = toolkit.prepare_data(config["data"], batch_size=8, seed=0, num_workers=0)
        model = toolkit.Pix2Pix(data, ngf=8, ndf=8, working_dir=config.get("working_dir"))
        if op == "save":
            def operation():
                model.save(out, overwrite=True)
        else:
            def operation():
                with model.learn.no_bar(), model.learn.no_logging():
                    model.fit(config.get("epochs", 1), lr=1e-3, checkpoint=True)

    elif op == "predict":
        import torch

        torch.set_num_threads(1)
        model = toolkit.Pix2Pix.from_model(config["model"])

        def operation():
            model.predict_raster(config["in_raster"], out, overwrite=True, progress=False)

    else:
        raise SystemExit(f"unknown operation {op!r}")

    hold = config.get("hold")
    hold_seconds = float(config.get("hold_seconds", 2.0))
    if hold == "checkpoint":
        import torch

        real_save = torch.save

        def save_then_hold(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if armed and isinstance(f, (str, os.PathLike)) and Path(f).name.startswith("."):
                say("WRITING", os.fspath(f))  # complete temporary, not yet moved into place
                time.sleep(hold_seconds)

        torch.save = save_then_hold
    elif hold == "replace":
        real_replace = os.replace

        def replace_then_hold(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if armed and Path(dst).name.endswith(".old"):
                say("WRITING", os.fspath(dst))  # old content moved aside, new not yet in place
                time.sleep(hold_seconds)

        os.replace = replace_then_hold
    elif hold is not None:
        raise SystemExit(f"unknown hold {hold!r}")

    operation()  # warm-up; leaves complete content at the output
    start = time.perf_counter()
    operation()
    say("DURATION", f"{time.perf_counter() - start:.4f}")
    say("READY")
    armed = True
    deadline = time.monotonic() + float(config.get("max_seconds", 60))
    for i in range(int(config.get("max_rounds", 500))):
        if time.monotonic() > deadline:
            break
        operation()
        say("ROUND", i)
    say("FINISHED")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
