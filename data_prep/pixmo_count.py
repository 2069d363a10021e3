"""Counting tables (PixMo-Count, EasyR1) -> verl multimodal parquet. `python data_prep/pixmo_count.py --help`; see README, *Preparing data*."""

import os
import sys

# data_prep/inspect.py would shadow the standard library's inspect module for scripts run from here.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from perception_r1_verl.data.pixmo_count import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
