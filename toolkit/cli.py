"""The ``toolkit`` command: the Python API's workflow from a shell, for scripts and schedulers.

    toolkit export SCENE.tif CHIPS --in-class-data footprints.geojson --tile-size 256 --contour-width 2
    toolkit train CHIPS --model pix2pix --epochs 20 --out models/buildings
    toolkit predict models/buildings/buildings.dlpk SCENE.tif prediction.tif
    toolkit predict models/buildings/buildings.dlpk A.tif B.tif C.tif predictions/ --workers 3
    toolkit vectorize prediction.tif footprints.gpkg
    toolkit info CHIPS            # or a saved model (.emd, folder, .dlpk)
    torchrun --standalone --nproc_per_node=4 -m toolkit train CHIPS --out models/buildings

Also ``python -m toolkit``. Options carry the Python API's names (``--tile-size`` is
``tile_size``). Each command calls the same function a notebook calls; nothing here re-implements
it. Errors print as one line, ``toolkit: error: ...`` (the traceback with ``--debug``).

Exit codes: 0 done; 1 the work failed (bad input, a refused overwrite...: the message says
which file and why); 2 the command line itself is wrong (argparse's usage error, also for a
number outside its option's range); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM, what
``timeout``, SLURM and Kubernetes send). Interrupted or terminated, nothing half-written is
left, and ``toolkit train --resume`` continues a fit. Only the JSON result goes to stdout;
progress bars, tables and messages go to stderr.

Layer: front doors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from toolkit import config
from toolkit.config import Number, SizeOption, add_options, from_options
from toolkit.runs import RunConfig

__all__ = ["main"]

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143
Size = SizeOption  # the option type of chip and tile sizes


def _parser() -> argparse.ArgumentParser:
    """The command line. The settings' options are generated from the stage configs of
    :mod:`toolkit.config` (name, type, range, default, help); written here are only the
    positional paths and what concerns the command itself (where to write, whether to replace,
    where to run)."""
    parser = argparse.ArgumentParser(prog="toolkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("export", help="rasters (+ vectors) -> an Esri chip folder",
                            description="export_training_data: cut IN_RASTER into training chips in Esri's layout.")
    p.add_argument("in_raster")
    p.add_argument("out_folder")
    add_options(p, config.ExportConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of the toolkit")

    p = commands.add_parser("train", help="train a model on a chip folder and save it",
                            description="prepare_data + Pix2Pix/CycleGAN + fit + save. Settings come from "
                                        "--config (a YAML or JSON run, or a saved model's .emd), then the "
                                        "options given.")
    p.add_argument("chips")
    p.add_argument("--model", choices=sorted(config.MODEL_CONFIGS), help="the model (default pix2pix, or --config's)")
    p.add_argument("--out", required=True, help="folder to save the model in (its name names the files)")
    p.add_argument("--config", metavar="FILE", help="a run to repeat: YAML or JSON (model, data, <model>, fit "
                   "sections; toolkit.runs.RunConfig) or a saved model's .emd")
    add_options(p, config.DataConfig)
    models = config.MODEL_CONFIGS.values()
    for model_config in models:  # a setting several models share is one option, naming them and their defaults
        owners = {f: [c for c in models if f in c.defaults()] for f in model_config.defaults()}
        name = lambda c: c.__name__.removesuffix("Config")  # noqa: E731
        add_options(p, model_config, only_for={f: ", ".join(name(c) for c in owners[f]) for f in owners
                                               if len(owners[f]) < len(models)},
                    default_text={f: ", ".join(f"{c.defaults()[f]} ({name(c)})" for c in owners[f])
                                  for f in owners if len({str(c.defaults()[f]) for c in owners[f]}) > 1})
    add_options(p, config.FitConfig)
    p.add_argument("--working-dir", help="checkpoints folder (default: beside --out)")
    p.add_argument("--resume", action="store_true",
                   help="continue the last unfinished fit of this --working-dir from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a model the toolkit saved at --out")

    p = commands.add_parser("predict", help="a saved model over whole scenes -> GeoTIFFs",
                            description="predict_raster with a saved model (.emd, folder or .dlpk): "
                                        "IN_RASTER OUT_RASTER, or several scenes IN_RASTER... OUT_FOLDER "
                                        "(one <scene name>.tif each; predict_rasters).")
    p.add_argument("model")
    p.add_argument("rasters", nargs="+", metavar="IN_RASTER... OUT",
                   help="the scene(s), then the output raster (one scene) or folder (several, or an existing folder)")
    add_options(p, config.PredictConfig)
    p.add_argument("--scheduler", help="a Dask scheduler address: run on that cluster")
    p.add_argument("--workers", type=Number(int, 1, 1024), help="run on a local Dask cluster of this many processes")
    p.add_argument("--overwrite", action="store_true", help="replace a prediction the toolkit wrote")

    p = commands.add_parser("vectorize", help="a footprint prediction -> polygons (GeoPackage)",
                            description="vectorize + write_vector; settings default to the prediction's tags.")
    p.add_argument("in_raster")
    p.add_argument("out_gpkg")
    add_options(p, config.VectorizeConfig)
    p.add_argument("--overwrite", action="store_true", help="replace a GeoPackage the toolkit wrote")

    p = commands.add_parser("info", help="what a chip folder or a saved model holds (JSON)")
    p.add_argument("path")
    return parser


# --- the commands: each one call of the Python API ------------------------------------------------


def _export(args) -> dict:
    from toolkit import export_training_data

    settings = from_options(config.ExportConfig, args)
    summary = export_training_data(args.in_raster, args.out_folder, overwrite=args.overwrite, progress=True,
                                   **settings.kwargs())
    return {"out_folder": str(summary.out_folder), "metadata_format": summary.metadata_format,
            "chips": summary.num_chips, "chips_b": summary.num_chips_b, "skipped": summary.skipped}


def run_config(args) -> RunConfig:
    """The run ``toolkit train`` does: ``--config``'s settings, then the options given."""
    base = RunConfig.read(args.config) if args.config else RunConfig()
    model = args.model or base.model
    model_config = config.MODEL_CONFIGS[model]
    for other, other_config in config.MODEL_CONFIGS.items():
        foreign = [f for f in other_config.defaults() if f in vars(args) and f not in model_config.defaults()]
        if foreign:
            raise ValueError(f"{config.option_name(foreign[0])} is an option of --model {other}, not of {model}.")
    own = base.model_config.to_dict() if base.model == model else {}
    return RunConfig(model, from_options(config.DataConfig, args, base.data.to_dict()),
                            from_options(model_config, args, own), from_options(config.FitConfig, args, base.fit.to_dict()))


