"""Our Keras layers, one per file, each registered serialisable (package `convpipe`).

Add an import line here when adding a layer file.
"""
from models.layers.select_frame import SelectFrame  # noqa: F401
