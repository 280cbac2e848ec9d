"""The `data` section: where the inputs come from, how images are decoded, augmented and split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compress.config.base import ADDED_LATER, Strict


class TransferConfig(Strict):
    """Inputs the student learns from through the teacher alone (no labels needed)."""

    source: str | None = Field(None, description="extra unlabelled inputs: npz | imagefolder | package.module:function")
    path: Path | None = None
    image_size: int | None = Field(None, ge=1)
    grayscale: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)
    labeled_fraction: float | None = Field(None, gt=0, le=1, description="keep labels on this part of train only")

    @model_validator(mode="after")
    def _something_to_transfer(self) -> "TransferConfig":
        if self.source is None and self.labeled_fraction is None:
            raise ValueError("give a source of unlabelled inputs, or labeled_fraction, or both")
        if self.source in ("npz", "imagefolder") and self.path is None:
            raise ValueError(f"transfer source '{self.source}' needs data.transfer.path")
        if self.source not in (None, "digits", "npz", "imagefolder") and ":" not in self.source:
            raise ValueError(f"unknown transfer source '{self.source}': use digits, npz, imagefolder or package.module:function")
        return self


class AugmentConfig(Strict):
    """Training augmentation of image files (torchvision.transforms.v2); evaluation never augments.
    mixup/cutmix: alpha over each batch (0: off)."""

    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area range of the random resized crop")
    flip: bool = True
    color_jitter: float = Field(0.0, ge=0, description="brightness, contrast and saturation jitter")
    randaugment: bool = False
    randaugment_ops: int = Field(2, ge=1)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    mixup: float = Field(0.0, ge=0)
    cutmix: float = Field(0.0, ge=0)

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"crop_scale must be 0 < low <= high <= 1, got {list(value)}")
        return value


class TextConfig(Strict):
    """How texts become token ids (compress.tasks.text_classification.tokenizer): the same steps run on the device."""

    tokenizer: Path | None = Field(None, description="tokenizer.json, or a Hugging Face folder holding one; unset: "
                                                     "a WordPiece vocabulary is trained here on the training texts")
    max_length: int = Field(128, ge=4, le=8192, description="tokens per text, [CLS] and [SEP] included")
    vocab_size: int = Field(4000, ge=100, description="size of the vocabulary trained here (no tokenizer given)")
    lowercase: bool = True


class CorpusConfig(Strict):
    """A causal LM's text corpus (compress.tasks.causal_lm): documents split by document, packed into blocks."""

    block_size: int = Field(128, ge=8, le=32768, description="tokens per training block (at most the model's positions)")
    tokenizer: Path | None = Field(None, description="a folder with tokenizer.json; unset: the teacher's hf: folder, "
                                                    "else a byte-level BPE trained here on the training documents")
    vocab_size: int = Field(2048, ge=256, description="size of the vocabulary trained here (no tokenizer given)")
    text_column: str = Field("text", description="JSONL/CSV/Hugging Face datasets: the column holding the text")
    prompt_column: str | None = Field(None, description="JSONL/CSV/Hugging Face datasets of prompt/response pairs: "
                                                        "the prompt's column; losses and perplexity count the "
                                                        "response's tokens only")
    response_column: str = Field("response", description="with prompt_column: the response's column")
    suffixes: list[str] = Field([".txt", ".md", ".py", ".rst"], description="folders: the files read as documents")
    max_documents: int | None = Field(None, ge=1, description="read at most this many documents (in file order)")
    prompts: Path | None = Field(None, description="UTF-8 file, one prompt per line (\\n for a newline): greedy "
                                                  "generations shown in the report; unset: starts of test documents")


class DetectionAugmentConfig(Strict):
    """Training augmentation of a detector's images and boxes together (torchvision.transforms.v2 on tv_tensors)."""

    flip: bool = True
    scale: tuple[float, float] = Field((0.75, 1.25), description="scale jitter range (RandomAffine)")
    translate: float = Field(0.1, ge=0, lt=0.5)
    color: float = Field(0.2, ge=0, description="brightness, contrast and saturation jitter")
    mosaic: float = Field(0.0, ge=0, le=1, description="probability of a 4-image mosaic")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"scale must be 0 < low <= high, got {list(value)}")
        return value


class DetectionConfig(Strict):
    """An object detector's data (compress.tasks.object_detection): COCO JSON or the YOLO layout."""

    image_size: int = Field(320, ge=32, le=4096, description="letterbox size: the longer side, padded to a square")
    images: Path | None = Field(None, description="coco: the images folder (unset: the JSON's folder, then images/)")
    names: list[str] | None = Field(None, description="yolo: class names (unset: data.yaml or classes.txt)")
    augment: DetectionAugmentConfig = Field(default_factory=DetectionAugmentConfig)
    score_threshold: float = Field(0.05, ge=0, lt=1, description="detections kept above this score (before NMS)")
    iou_threshold: float = Field(0.6, gt=0, le=1, description="class-aware NMS overlap")
    max_detections: int = Field(100, ge=1, le=10000, description="per image, after NMS")

    @field_validator("image_size")
    @classmethod
    def _stride_multiple(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"image_size must be a multiple of 32 (the detector's coarsest stride), got {value}")
        return value


