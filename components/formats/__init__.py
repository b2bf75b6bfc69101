"""Export formats besides the SavedModel: TFLite (LiteRT) and ONNX, each converted from the
version's float signature, checked in a fresh process against the Keras model, and refused above
its tolerance (components/formats/stage_formats.py)."""
