"""The pipeline's stages and what they share.

The seven stages, one package each, in the order they run (convpipe/stages.py lists them):
    ingest/  validate/  augment/  train/  evaluate/  compare/  export/
Each has `stage.py` (`STAGE = pipeline.stage.Stage(...)`: inputs, outputs, parameters, executor)
and beside it what only that stage uses. Stages never import each other; they pass artifacts.

What several stages share, each in a package named for what it is:
    examples/  the Examples artifact: feature keys, encode/decode, shard files, the tf.data reader
    sources/   the data sources ingest reads (one module each)
    tasks/     what train, evaluate and export do differently per task (classification, detection, ...)
    training/  the training loop, strategies, backups, TensorBoard; the Model artifact's files
    serving/   the TF Serving layout, the serving signatures, the fresh-process probe, predict
    reports/   report.html's page, sample grids and mask pictures
"""
