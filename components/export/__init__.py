"""The export stage (stage.py): the blessed model as a SavedModel in a TF Serving layout, checked
in a fresh process. The signatures themselves are the task adapters' (components/tasks/) over
components/serving/, which predict and evaluate use too.
"""
