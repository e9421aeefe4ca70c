"""semidff: Semi-Supervised Deep Feature Flow for fast video object detection.

The method (Han, Zhang, Li, ACM MM 2018) as a plain PyTorch library: an R-FCN image detector
(the spatial module), a FlowNetS feature-flow network with a scale field (the temporal module,
Eq. 1), and the losses that learn the flow from unlabeled video by distilling a frozen teacher
(Eq. 4-9). Ray pipelines and jobs live outside this package, in ``pipelines/`` and ``jobs/``.
"""

__version__ = "0.1.0"
