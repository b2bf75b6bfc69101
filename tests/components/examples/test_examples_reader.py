"""The tf.data reader: an order fixed by the shards and the seed (so a resumed epoch's skip(k) is
right), the decoded train split cached once and reshuffled per epoch, and the "auto" size rule."""
import numpy as np
import pytest

from components import examples as ex
from components.training.train_input import CACHE_LIMIT_BYTES, TrainInput, cached_bytes, epoch_seed, should_cache
from pipeline.config import TrainSection
from tests.components import classification_fixtures as fx

TRAIN = 24
BATCH = 4


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    return fx.write_examples(tmp_path_factory.mktemp("reader") / "examples",
                             counts={"train": TRAIN, "eval": 4, "test": 4}, shards=3)


def batch_ids(dataset) -> list[list[str]]:
    return [[i.decode() for i in batch[2]["id"].numpy()] for batch in dataset]


def reader(examples_dir, seed, buffer=1024, **kwargs):
    return ex.make_dataset(examples_dir, "train", BATCH, shuffle=True, seed=seed, shuffle_buffer=buffer,
                           with_meta=True, **kwargs)


def train_input(examples_dir, cache, seed=3, buffer=1024):
    train = TrainSection(seed=seed, shuffle_buffer=buffer, cache=cache)
    return TrainInput(examples_dir, BATCH, train, ex.read_schema(examples_dir), TRAIN)


