"""Detection: one registered "detector" builder over three ways to find objects.

- detector.py: the builder (`stage: one | two | sliding_window`) and the interface all three share.
- one_stage.py, two_stage.py, sliding_window.py: the three detectors.
- feature_pyramid.py: the backbone's pyramid the one- and two-stage detectors read.
- roi_align.py: RoIAlign, the two-stage detector's region pooling (and the sliding window's crops).
- anchors.py, boxes.py, nms.py: anchor grids and matching, box formats and IoU, non-max suppression.
- losses.py, metrics.py: the detection losses (focal, smooth L1, GIoU) and COCO-style mAP.
"""
