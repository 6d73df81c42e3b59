"""Diagnostics of a trained run, from its checkpoint: ``nexus eval`` (``evaluate.py``),
gradient similarity (``gradsim.py``), closeness of the per-source minima (``closeness.py``,
fine-tunes built on ``train/step.py``; straight-line interpolations and the loss barrier
between source minima in ``barrier.py``), and where the results live (``store.py``)."""
