"""Copy the demo's figures into docs/gallery/ for the README, made small enough to commit.

    .venv/bin/python scripts/update_gallery.py [demo_output] [docs/gallery]

Run after `make demo`: each figure is scaled to at most 720 px wide and reduced to 256 colours.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

FIGURES = ("show_batch.png", "show_results.png", "loss_graph.png", "footprints.png")
MAX_WIDTH = 720


def main(demo_output: Path, gallery: Path) -> None:
    missing = [name for name in FIGURES if not (demo_output / name).is_file()]
    if missing:
        sys.exit(f"{demo_output}: missing {', '.join(missing)}; run `make demo` first.")
    gallery.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        image = Image.open(demo_output / name).convert("RGB")
        if image.width > MAX_WIDTH:
            image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)),
                                 Image.Resampling.LANCZOS)
        tmp = gallery / f".{name}.partial.png"
        image.quantize(256).save(tmp, optimize=True)
        tmp.replace(gallery / name)
        print(f"{gallery / name}: {image.width} x {image.height} px, {(gallery / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:3]]
    main(*(args + [Path("demo_output"), Path("docs/gallery")][len(args):]))
