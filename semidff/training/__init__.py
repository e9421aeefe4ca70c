"""Training steps and their data, as plain PyTorch (no Ray): the Ray Train jobs in ``jobs/`` call them.

* ``teacher_data.py``: stage 1 input, labeled frames → resized, flipped images with boxes.
* ``teacher_step.py``: stage 1 step, the supervised R-FCN loss (Eq. 2-3), its optimiser and lr schedule.
"""
