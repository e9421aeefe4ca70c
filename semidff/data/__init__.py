"""Labeled video datasets: the records every reader returns, and the readers themselves.

* ``records.py``: :class:`LabeledDataset` → :class:`LabeledVideo` → :class:`FrameAnnotation` →
  :class:`ObjectAnnotation`; boxes are inclusive (x1, y1, x2, y2) pixels of the original frame,
  labels 1..num_classes.
* ``custom_format.py``: the documented JSON format for users' own labeled videos
  (``semidff-video/1``): load, write, and validate (``semidff data check FILE.json``).
* ``imagenet_vid.py``, ``youtube_bb.py``: readers of the public datasets.
* ``labeled.py``: the dataset a config data section names (``teacher_training.data``,
  ``evaluation.data``), read with the right reader, and its digests for MLflow lineage.
* ``synthetic.py``: a generator of small labeled videos (textured moving objects over a panned
  textured background), written as H.264 files plus a ``semidff-video/1`` JSON; tests and the demo
  use it.
* ``synthetic_motion.py``: labeled videos that move like ImageNet VID (large objects, VID's
  slow/medium/fast mix, pan and zoom, occlusion), each with its true motion (``true_motion.py``:
  the sidecar format and the true backward flow between any two frames, for oracle evaluation and
  flow diagnostics).

Importing this package imports nothing heavy; each module imports what it needs.
"""
