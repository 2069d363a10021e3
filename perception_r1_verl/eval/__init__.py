"""Evaluation: batch generation over a ``data_prep`` split and the paper's metrics.

``perception-r1-eval generate`` writes ``{"index", "response"}`` jsonl (vLLM, else
transformers); ``perception-r1-eval score`` turns it into ``metrics.json``, ``metrics.md``,
``samples.jsonl``, ``report.html`` and, for detection, the COCO ``detections.json`` that
pycocotools evaluated. See docs/evaluation.md.
"""