# Sources read lazily, one image at a time (compress.data.records); the rest are arrays.
STREAM_SOURCES = ("imagefolder", "manifest", "hf", "webdataset")
# Labelled texts: a CSV/JSONL file (text,label), parquet/arrow, or a Hugging Face dataset saved to disk.
TEXT_SOURCES = ("text",)
# A causal LM's documents: text files or folders, JSONL/CSV, a Hugging Face dataset on disk; python-stdlib: the
# running interpreter's own library sources (a corpus every machine has).
CORPUS_SOURCES = ("corpus", "python-stdlib")
# Boxes: COCO JSON (data.path the train JSON; val_path, test_path the others) or the YOLO layout (data.path its root).
DETECTION_SOURCES = ("coco", "yolo")
FILE_SOURCES = ("npz",) + STREAM_SOURCES + TEXT_SOURCES + ("corpus",) + DETECTION_SOURCES
SOURCES = ("digits", "python-stdlib") + FILE_SOURCES


class DataConfig(Strict):
    source: str = Field("digits", description="digits | npz | imagefolder | manifest | hf | webdataset | "
                                              "package.module:function")
    path: Path | None = None
    val_path: Path | None = Field(None, json_schema_extra=ADDED_LATER,
                                  description="a separate validation set of the same kind; else val_fraction")
    columns: dict[str, str] = Field(default_factory=dict, json_schema_extra=ADDED_LATER,
                                    description="manifest/hf/webdataset: {image: ..., label: ...} names")
    channels: Literal[1, 3] | None = Field(None, json_schema_extra=ADDED_LATER,
                                           description="convert every image to 1 or 3 channels (unset: mixed is an error)")
    eval_resize: int | None = Field(None, ge=1, json_schema_extra=ADDED_LATER,
                                    description="resize the shorter side to this, then centre-crop image_size")
    mean: list[float] | Literal["model"] | None = Field(None, json_schema_extra=ADDED_LATER,
                                                       description="model: the teacher's (timm, hf, torchvision); "
                                                                   "unset: measured on train")
    std: list[float] | None = Field(None, json_schema_extra=ADDED_LATER)
    augment: AugmentConfig | None = Field(None, json_schema_extra=ADDED_LATER)
    skip_bad_images: bool = Field(False, json_schema_extra=ADDED_LATER, description="skip and count unreadable images")
    workers: int | None = Field(None, ge=0, json_schema_extra=ADDED_LATER,
                                description="DataLoader workers for image sources (default min(4, CPUs))")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float | None = Field(None, gt=0, lt=1, json_schema_extra=ADDED_LATER,
                                        description="hold out this part of the data as a test split: epochs "
                                                    "are chosen on val, the report's top-1 is on test")
    test_path: Path | None = Field(None, json_schema_extra=ADDED_LATER,
                                   description="a separate labelled test set of the same source kind "
                                               "(npz file, or imagefolder folder such as images/test)")
    normalize: bool = True
    image_size: int | None = Field(None, ge=1, description="imagefolder: resize to this square size")
    grayscale: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)
    transfer: TransferConfig | None = Field(None, description="unlabelled inputs for KD (see compress.data.transfer)")
    text: TextConfig | None = Field(None, json_schema_extra=ADDED_LATER,
                                    description="source text: tokenizer and max_length (defaults when unset)")
    corpus: CorpusConfig | None = Field(None, json_schema_extra=ADDED_LATER,
                                        description="causal LM corpora: block size, tokenizer, text column")
    detection: DetectionConfig | None = Field(None, json_schema_extra=ADDED_LATER,
                                              description="coco/yolo: image size, class names, augmentation")

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.source in FILE_SOURCES and self.path is None:
            raise ValueError(f"source '{self.source}' needs data.path")
        if self.source not in SOURCES and ":" not in self.source:
            raise ValueError(f"unknown data source '{self.source}': use {', '.join(SOURCES)} or package.module:function")
        if self.val_path is not None and self.source not in FILE_SOURCES:
            raise ValueError(f"val_path needs a source with files ({', '.join(FILE_SOURCES)}); "
                             f"for '{self.source}' use val_fraction")
        if self.mean == "model":
            if self.std is not None:
                raise ValueError("mean: model takes the model's std too: leave std out")
        elif (self.mean is None) != (self.std is None) or (self.std is not None and min(self.std, default=1) <= 0):
            raise ValueError(f"give both mean and std (std positive), or neither; got mean {self.mean}, std {self.std}")
        return self

    streams = property(lambda self: self.source in STREAM_SOURCES, doc="read one image at a time (not arrays)")
    @model_validator(mode="after")
    def _one_test_split(self) -> "DataConfig":
        if self.test_fraction is not None and self.test_path is not None:
            raise ValueError("give test_fraction (a part of data.path) or test_path (a separate test set), not both")
        if self.test_path is not None and self.source not in FILE_SOURCES:
            raise ValueError(f"test_path needs a source with files ({', '.join(FILE_SOURCES)}); "
                             f"for '{self.source}' use test_fraction")
        if self.test_fraction is not None and self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError(f"test_fraction {self.test_fraction:g} + val_fraction {self.val_fraction:g} leave under "
                             "10% of the data to train on")
        return self
