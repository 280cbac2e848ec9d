"""Write the offline digits detection set (COCO JSON + PNGs) to OUT (default examples/detection/data)."""

import argparse
from pathlib import Path

from compress.tasks.object_detection.synthetic import write_digits_coco

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("out", nargs="?", type=Path, default=Path("examples/detection/data"))
for split, count in (("train", 600), ("val", 150), ("test", 150)):
    parser.add_argument(f"--{split}", type=int, default=count, help=f"{split} canvases (default {count})")
parser.add_argument("--canvas", type=int, default=128, help="canvas side in pixels")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
paths = write_digits_coco(args.out, {"train": args.train, "val": args.val, "test": args.test}, args.canvas, args.seed)
print("\n".join(f"{split}: {path}" for split, path in paths.items()))
