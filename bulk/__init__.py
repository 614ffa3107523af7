"""Bulk jobs past one machine on Ray Data: transcribe or classify many files, resumable, one manifest row per input.

    python -m bulk transcribe IN... --out DIR [--address ADDR] [--workers N] [--batch-size B] [--num-gpus G]
    python -m bulk classify IMAGES... --out results.parquet

``workers.py`` holds the per-worker callables (plain Python: the model loads once per worker, files in, manifest
rows out); ``job.py`` is the only module that imports Ray (the optional ``batch`` extra).
"""
