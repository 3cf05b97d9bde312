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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143
MAX_PIXELS = 16384  # chip and tile sides: larger is a typo, and would allocate gigabytes per chip


class Number:
    """An argparse type: a finite int or float within ``low .. high`` (either may be open:
    ``None``); anything else is a usage error (exit 2) that states the range."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 above: bool = False) -> None:
        self.kind, self.low, self.high, self.above = kind, low, high, above
        self.__name__ = self.range  # argparse names the type in its message

    @property
    def range(self) -> str:
        word = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{word} from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{word} {'>' if self.above else '>='} {self.low:g}"
        return f"{word} <= {self.high:g}" if self.high is not None else word

    def accepts(self, value: float) -> bool:
        return math.isfinite(value) and (self.low is None or (value > self.low if self.above else value >= self.low)) \
            and (self.high is None or value <= self.high)

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.range}, got {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.range}, got {text!r}")
        return value


class Size(Number):
    """``256`` or ``256,128`` (width,height): whole pixels from 1 to :data:`MAX_PIXELS`."""

    def __init__(self) -> None:
        super().__init__(int, 1, MAX_PIXELS)

    @property
    def range(self) -> str:
        return f"N or WIDTH,HEIGHT, whole pixels from 1 to {MAX_PIXELS}"

    def __call__(self, text: str):
        try:
            parts = [super(Size, self).__call__(p) for p in text.split(",")]
        except argparse.ArgumentTypeError:
            parts = []
        if len(parts) not in (1, 2):
            raise argparse.ArgumentTypeError(f"expected {self.range}, got {text!r}")
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])


_size = Size()
POSITIVE = Number(int, 1)
COUNT = Number(int, 0)  # 0 allowed (e.g. --contour-width 0: no outline class)
FRACTION = Number(float, 0, 1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("export", help="rasters (+ vectors) -> an Esri chip folder",
                            description="export_training_data: cut IN_RASTER into training chips in Esri's layout.")
    p.add_argument("in_raster")
    p.add_argument("out_folder")
    p.add_argument("--additional-input-raster", help="the paired target raster (Export_Tiles), or domain B (CycleGAN)")
    p.add_argument("--in-class-data", help="polygons or a class raster (Classified_Tiles)")
    p.add_argument("--metadata-format", choices=["Export_Tiles", "Classified_Tiles", "CycleGAN"])
    p.add_argument("--tile-size", type=_size, default=256)
    p.add_argument("--stride", type=_size)
    p.add_argument("--class-value-field")
    p.add_argument("--contour-width", type=Number(int, 0, 255), default=0, help="outline class width in pixels (0: none)")
    p.add_argument("--resize-to", type=_size)
    p.add_argument("--image-chip-format", default="TIFF", help="TIFF, PNG or JPEG (Pro's values; tif/png/jpg too)")
    p.add_argument("--start-index", type=COUNT, default=0, help="number of the first chip")
    p.add_argument("--in-mask-polygons", help="write only the chips that lie completely inside these polygons")
    p.add_argument("--buffer-radius", type=Number(float, 0), default=0.0,
                   help="point features become circles of this radius (raster CRS units)")
    p.add_argument("--rotation-angle", type=Number(float, 0, 360), default=0.0,
                   help="also export each chip rotated by this angle, twice it... below 360 degrees")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of the toolkit")

    p = commands.add_parser("train", help="train a model on a chip folder and save it",
                            description="prepare_data + Pix2Pix/CycleGAN + fit + save.")
    p.add_argument("chips")
    p.add_argument("--model", choices=["pix2pix", "cyclegan"], default="pix2pix")
    p.add_argument("--out", required=True, help="folder to save the model in (its name names the files)")
    p.add_argument("--epochs", type=Number(int, 1, 100000), default=10)
    p.add_argument("--batch-size", type=Number(int, 1, 65536), default=8)
    p.add_argument("--lr", type=Number(float, 0, 10, above=True), help="learning rate (default 2e-4)")
    p.add_argument("--ngf", type=Number(int, 1, 1024), default=64, help="generator filters of the first layer")
    p.add_argument("--ndf", type=Number(int, 1, 1024), default=64, help="discriminator filters of the first layer")
    p.add_argument("--gen-blocks", type=Number(int, 0, 64), default=9, help="CycleGAN: residual blocks per generator")
    p.add_argument("--chip-size", type=_size, help="crop chips to this size")
    p.add_argument("--val-split-pct", type=Number(float, 0, 1, above=True), default=0.1,
                   help="share of the chips kept for validation (above 0, below 1)")
    p.add_argument("--seed", type=Number(int, 0, 2**32 - 1), default=42)
    p.add_argument("--schedule", choices=["linear"], help="constant, then linear decay (else one-cycle)")
    p.add_argument("--class-balance", action="store_true", help="Pix2Pix on class masks: balanced L1")
    p.add_argument("--lambda-l1", type=Number(float, 0), default=100.0, help="Pix2Pix: weight of the L1 term")
    p.add_argument("--gan-weight", type=Number(float, 0), default=1.0,
                   help="Pix2Pix: weight of the adversarial term (0: a plain L1 U-Net)")
    p.add_argument("--norm", choices=["batch", "instance"], default="batch", help="Pix2Pix: normalisation layers")
    p.add_argument("--working-dir", help="checkpoints folder (default: beside --out)")
    p.add_argument("--early-stopping", type=POSITIVE, metavar="EPOCHS",
                   help="stop when the validation loss has not improved for this many epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue the last unfinished fit of this --working-dir from its checkpoint")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun on GPUs: synchronised batch norm")
    p.add_argument("--monitor", default="valid_loss", help="what decides the best epoch (valid_loss, psnr, ssim...)")
    p.add_argument("--checkpoint", choices=["best", "all", "none"], default="best",
                   help="checkpoints: the last and best epoch (default), one per epoch too, or none")
    p.add_argument("--tensorboard", action="store_true", help="log to <working dir>/training_log/ for TensorBoard")
    p.add_argument("--overwrite", action="store_true", help="replace a model the toolkit saved at --out")

    p = commands.add_parser("predict", help="a saved model over whole scenes -> GeoTIFFs",
                            description="predict_raster with a saved model (.emd, folder or .dlpk): "
                                        "IN_RASTER OUT_RASTER, or several scenes IN_RASTER... OUT_FOLDER "
                                        "(one <scene name>.tif each; predict_rasters).")
    p.add_argument("model")
    p.add_argument("rasters", nargs="+", metavar="IN_RASTER... OUT",
                   help="the scene(s), then the output raster (one scene) or folder (several, or an existing folder)")
    p.add_argument("--convert-to", choices=["a", "b"], help="CycleGAN: the direction (default b)")
    p.add_argument("--padding", type=COUNT, help="overlap on each side of a window, in pixels "
                   "(below half the chip; default a quarter of it)")
    p.add_argument("--batch-size", type=Number(int, 1, 65536), default=8)
    p.add_argument("--threshold", type=FRACTION, help="mask models: write a class raster (a score from 0 to 1)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (8 flips/rotations)")
    p.add_argument("--backend", choices=["auto", "openvino", "onnxruntime", "torch"], default="auto",
                   help="where the generator runs: the fastest exact path installed (auto), or one named")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: quantized on the CPU, calibrated on the scene (faster; see benchmarks/README.md)")
    p.add_argument("--scheduler", help="a Dask scheduler address: run on that cluster")
    p.add_argument("--workers", type=Number(int, 1, 1024), help="run on a local Dask cluster of this many processes")
    p.add_argument("--timeout", type=Number(float, 0, above=True), default=600.0,
                   help="with --scheduler or --workers: fail when no part of the work has finished for "
                        "this many seconds (e.g. every worker dead)")
    p.add_argument("--overwrite", action="store_true", help="replace a prediction the toolkit wrote")

    p = commands.add_parser("vectorize", help="a footprint prediction -> polygons (GeoPackage)",
                            description="vectorize + write_vector; settings default to the prediction's tags.")
    p.add_argument("in_raster")
    p.add_argument("out_gpkg")
    p.add_argument("--threshold", type=Number(float),
                   help="footprint score (or class value) from which a pixel is footprint")
    p.add_argument("--boundary-threshold", type=Number(float),
                   help="outline score (or class value) from which a pixel is outline")
    p.add_argument("--min-area", type=Number(float, 0), help="drop smaller polygons (CRS units squared)")
    p.add_argument("--marker-erosion", type=Number(int, 0, 1000), help="erode watershed markers by this many pixels")
    p.add_argument("--simplify-tolerance", type=Number(float, 0), default=0.0, help="in CRS units")
    p.add_argument("--regularize", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a GeoPackage the toolkit wrote")

    p = commands.add_parser("info", help="what a chip folder or a saved model holds (JSON)")
    p.add_argument("path")
    return parser


# --- the commands: each one call of the Python API ------------------------------------------------


def _export(args) -> dict:
    from toolkit import export_training_data

    summary = export_training_data(
        args.in_raster, args.out_folder, additional_input_raster=args.additional_input_raster,
        in_class_data=args.in_class_data, metadata_format=args.metadata_format, tile_size=args.tile_size,
        stride=args.stride, class_value_field=args.class_value_field, contour_width=args.contour_width,
        resize_to=args.resize_to, image_chip_format=args.image_chip_format, start_index=args.start_index,
        in_mask_polygons=args.in_mask_polygons, buffer_radius=args.buffer_radius,
        rotation_angle=args.rotation_angle, overwrite=args.overwrite, progress=True)
    return {"out_folder": str(summary.out_folder), "metadata_format": summary.metadata_format,
            "chips": summary.num_chips, "chips_b": summary.num_chips_b, "skipped": summary.skipped}


def _train(args) -> dict | None:
    """Under ``torchrun`` every process runs this; rank 0 alone reports (and saves)."""
    from toolkit import CycleGAN, Pix2Pix, ddp, prepare_data

    out = Path(args.out).absolute()  # a bare name is a folder here, not in the working folder
    dataset_type = "CycleGAN" if args.model == "cyclegan" else None
    data = prepare_data(args.chips, batch_size=args.batch_size, val_split_pct=args.val_split_pct,
                        seed=args.seed, dataset_type=dataset_type, chip_size=args.chip_size)
    working_dir = args.working_dir or out.parent / f"{out.name}_work"
    if args.model == "cyclegan":
        model = CycleGAN(data, ngf=args.ngf, ndf=args.ndf, gen_blocks=args.gen_blocks, working_dir=working_dir)
    else:
        model = Pix2Pix(data, ngf=args.ngf, ndf=args.ndf, class_balance=args.class_balance,
                        lambda_l1=args.lambda_l1, gan_weight=args.gan_weight, norm=args.norm,
                        working_dir=working_dir)
    if ddp.is_main() and not ddp.launched():
        print(f"{model!r}: {len(data.train_ds)} training, {len(data.valid_ds)} validation chips", file=sys.stderr)
    if ddp.is_main():  # before the first epoch: a fit is not lost to a save that cannot happen
        model.check_save_path(out, overwrite=args.overwrite)
    checkpoint = {"best": True, "all": "all", "none": False}[args.checkpoint]
    model.fit(args.epochs, lr=args.lr, schedule=args.schedule, early_stopping=args.early_stopping or False,
              checkpoint=checkpoint, tensorboard=args.tensorboard, monitor=args.monitor, resume=args.resume,
              sync_bn=args.sync_bn, keep_until_saved=True)
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
            "processes": ddp.world_size(), "epochs_trained": len(model.history)}


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
    kwargs = dict(padding=args.padding, batch_size=args.batch_size, overwrite=args.overwrite, tta=args.tta,
                  backend=args.backend)
    if args.precision != "fp32":
        kwargs["precision"] = args.precision
    if args.scheduler or args.workers:
        kwargs["timeout"] = args.timeout
    if args.convert_to is not None:
        kwargs["convert_to"] = args.convert_to
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold

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

    settings = {k: getattr(args, k) for k in ("threshold", "boundary_threshold", "min_area", "marker_erosion")
                if getattr(args, k) is not None}
    polygons = vectorize(args.in_raster, simplify_tolerance=args.simplify_tolerance,
                         regularize=args.regularize, **settings)
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
