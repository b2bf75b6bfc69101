"""`ingest.source`: one model per data source, told apart by `name`."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from pipeline.config.base import Fraction, PositiveInt, Strict


# --------------------------------------------------------------------------------------------
# sources (one model per source, chosen by `name`)
# --------------------------------------------------------------------------------------------
class SyntheticSource(Strict):
    """Shapes on noisy backgrounds, generated from one seed: labels, masks, boxes and clips."""
    name: Literal["synthetic"] = "synthetic"
    num_examples: PositiveInt = 900
    image_size: PositiveInt = 32
    num_classes: Annotated[int, Field(strict=True, ge=2, le=6)] = 3
    max_shapes: PositiveInt = Field(1, description="Shapes per image (detection and segmentation use several).")
    min_shape_size: Fraction = 0.3
    max_shape_size: Fraction = 0.6
    noise: Annotated[float, Field(ge=0.0)] = 0.08
    num_frames: PositiveInt = Field(8, description="Frames per clip for task=video.")
    seed: int = 0


class ImageFolderSource(Strict):
    """One sub-folder per class, images inside (PNG, JPEG, GIF, BMP)."""
    name: Literal["image_folder"] = "image_folder"
    path: str
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".gif", ".bmp"])
    channels: Literal[1, 3] = Field(3, description="Decode every image to this many channels (3: RGB, 1: grey).")


class TfdsSource(Strict):
    """Any TFDS dataset already prepared in `data_dir` (no download at run time unless asked)."""
    name: Literal["tfds"] = "tfds"
    dataset: str
    data_dir: Optional[str] = None
    download: bool = False
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "test": "test"},
        description="TFDS split expression per source split; records are re-split by id hash.")
    features: dict[str, str] = Field(
        default_factory=lambda: {"image": "image", "label": "label"},
        description="Our field name -> TFDS feature name (image, label, mask, boxes, box_labels, frames).")


class CocoSource(Strict):
    """A COCO instances JSON and its image directory."""
    name: Literal["coco"] = "coco"
    annotations: str
    images: str


class VocSource(Strict):
    """A Pascal VOC tree: Annotations/*.xml, JPEGImages/, ImageSets/Main/<image_set>.txt (when present)."""
    name: Literal["voc"] = "voc"
    path: str = Field(..., description="The folder holding Annotations/ and JPEGImages/ (e.g. VOCdevkit/VOC2007).")
    image_set: Optional[str] = Field(
        "trainval", description="Read the ids in ImageSets/Main/<image_set>.txt; when the default's file is absent, "
                                "or with null, every Annotations/*.xml.")
    class_names: Optional[list[str]] = Field(
        None, description="Object names in label order (VOC's 20); default the sorted names found in the XMLs.")


class YoloSource(Strict):
    """A YOLO tree: images/, labels/*.txt (class cx cy w h, normalised) and data.yaml naming the classes."""
    name: Literal["yolo"] = "yolo"
    path: str = Field(..., description="The folder holding images/ and labels/.")
    data_yaml: Optional[str] = Field(None, description="The YAML with `names`; default <path>/data.yaml.")
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp"],
                                  description="Image file extensions under images/.")


class MaskFolderSource(Strict):
    """images/ and masks/ with matching file names; masks are PNG class ids or palette PNGs."""
    name: Literal["mask_folder"] = "mask_folder"
    path: str
    num_classes: Annotated[int, Field(strict=True, ge=2)] = Field(
        ..., description="Mask ids 0..num_classes-1 are classes, 0 usually the background.")
    class_names: Optional[list[str]] = Field(None, description="One name per class id; default background, class_1, ...")
    ignore_value: Optional[int] = Field(255, description="Mask value that marks pixels to leave out of loss and metrics.")
    channels: Literal[1, 3] = Field(3, description="Decode every image to this many channels (3: RGB, 1: grey).")
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp"],
                                  description="Image file extensions under images/; masks are always .png.")


class VideoFolderSource(Strict):
    """One sub-folder per class; each clip an animated GIF or a folder of numbered frames."""
    name: Literal["video_folder"] = "video_folder"
    path: str
    num_frames: PositiveInt = 8
    length_policy: Literal["sample", "pad"] = "sample"


Source = Annotated[
    Union[SyntheticSource, ImageFolderSource, TfdsSource, CocoSource, VocSource, YoloSource, MaskFolderSource,
          VideoFolderSource],
    Field(discriminator="name"),
]


