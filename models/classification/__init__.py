"""Classification: the CNN classifier whose convolution and pooling arithmetic is explicit (cnn.py).

Its blocks (`conv_block`, `parse_block`) are the backbone the detectors' feature pyramid and the
multitask network reuse.
"""
