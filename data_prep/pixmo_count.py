"""`perception-r1-prep pixmo_count` as a script: PixMo-Count or EasyR1 counting tables (counting). See `perception-r1-prep pixmo_count --help`."""

import sys

from perception_r1_verl.data.cli import main

if __name__ == "__main__":
    sys.exit(main(["pixmo_count", *sys.argv[1:]]))
