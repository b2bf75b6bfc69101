"""Multitask: one shared backbone, one head per task.

- network.py: the network and its heads (classification, segmentation, detection).
- task_weighting.py: static and uncertainty weighting of the task losses.
- losses.py: the joint loss the training loop differentiates.
- training.py: schedules (joint, alternating, consecutive), missing targets, forgetting.
"""
