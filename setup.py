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
        # [aws]: Beam's own S3 filesystem (boto3), through which ingest's and augment's workers write an s3:// root;
        # pip picks the boto3 whose botocore fits aiobotocore's pin (s3fs): boto3 1.43.117 beside aiobotocore 3.10.0
        "apache-beam[aws]>=2.77,<2.78",
        # beam.runner=dask: Beam's DaskRunner (apache-beam[dask] asks for >=2024.4.2); 2026.8 is the release tested here
        "dask[bag]>=2026.8.0,<2026.9",
        "distributed>=2026.8.0,<2026.9",
        "google-crc32c>=1.5",  # Beam's WriteToTFRecord needs a CRC32C implementation
        "pydantic>=2.6,<3",
        "fasteners>=0.19",
        "rich>=13",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pillow>=10",
        "apscheduler>=3.10,<4",
        "jsonschema>=4.20",
        "sqlalchemy>=2.0,<2.2",  # the metadata store (pipeline/metadata.py), SQLite or Postgres
        "alembic>=1.13,<2",  # its schema revisions (pipeline/migrations/)
        "psycopg[binary]>=3.2,<4",  # --metadata postgresql+psycopg://...
        "fsspec>=2024.6",  # artifact roots as URLs (pipeline/filesystem.py)
        "s3fs>=2024.6",  # ... s3:// among them; keep it on the release that matches fsspec
        "pyyaml>=6",  # the yolo source reads data.yaml
        # export.formats (components/export/): checked with pip beside tensorflow 2.21 and protobuf 6.33
        "tf2onnx>=1.17,<1.18",  # the ONNX converter (pulls onnx 1.23)
        "onnxruntime>=1.32,<1.33",  # runs model.onnx in export's check
        "ai-edge-litert>=2.3,<2.4",  # the LiteRT interpreter for model.tflite (tf.lite.Interpreter is deprecated)
    ],
    extras_require={
        # pycocotools: the mAP reference; moto[server] and pgserver: the S3 and Postgres servers the tests start
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pycocotools>=2.0.7", "moto[server]>=5.2.6,<6", "pgserver>=0.1.4",
                 "boto3>=1.34"],
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
    },
    entry_points={"console_scripts": ["convpipe=convpipe.cli:main"]},
)
