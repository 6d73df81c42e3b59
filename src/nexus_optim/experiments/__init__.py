"""Experiments built from the layers below: the README demo (``demo.py``) and the
CPU-scale study (``study.py``); ``runs.py`` has what both ask of a run directory."""
