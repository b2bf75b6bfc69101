"""Served models: the TF Serving layout, the serving signatures, loading and probing a version.

Shared by export (writes a version), evaluate (compares with the version served now) and predict
(runs a version on image files, with heatmaps for a classifier):
- layout.py: `<serving_root>/<model_name>/<version>/` and each version's `assets.extra/convpipe.json`.
- signature.py: the `serving_default` (encoded bytes) and `serving_images` signatures, and the
  decode they share with the training reader.
- served_model.py: a version loaded in this process.
- probe.py: a version run in a fresh process, as a server would load it (the export check).
- rest.py: TF Serving's REST request and response mapping.
- predict.py, heatmap.py: `convpipe predict` and its probability maps.
The names below are this package's API: `from components import serving; serving.version_dir(...)`.
"""
from components.serving.layout import INFO_FILE, read_info, version_dir, versions  # noqa: F401
from components.serving.probe import probe_in_fresh_process, run_in_fresh_process  # noqa: F401
from components.serving.rest import RestError, rest_predict  # noqa: F401
from components.serving.served_model import ServedModel  # noqa: F401
from components.serving.signature import (  # noqa: F401
    BYTES_INPUT, BYTES_SIGNATURE, IMAGES_INPUT, IMAGES_SIGNATURE, OUTPUTS, decode_batch, decode_images,
    export_archive, image_archive, write_archive, write_saved_model)