def _train(args) -> dict | None:
    """Under ``torchrun`` every process runs this; rank 0 alone reports (and saves)."""
    from toolkit import ddp, prepare_data
    from toolkit.models.zoo import MODELS

    run = run_config(args)
    out = Path(args.out).absolute()  # a bare name is a folder here, not in the working folder
    dataset_type = "CycleGAN" if run.model == "cyclegan" else None
    data = prepare_data(args.chips, dataset_type=dataset_type, **run.data.kwargs())
    working_dir = args.working_dir or out.parent / f"{out.name}_work"
    model = MODELS[run.model](data, working_dir=working_dir, **run.model_config.kwargs())
    if ddp.is_main() and not ddp.launched():
        print(f"{model!r}: {len(data.train_ds)} training, {len(data.valid_ds)} validation chips", file=sys.stderr)
    if ddp.is_main():  # before the first epoch: a fit is not lost to a save that cannot happen
        model.check_save_path(out, overwrite=args.overwrite)
    model.fit(resume=args.resume, keep_until_saved=True, **run.fit.kwargs())
    try:
        emd = model.save(out, overwrite=args.overwrite)
    except Exception as err:
        kept = model.unsaved_checkpoint
        if kept is None or not kept.is_file():
            raise
        raise RuntimeError(f"{error_line(err)}; the trained model is kept in {kept.parent}: fix the cause and "
                           "run the same command with --resume to save it without training again.") from err
    if not ddp.is_main():
        return None
    return {"emd": str(emd), "dlpk": str(emd.with_suffix(".dlpk")), "metrics": model.metrics,
            "processes": ddp.world_size(), "epochs_trained": len(model.history), "run": run.to_dict()}


def _predict(args) -> dict:
    from toolkit import load_model, predict_raster, predict_rasters

    if args.scheduler and args.workers:
        raise ValueError("give --scheduler or --workers, not both.")
    if args.workers is not None and args.workers < 1:  # -1 waited forever, 0 ran in-process silently
        raise ValueError(f"--workers must be 1 or more (processes of a local Dask cluster), got {args.workers}.")
    if len(args.rasters) < 2:
        raise ValueError("give the scene(s) and then the output: IN_RASTER OUT_RASTER or IN_RASTER... OUT_FOLDER.")
    *scenes, out = args.rasters
    many = len(scenes) > 1 or Path(out).is_dir()
    model = load_model(args.model)
    kwargs = dict(from_options(config.PredictConfig, args).kwargs(), overwrite=args.overwrite)

    def run(client=None) -> dict:
        if many:  # one task a scene on a cluster, one after the other here
            return {"out_rasters": [str(p) for p in predict_rasters(model, scenes, out, client=client, **kwargs)]}
        return {"out_raster": str(predict_raster(model, scenes[0], out, client=client, **kwargs))}

    if not (args.scheduler or args.workers):
        return run()
    from distributed import Client, LocalCluster

    if args.scheduler:
        with Client(args.scheduler) as client:
            return run(client)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return run(client)


