"""Build real RFCNOutput records from bare head tensors for loss tests."""
import torch

from semidff.models.rfcn import RFCNOutput


def rfcn_output(
    rpn_cls_logits: torch.Tensor,
    rpn_deltas: torch.Tensor,
    rois: torch.Tensor,
    cls_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    image_size: tuple[int, int] = (0, 0),
) -> RFCNOutput:
    """An RFCNOutput without features (what the teacher cache stores as soft targets)."""
    return RFCNOutput(None, rpn_cls_logits, rpn_deltas, rois, cls_logits, box_deltas, image_size)
