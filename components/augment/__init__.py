"""The augment stage (stage.py): a Beam pipeline writing augmented copies of the train split.

augmentations.py holds the geometric and photometric operations, which move boxes and masks
with the pixels; only this stage uses them.
"""
