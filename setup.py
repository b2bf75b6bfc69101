"""Packaging for convpipe: four packages (models, pipeline, components, and convpipe, which composes them
into the `convpipe` command).

Version ranges are the ones that install together on Python 3.11 here; keras >= 3.15.1 because
earlier 3.x releases have model-loading CVEs.
"""
from setuptools import find_packages, setup

setup(
    name="convpipe",
    version="0.1.0",
    description="A computer-vision training pipeline on TensorFlow and Keras with TFX-style stages.",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*", "models", "models.*",
                                    "convpipe", "convpipe.*", "benchmarks", "benchmarks.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15.1,<4",
        "tensorboard>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib_resources>=6",  # TFDS builders need it (etils.epath) and do not always pull it in
        "tensorflow-metadata>=1.21,<2",
        "apache-beam>=2.77,<2.78",
        "google-crc32c>=1.5",  # Beam's WriteToTFRecord needs a CRC32C implementation
        "pydantic>=2.6,<3",
        "fasteners>=0.19",
        "rich>=13",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pillow>=10",
        "apscheduler>=3.10,<4",
        "jsonschema>=4.20",
        "pyyaml>=6",  # the yolo source reads data.yaml
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pycocotools>=2.0.7"],  # pycocotools: the mAP reference
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
    },
    entry_points={"console_scripts": ["convpipe=convpipe.cli:main"]},
)
