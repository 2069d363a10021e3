"""`perception-r1-prep check` as a script: check a converted parquet as verl reads it; draw rows into a grid. See `perception-r1-prep check --help`."""

import sys

from perception_r1_verl.data.cli import main

if __name__ == "__main__":
    sys.exit(main(["check", *sys.argv[1:]]))
