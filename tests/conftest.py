"""Test-wide settings: quiet TensorFlow, a CPU split into two logical devices (for MirroredStrategy)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")
