"""`perception-r1-prep page_ocr` as a script: Fox page OCR, EasyR1 or jsonl tables (ocr). See `perception-r1-prep page_ocr --help`."""

import sys

from perception_r1_verl.data.cli import main

if __name__ == "__main__":
    sys.exit(main(["page_ocr", *sys.argv[1:]]))
