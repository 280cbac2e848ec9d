"""`data.source: text`: labelled texts become a Dataset of token-id splits, with the tokenizer as data.

The tokenizer is the user's (`data.text.tokenizer`) or a WordPiece vocabulary trained here on the
training texts only (val and test never shape it). Either way its JSON travels with the data set
(`task_files`), so the export stage writes it beside the ONNX and every bundle ships it: the
device tokenises raw text exactly as training did.
"""

from __future__ import annotations

import numpy as np

from compress.config import DataConfig, TextConfig
from compress.data.dataset import Dataset, seeded_split
from compress.tasks.text_classification.text import TextRecords, read_text_split, read_texts
from compress.tasks.text_classification.text_split import TextSplit
from compress.tasks.text_classification.tokenizer import TOKENIZER_FILE, load_tokenizer, pad_id, tokenizer_spec, train_wordpiece


def _held_out(records: TextRecords, fraction: float, seed: int) -> tuple[TextRecords, TextRecords]:
    kept, held, _, _ = seeded_split(np.arange(len(records)), records.labels, fraction, seed)
    return records.subset(np.sort(kept)), records.subset(np.sort(held))


def load_text_dataset(cfg: DataConfig, options: TextConfig, seed: int) -> Dataset:
    train = read_texts(cfg.path, cfg.columns, field="data.path")
    classes = train.classes
    test = (read_texts(cfg.test_path, cfg.columns, classes, "data.test_path") if cfg.test_path is not None
            else read_text_split(cfg.path, "test", cfg.columns, classes))
    if test is None and cfg.test_fraction is not None:
        train, test = _held_out(train, cfg.test_fraction, seed)
    val = (read_texts(cfg.val_path, cfg.columns, classes, "data.val_path") if cfg.val_path is not None
           else read_text_split(cfg.path, "validation", cfg.columns, classes))
    if val is None:
        fraction = cfg.val_fraction / (1 - cfg.test_fraction) if cfg.test_fraction and cfg.test_path is None \
            else cfg.val_fraction
        train, val = _held_out(train, fraction, seed)
    if options.tokenizer is not None:
        tokenizer = load_tokenizer(options.tokenizer, "data.text.tokenizer")
    else:
        tokenizer = train_wordpiece(train.texts, options.vocab_size, options.lowercase)
    spec = tokenizer_spec(TOKENIZER_FILE, options.max_length, options.lowercase, pad_id(tokenizer))["text"]
    spec["vocab_size"] = int(tokenizer.get_vocab_size())

    def split(records: TextRecords | None) -> TextSplit | None:
        return TextSplit.from_records(records, tokenizer, options.max_length) if records is not None else None

    return Dataset(split(train), split(val), [str(name) for name in classes], test=split(test), task_spec=spec,
                   task_files={TOKENIZER_FILE: tokenizer.to_str(pretty=True)})
