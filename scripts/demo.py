"""`make demo`: the building-footprint workflow on the real SpaceNet Atlanta sample.

Writes to demo_output/ (or the folder given as the first argument). So far: fetch the sample,
export training chips with contour-reinforced footprint labels, load them with prepare_data,
draw show_batch.png, and report what was written.
Training, prediction and vectorizing follow as the toolkit grows.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes figures to files

from toolkit import datasets, export_training_data, prepare_data  # noqa: E402


def main(out: Path) -> None:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"Sample data: {datasets.CREDIT}")
    sample = datasets.fetch("atlanta_buildings")
    for role, path in sample.items():
        print(f"  {role:<10} {path}")

    print("\nExporting training chips (Classified_Tiles, 256 px, stride 128, 2 px contours)...")
    summary = export_training_data(
        sample["image"], out / "chips", in_class_data=sample["footprints"],
        tile_size=256, stride=128, contour_width=2, overwrite=True,
    )
    print(f"  {summary}")
    stats = json.loads((summary.out_folder / "esri_accumulated_stats.json").read_text())
    band = stats["BandStatsState"][0]
    print(f"  band 1: min {band['Min']:.0f}, max {band['Max']:.0f}, mean {band['Mean']:.1f}, "
          f"std {band['StdDev']:.1f}")
    for c, pixels in zip(summary.classes, stats["ClassPixelStats"]["NumPixelsPerClass"]):
        print(f"  class {c['Value']} ({c['Name']}): {pixels} pixels")

    print("\nLoading the chips with prepare_data...")
    data = prepare_data(summary.out_folder, batch_size=8)
    print(f"  {data}")
    data.show_batch(rows=4).savefig(out / "show_batch.png", dpi=80)

    print("\nWrote:")
    for path in sorted(out.iterdir()):
        detail = f"{len(list(path.iterdir()))} entries" if path.is_dir() else f"{path.stat().st_size} bytes"
        print(f"  {path}  ({detail})")
    print(f"\nDone in {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo_output"))
