"""Segmentation: per-pixel classes.

- fcn.py: the fully convolutional network and its upsampling choices (nearest neighbour,
  bed of nails, max unpooling, transposed convolution), and a trained classifier made fully
  convolutional for probability maps on bigger images.
- losses.py: per-pixel cross-entropy and focal losses.
- metrics.py: the confusion matrix, per-class IoU and mean IoU.
"""
