"""train.precision: float32 by default and bit for bit repeatable; mixed_bfloat16 trains with float32
outputs and exports float32 signatures; auto picks by hardware and says why."""
import json

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from tests.components import classification_fixtures as fx
from tests.components.train.test_train import run_train


def test_auto_picks_bfloat16_on_amx_cpus_and_bfloat16_tensor_core_gpus():
    from components.training.precision import choose

    assert choose("float32", on_gpu=True) == ("float32", "train.precision=float32")
    policy, reason = choose("auto", on_gpu=False, flags={"avx512f", "amx_bf16", "avx512_bf16"})
    assert policy == "mixed_bfloat16" and "AMX-BF16" in reason
    policy, reason = choose("auto", on_gpu=False, flags={"avx512f", "avx512_bf16"})
    assert policy == "float32" and "no AMX-BF16" in reason
    assert choose("auto", on_gpu=False, flags={"avx2"})[0] == "float32"
    assert choose("auto", on_gpu=True, capabilities=[(9, 0)])[0] == "mixed_bfloat16"
    assert choose("auto", on_gpu=True, capabilities=[(8, 0), (7, 5)])[0] == "mixed_float16"  # the slowest decides
    assert choose("auto", on_gpu=True, capabilities=[(6, 1)])[0] == "float32"


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    from components.training.precision import cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: x\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_float32_is_the_default_and_the_old_key_names_the_new_one():
    assert load_config(None, []).train.precision == "float32"
    with pytest.raises(ConfigError, match=r"train.mixed_precision was renamed train.precision"):
        load_config(None, ['train.mixed_precision="auto"'])


def test_float32_losses_are_bit_identical_across_two_runs(tmp_path):
    """The README's promise: the same config and Examples give the same losses bit for bit (with the
    end-of-epoch work on its background thread, which must not touch what is trained)."""
    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, epochs=3, save_freq_steps=2)
    histories = []
    for run in (1, 2):
        ctx = run_train(tmp_path, config, examples_dir, execution_id=run, work_dir=tmp_path / f"work-{run}")
        histories.append(json.loads((ctx.outputs["model"] / "history.json").read_text())["history"])
        assert any("run beside the next epoch" in m for m in fx.messages(ctx))
    assert histories[0]["loss"] == histories[1]["loss"] and len(histories[0]["loss"]) == 3
    assert histories[0]["val_loss"] == histories[1]["val_loss"]


def test_mixed_bfloat16_trains_with_float32_outputs_and_exports_float32_signatures(tmp_path):
    import keras
    import tensorflow as tf

    from components import serving
    from components.training.model_artifact import load_keras_model

    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, precision="mixed_bfloat16", epochs=1)
    ctx = run_train(tmp_path, config, examples_dir)
    trial = json.loads((ctx.outputs["model"] / "trial.json").read_text())
    assert trial["params"]["precision"] == "mixed_bfloat16"
    assert any(m == "precision mixed_bfloat16 (train.precision=mixed_bfloat16)" for m in fx.messages(ctx))
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored afterwards
    model = load_keras_model(ctx.outputs["model"])
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in model.layers)
    assert model.output.dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)  # bfloat16 compute, float32 weights and statistics

    schema = json.loads((examples_dir / "schema.json").read_text())
    serving.write_saved_model(model, schema["class_names"], schema["image_size"], tmp_path / "served", {})
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    by_images = loaded.signatures[serving.IMAGES_SIGNATURE]
    assert by_images.structured_input_signature[1][serving.IMAGES_INPUT].dtype == tf.float32
    assert by_images.structured_outputs["probabilities"].dtype == tf.float32
    assert loaded.signatures[serving.BYTES_SIGNATURE].structured_outputs["probabilities"].dtype == tf.float32
    images = np.random.default_rng(0).random((3, *schema["image_size"]), np.float32)
    probabilities = by_images(**{serving.IMAGES_INPUT: tf.constant(images)})["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
