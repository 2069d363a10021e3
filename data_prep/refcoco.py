"""`perception-r1-prep refcoco` as a script: RefCOCO/+/g: refer toolkit, VLM-R1, lmms-lab, EasyR1, jsonl (grounding). See `perception-r1-prep refcoco --help`."""

import sys

from perception_r1_verl.data.cli import main

if __name__ == "__main__":
    sys.exit(main(["refcoco", *sys.argv[1:]]))
