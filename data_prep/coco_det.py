"""`perception-r1-prep coco_det` as a script: COCO-format detection annotations (task detection). See `perception-r1-prep coco_det --help`."""

import sys

from perception_r1_verl.data.cli import main

if __name__ == "__main__":
    sys.exit(main(["coco_det", *sys.argv[1:]]))