def _vectorize(args) -> dict:
    from toolkit import vectorize, write_vector

    polygons = vectorize(args.in_raster, **from_options(config.VectorizeConfig, args).kwargs())
    out = write_vector(polygons, args.out_gpkg, overwrite=args.overwrite)
    return {"out_gpkg": str(out), "polygons": len(polygons), "crs": str(polygons.crs)}


def _info(args) -> dict:
    path = Path(args.path)
    if path.is_file() and path.suffix.lower() not in (".emd", ".dlpk"):
        return _raster_info(path)
    if path.suffix.lower() in (".emd", ".dlpk") or (path.is_dir() and any(path.glob("*.emd"))
                                                    and not (path / "esri_model_definition.emd").exists()):
        from toolkit.models.model_folder import read_model_folder

        emd, _, emd_path = read_model_folder(path)
        toolkit = emd["Toolkit"]
        return {"model": str(emd_path), "model_type": emd["ModelType"], "config": toolkit["config"],
                "metrics": toolkit.get("metrics", {}), "epochs_trained": len(toolkit.get("history", []))}
    from toolkit import prepare_data

    data = prepare_data(path, num_workers=0)
    return {"chips": str(path), "dataset_type": data.dataset_type, "summary": repr(data),
            "bands_in": data.n_bands_in, "bands_out": data.n_bands_out, "chip_size": data.chip_size,
            "cell_size": data.cell_size, "train_chips": len(data.train_ds), "valid_chips": len(data.valid_ds)}


def _raster_info(path: Path) -> dict:
    """A raster (a scene, a prediction): its grid and bands, as ``gdalinfo`` would say them."""
    from toolkit.raster import open_raster

    with open_raster(path, "raster") as src:
        return {"raster": str(path), "driver": src.driver, "width": src.width, "height": src.height,
                "bands": src.count, "dtypes": list(src.dtypes), "nodata": src.nodata,
                "crs": src.crs.to_string() if src.crs else None, "transform": list(src.transform)[:6],
                "resolution": list(src.res), "bounds": list(src.bounds),
                "band_names": [d or "" for d in src.descriptions], "tags": src.tags()}


COMMANDS = {"export": _export, "train": _train, "predict": _predict, "vectorize": _vectorize, "info": _info}


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code. The
    result is printed to stdout as one JSON object, so scripts can read it."""
    args = _parser().parse_args(argv)  # exits 2 with the usage on a wrong command line
    stdout, terminated = sys.stdout, _Flag()
    try:
        # progress bars, fastai's epoch table and messages go to stderr: stdout is the JSON line
        with _terminate_as_interrupt(terminated), contextlib.redirect_stdout(sys.stderr):
            result = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"toolkit: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as err:  # one clear line, not a traceback, unless asked for
        if args.debug:
            raise
        where = f" (rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']})" if _launched() else ""
        print(f"toolkit: error{where}: {error_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    if result is not None:  # None: a torchrun rank other than 0
        print(json.dumps(result, default=str), file=stdout)
    return 0


def error_line(err: BaseException) -> str:
    """One line saying what went wrong: the real cause of an exception that fastai wrapped
    (``Exception occured in `Checkpoint` when calling event `after_epoch```), with the file an
    ``OSError`` names."""
    while (err.__cause__ is not None or err.__context__ is not None) and str(err).startswith("Exception occured in"):
        err = err.__cause__ or err.__context__
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        message = f"{err.filename}: {err.strerror}" + (f" (-> {err.filename2})" if err.filename2 else "")
    else:
        message = str(err).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception occured in"):
        lines = lines[1:]
    return lines[0] if lines else type(err).__name__


class _Flag:
    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


@contextlib.contextmanager
def _terminate_as_interrupt(flag: _Flag):
    """SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does, so the same clean-up runs (temporary
    files removed, checkpoints intact); ``flag`` becomes true once SIGTERM came."""
    def handler(signum, frame):
        flag.set = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. main() called from a worker thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE") or 1) > 1 and "RANK" in os.environ