@pytest.mark.parametrize("buffer", [1024, 5], ids=["buffer-holds-split", "buffer-smaller-shards-shuffled"])
def test_the_same_seed_gives_the_same_batches_and_each_example_once(examples_dir, buffer):
    first, second = batch_ids(reader(examples_dir, 7, buffer)), batch_ids(reader(examples_dir, 7, buffer))
    assert first == second
    assert sorted(i for batch in first for i in batch) == sorted(f"train-{i}" for i in range(TRAIN))
    assert [len(batch) for batch in first] == [BATCH] * (TRAIN // BATCH)


def test_every_epoch_has_its_own_order(examples_dir):
    orders = [batch_ids(reader(examples_dir, epoch_seed(0, epoch))) for epoch in (1, 2, 3)]
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    assert epoch_seed(2, 5) == 2 * 10007 + 5


@pytest.mark.parametrize("buffer", [1024, 5])
def test_skip_after_a_rebuild_gives_exactly_the_batches_not_yet_seen(examples_dir, buffer):
    full = batch_ids(reader(examples_dir, 11, buffer))
    assert batch_ids(reader(examples_dir, 11, buffer).skip(2)) == full[2:]


def test_cached_and_uncached_readers_yield_the_same_batches(examples_dir):
    plain = list(reader(examples_dir, 5))
    decoded = ex.decoded_split(examples_dir, "train", cache=True)
    for _ in range(2):  # the first pass fills the cache, the second reads it
        cached = list(reader(examples_dir, 5, decoded=decoded))
        assert len(cached) == len(plain) == TRAIN // BATCH
        for (x, y, meta), (cx, cy, cmeta) in zip(plain, cached):
            assert meta["id"].numpy().tolist() == cmeta["id"].numpy().tolist()
            np.testing.assert_array_equal(x.numpy(), cx.numpy())
            np.testing.assert_array_equal(y.numpy(), cy.numpy())


@pytest.mark.parametrize("whole_epoch", [True, False], ids=["epoch-at-once", "batch-by-batch"])
@pytest.mark.parametrize("buffer", [1024, 5], ids=["buffer-holds-split", "buffer-smaller"])
def test_gathered_epochs_are_the_cached_readers_batches(examples_dir, buffer, whole_epoch, monkeypatch):
    """The trainer's cached input shuffles indices and gathers (train_input.gathered_epoch), the whole
    epoch at once or, past EPOCH_LIMIT_BYTES, batch by batch: the same batches either way, bit for bit,
    as the reader shuffling the decoded examples with the same seed and buffer."""
    from components.training import train_input as train_input_module

    if not whole_epoch:
        monkeypatch.setattr(train_input_module, "EPOCH_LIMIT_BYTES", 0)
    decoded = ex.decoded_split(examples_dir, "train", cache=True)
    data = train_input(examples_dir, cache=True, buffer=buffer)
    for epoch in (1, 2):
        seed = epoch_seed(3, epoch)
        expected = [(x.numpy(), y.numpy()) for x, y, _ in reader(examples_dir, seed, buffer, decoded=decoded)]
        got = [(x.numpy(), y.numpy()) for x, y in data(epoch)]
        assert len(got) == len(expected) == TRAIN // BATCH
        for (x, y), (gx, gy) in zip(expected, got):
            assert x.dtype == gx.dtype and y.dtype == gy.dtype
            np.testing.assert_array_equal(x, gx)
            np.testing.assert_array_equal(y, gy)


def test_batches_hold_the_records_pixels_scaled_to_one_and_one_hot_labels(examples_dir):
    decoded = ex.decoded_split(examples_dir, "train", cache=True)
    x, y, meta = next(iter(reader(examples_dir, 1, decoded=decoded)))
    assert x.dtype.name == "float32" and y.dtype.name == "float32"
    for image, label, example_id in zip(x.numpy(), y.numpy(), meta["id"].numpy()):
        record = fx.tiny_record(int(example_id.decode().split("-")[1]), "train")
        np.testing.assert_allclose(image, record["image"] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(label, np.eye(3)[record["label"]])


def test_epochs_share_one_cache_filled_by_the_first(examples_dir, tmp_path):
    """After the first epoch the shards are gone: later epochs (also through a strategy's data
    auto-sharding, as the loop distributes them) can only come from the cache."""
    import shutil

    import tensorflow as tf

    copy = tmp_path / "examples"
    shutil.copytree(examples_dir, copy)
    data = train_input(copy, cache=True)
    assert data.cached and "cached in memory" in data.describe()
    assert len(list(data(1))) == TRAIN // BATCH
    shutil.rmtree(copy / "train")

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    strategy = tf.distribute.get_strategy()
    for epoch in (2, 3):
        distributed = strategy.experimental_distribute_dataset(data(epoch).with_options(options))
        labels = [y.numpy().argmax(-1) for _, y in distributed]
        assert sorted(np.concatenate(labels).tolist()) == sorted(i % 3 for i in range(TRAIN))


def test_a_resumed_epoch_on_a_fresh_cache_continues_the_same_order(examples_dir):
    """The killed run's epoch 2 came from a cache filled in epoch 1; the resumed run's starts empty."""
    def ids(dataset):
        return [x.numpy().tobytes() for x, _ in dataset]

    before_kill = train_input(examples_dir, cache=True)
    ids(before_kill(1))
    full = ids(before_kill(2))
    resumed = train_input(examples_dir, cache=True)
    assert ids(resumed(2).skip(3)) == full[3:]
    assert ids(train_input(examples_dir, cache=False)(2)) == full


def test_cached_bytes_by_hand():
    # classification 8x8x3: pixels 192 + id and source 2*64 + label 8; 4 tensors of 192 bytes
    classification = {"task": "classification", "image_size": [8, 8, 3], "class_names": ["a", "b"]}
    assert cached_bytes(classification, 10) == 10 * (192 + 128 + 8 + 4 * 192)
    # segmentation 4x4x1: pixels 16 + mask 16 + strings 128; image, mask, id, source
    segmentation = {"task": "segmentation", "image_size": [4, 4, 1], "class_names": ["bg", "a"]}
    assert cached_bytes(segmentation, 1) == 16 + 16 + 128 + 4 * 192
    # detection: 32 boxes of 16 bytes, labels and crowd_labels of 4 each; 6 tensors
    detection = {"task": "detection", "image_size": [4, 4, 1], "class_names": ["a"]}
    assert cached_bytes(detection, 1) == 16 + 128 + 32 * (16 + 8) + 6 * 192
    # video: 8 frames of 4x4x3
    video = {"task": "video", "image_size": [4, 4, 3], "num_frames": 8, "class_names": ["a"]}
    assert cached_bytes(video, 2) == 2 * (8 * 48 + 128 + 8 + 4 * 192)


def test_auto_caches_what_fits_under_the_limit():
    small = {"task": "classification", "image_size": [32, 32, 3], "class_names": ["a", "b"]}
    per_example = cached_bytes(small, 1)
    fits = CACHE_LIMIT_BYTES // per_example
    assert should_cache("auto", small, fits) and not should_cache("auto", small, fits + 1)
    imagenet_like = {"task": "classification", "image_size": [224, 224, 3], "class_names": ["a"] * 1000}
    assert not should_cache("auto", imagenet_like, 10_000)  # 1.5 GB
    assert should_cache(True, imagenet_like, 10_000) and not should_cache(False, small, 10)
    with pytest.raises(ValueError, match="train.cache: expected true, false or 'auto', got 'yes'"):
        should_cache("yes", small, 10)


def test_train_input_follows_the_setting(examples_dir):
    assert train_input(examples_dir, cache="auto").cached  # 24 tiny images
    uncached = train_input(examples_dir, cache=False)
    assert not uncached.cached and "decoded every epoch" in uncached.describe()


def test_the_eval_split_is_decoded_once_and_read_in_its_fixed_order(examples_dir, tmp_path):
    import shutil

    from components.training.train_input import EvalInput

    copy = tmp_path / "examples"
    shutil.copytree(examples_dir, copy)
    schema = ex.read_schema(copy)
    data = EvalInput(copy, BATCH, TrainSection(cache=True), schema, 4)
    plain = [y.numpy().tolist() for _, y in ex.make_dataset(copy, "eval", BATCH)]
    assert [y.numpy().tolist() for _, y in data()] == plain
    shutil.rmtree(copy / "eval")  # a second epoch can only come from the cache
    assert [y.numpy().tolist() for _, y in data()] == plain
    assert EvalInput(copy, BATCH, TrainSection(cache=False), schema, 4).decoded is None
