"""Video files: probing (``probe.py``) with decord, the project's reference decoder."""
