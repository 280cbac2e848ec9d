"""BERT-style WordPiece tokenizers with the `tokenizers` library (never `transformers`): train, load, encode.

A tokenizer is one tokenizer.json, the file a bundle ships, so the device reads exactly what the
host trained or was given (a Hugging Face model folder holds one too). `encode` is the device's
own code (deploy/runner/preprocess_text.py), so host and device make the same arrays from the same
texts; `tokenizer_spec` is what a run and a bundle record about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from compress.core.errors import UsageError
from compress.core.fileio import write_text
from deploy.runner.preprocess_text import INPUT_NAMES, padded, token_rows

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first: id 0, as BERT's
TOKENIZER_FILE = "tokenizer.json"
SUBWORD_PREFIX = "##"
PAD_TOKENS = ("[PAD]", "<pad>")  # BERT's, then RoBERTa's and most sentencepiece models'


def _bert_pipeline(lowercase: bool) -> tuple[Any, Any, Any]:
    from tokenizers import decoders, normalizers, pre_tokenizers

    return (normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                       lowercase=lowercase),
            pre_tokenizers.BertPreTokenizer(), decoders.WordPiece(prefix=SUBWORD_PREFIX))


def _continuations(texts: Sequence[str], normalizer: Any, pre_tokenizer: Any, chunk: int = 1000) -> list[str]:
    """"##c" for every character that follows another inside a word, sorted.

    The trainer adds these as it meets them, in the order of a Rust hash map (new each process), and
    merges of equal count are then ordered by those ids: two trainings on the same texts gave
    different vocabularies. Given to it up front, in sorted order, they take the same ids every time.
    """
    chars: set[str] = set()
    for start in range(0, len(texts), chunk):  # a newline splits words as the gap between two texts does
        joined = normalizer.normalize_str("\n".join(texts[start:start + chunk]))
        for word, _ in pre_tokenizer.pre_tokenize_str(joined):
            chars.update(word[1:])
    return [SUBWORD_PREFIX + char for char in sorted(chars)]


def train_wordpiece(texts: Iterable[str], vocab_size: int = 4000, lowercase: bool = True,
                    min_frequency: int = 2) -> Any:
    """A BERT-style tokenizer trained on `texts`: the same texts give the same tokenizer.json, byte for byte.

    [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, "[CLS] text [SEP]" (pairs: "[CLS] a [SEP] b [SEP]", b of
    type 1), words longer than 100 characters become [UNK] as in BERT.
    """
    from tokenizers import Tokenizer, models, trainers

    texts = [str(text) for text in texts]
    normalizer, pre_tokenizer, decoder = _bert_pipeline(lowercase)
    draft = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=SUBWORD_PREFIX))
    draft.normalizer, draft.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS) + _continuations(texts, normalizer, pre_tokenizer),
        continuing_subword_prefix=SUBWORD_PREFIX)
    draft.train_from_iterator(texts, trainer, length=len(texts))
    # Rebuilt from the vocabulary: the draft holds the "##c" pieces as special tokens, which they are not.
    return wordpiece_tokenizer(draft.get_vocab(), lowercase)


def wordpiece_tokenizer(vocab: dict[str, int], lowercase: bool = True) -> Any:
    """A BERT-style tokenizer over a given WordPiece vocabulary (which holds the five special tokens)."""
    from tokenizers import Tokenizer, models, processors

    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"the vocabulary lacks {', '.join(missing)}")
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=SUBWORD_PREFIX,
                                           max_input_chars_per_word=100))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = _bert_pipeline(lowercase)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json of `path`: the file itself, or the one inside a folder (a Hugging Face model folder)."""
    path = Path(path).expanduser()
    return path / TOKENIZER_FILE if path.is_dir() else path


def load_tokenizer(path: str | Path, field: str = "tokenizer") -> Any:
    """The tokenizer in a tokenizer.json (or a folder holding one); a missing or unreadable file is one line.

    `field` names the setting that gave the path, for the message ("tokenizer.json: data.tokenizer: ...").
    """
    from tokenizers import Tokenizer

    file = tokenizer_file(path)
    if not file.is_file():
        raise UsageError(f"{file}: {field}: no such file")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # tokenizers raises plain Exception for a malformed file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{file}: {field}: not a tokenizers tokenizer.json ({first})") from None


def save_tokenizer(tokenizer: Any, path: str | Path) -> Path:
    """Write tokenizer.json atomically (into `path` when it is a folder); the path written."""
    file = Path(path) / TOKENIZER_FILE if Path(path).is_dir() else Path(path)
    write_text(file, tokenizer.to_str(pretty=True))
    return file


def pad_id(tokenizer: Any) -> int:
    """The id padding takes: the tokenizer's own padding setting, else [PAD] or <pad>, else 0."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in PAD_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """int64 (n, L) input_ids, attention_mask, token_type_ids of `texts`, each cut to max_length tokens.

    L is the longest row of this batch (dynamic padding, for training and scoring), or `pad_to`
    (one fixed shape, for export and benchmarks), which must be at least max_length.
    """
    if pad_to is not None and pad_to < max_length:
        raise ValueError(f"pad_to {pad_to} is shorter than max_length {max_length}")
    ids, type_ids, lengths = token_rows(tokenizer, texts, max_length)
    return padded(ids, type_ids, lengths, pad_id(tokenizer), pad_to)


def is_lowercasing(tokenizer: Any) -> bool:
    """Whether the tokenizer's normalizer lowercases (a BertNormalizer's, or a Lowercase step in a Sequence)."""
    import json

    def lowers(step: dict | None) -> bool:
        if not step:
            return False
        if step.get("type") == "Sequence":
            return any(lowers(inner) for inner in step.get("normalizers", []))
        return step.get("type") == "Lowercase" or bool(step.get("lowercase"))

    return lowers(json.loads(tokenizer.to_str()).get("normalizer"))


def tokenizer_spec(tokenizer_json_name: str = TOKENIZER_FILE, max_length: int = 128, lowercase: bool = True,
                   pad_id: int = 0, pad_to: int | None = None,
                   inputs: Sequence[str] = INPUT_NAMES) -> dict[str, Any]:
    """The text preprocessing as data: `{"text": {...}}`, merged into a run's and a bundle's `preprocessing`.

    The device reads the tokenizer file named here from the release folder and repeats max_length,
    pad_id and pad_to (None: the longest text of each call); `inputs` are the arrays the model takes.
    `lowercase` is informative (the tokenizer file itself lowercases or not).
    """
    unknown = [name for name in inputs if name not in INPUT_NAMES]
    if unknown:
        raise ValueError(f"unknown model inputs {unknown}: they are among {list(INPUT_NAMES)}")
    if Path(tokenizer_json_name).name != tokenizer_json_name:
        raise ValueError(f"{tokenizer_json_name!r}: the tokenizer is named as a file inside the bundle, not a path")
    return {"text": {"tokenizer": tokenizer_json_name, "max_length": int(max_length), "pad_id": int(pad_id),
                     "pad_to": None if pad_to is None else int(pad_to), "lowercase": bool(lowercase),
                     "truncation": "right", "inputs": list(inputs)}}
