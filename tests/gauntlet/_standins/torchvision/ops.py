"""Names torchmetrics imports when torchvision is importable; the gauntlet's notebooks never call them."""


def _missing(name):
    def op(*args, **kwargs):
        raise NotImplementedError(f"torchvision.ops.{name} is not part of the gauntlet's torchvision stand-in")

    op.__name__ = name
    return op


box_area = _missing("box_area")
box_convert = _missing("box_convert")
box_iou = _missing("box_iou")
complete_box_iou = _missing("complete_box_iou")
distance_box_iou = _missing("distance_box_iou")
generalized_box_iou = _missing("generalized_box_iou")
