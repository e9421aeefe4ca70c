"""Training as plain PyTorch (no Ray): the paper's stage 1 (the teacher) and stage 2 (the flow).

Stage 1, the supervised teacher:

* ``teacher_data.py``: its input, labeled frames → resized, flipped images with boxes.
* ``teacher_step.py``: its step, the supervised R-FCN loss (Eq. 2-3), the optimiser and lr schedule.
* ``teacher_loop.py``: its epochs, resumable, in one process or one DDP rank.

Stage 2, the feature flow learned from unlabeled video (step A: feature regression, Eq. 4; then
step B: semantic distillation, Eq. 5-9):

* ``flow_inputs.py``: its inputs checked before any work (teacher, schedule, pair source).
* ``flow_batch.py``: pair rows → same-size ``PairBatch`` micro-batches.
* ``flow_step.py``: the student, the step's objective and losses, one optimiser step.
* ``flow_loop.py``: the epochs of step A then step B, resumable, in one process or one DDP rank.
* ``flow_validation.py``: the per-epoch validation (error vs copying, mAP).

``pipelines/`` runs these loops on Ray Train; a notebook can run them as they are.
"""
