"""The recorded text preprocessing, applied on the device to raw texts (numpy and `tokenizers` alone).

A text bundle ships the host's tokenizer.json and records in manifest.json how it was used
(`preprocessing.text`: the file, max_length, pad_id, the model's input names). The host encodes
with these very functions (compress.tasks.text_classification.tokenizer.encode calls `token_rows` and `padded`), so a
device given the same texts builds the same int64 arrays the host measured with. The tokenizer's
own truncation and padding settings, whatever its file says, are replaced by the recorded ones.

Named preprocess_text, not tokenize: runner.py puts the release folder first on sys.path, where a
tokenize.py would shadow the standard library's (which linecache, inspect and tracebacks import).
"""

from __future__ import annotations

import os

try:  # on the host: the deploy.runner package
    from . import releases, runner
except ImportError:  # on the device: loaded by runner.py from the release folder
    import releases
    import runner

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TEXT_SUFFIXES = (".txt",)


def configured(tokenizer, max_length: int):
    """A copy of `tokenizer` that cuts every text to max_length tokens, [CLS] and [SEP] included, and pads none.

    A copy, so the caller's tokenizer keeps its own settings (about 20 ms for a 30k vocabulary).
    """
    special = tokenizer.num_special_tokens_to_add(False)
    if max_length <= special:
        raise ValueError(f"max_length {max_length} leaves no room for text beside {special} special tokens")
    copy = type(tokenizer).from_str(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
    return copy


def token_rows(tokenizer, texts, max_length: int, chunk: int = 8192):
    """(ids, type_ids, lengths): every text's truncated tokens laid end to end (int64), and each one's count.

    Flat arrays, not lists of lists: 100k short texts are a few MB this way.
    """
    import numpy as np

    tokenizer = configured(tokenizer, max_length)
    texts = list(texts)
    ids, type_ids, lengths = [], [], []
    for start in range(0, len(texts), chunk):
        encodings = tokenizer.encode_batch(texts[start:start + chunk])
        lengths.append(np.array([len(e.ids) for e in encodings], dtype=np.int64))
        ids.extend(np.asarray(e.ids, dtype=np.int64) for e in encodings)
        type_ids.extend(np.asarray(e.type_ids, dtype=np.int64) for e in encodings)
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(ids) if ids else empty, np.concatenate(type_ids) if type_ids else empty,
            np.concatenate(lengths) if lengths else empty)


def padded(ids, type_ids, lengths, pad_id: int, pad_to=None) -> dict:
    """The model's int64 (n, L) inputs from flat tokens: L is the longest row, or `pad_to` (a fixed shape).

    Padding takes `pad_id` in input_ids and 0 in attention_mask and token_type_ids, after the text.
    """
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    if pad_to is not None:
        if width > int(pad_to):
            raise ValueError(f"a text of {width} tokens does not fit pad_to {pad_to}")
        width = int(pad_to)
    filled = np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
    input_ids = np.full((len(lengths), width), int(pad_id), dtype=np.int64)
    input_ids[filled] = ids
    token_type_ids = np.zeros((len(lengths), width), dtype=np.int64)
    token_type_ids[filled] = type_ids
    return {"input_ids": input_ids, "attention_mask": filled.astype(np.int64), "token_type_ids": token_type_ids}


def text_spec(manifest: dict) -> dict:
    """The recorded text steps; a bundle of an image or array model has none."""
    spec = manifest.get("preprocessing", {}).get("text")
    if spec is None:
        raise runner.RunnerError("this bundle's model does not take text: give it images or a .npy of inputs")
    return spec


def check_tokenizer_file(release, manifest: dict, sha256_file) -> None:
    """The release's tokenizer.json must match the manifest's checksum: a tokenizer changed after the deploy would
    quietly give other token ids (refused, as `verify` does)."""
    name = str(text_spec(manifest)["tokenizer"])
    expected = manifest.get("files", {}).get(name)
    path = os.path.join(str(release), name)
    if expected is not None and os.path.isfile(path):
        actual = sha256_file(path)
        if actual != expected:
            raise runner.RunnerError(f"checksum mismatch: {name} (sha256 {actual[:12]}, manifest {expected[:12]}); "
                                     "deploy the release again")


def load_tokenizer_file(path):
    """A tokenizer.json read with `tokenizers`; a missing package or file is one line naming it."""
    Tokenizer = runner.device_package("tokenizers", "tokenizers", "encodes text inputs").Tokenizer
    if not os.path.isfile(str(path)):
        raise runner.RunnerError(f"{path}: not found (the bundle's tokenizer; deploy it again)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises plain Exception for a malformed file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise runner.RunnerError(f"{path}: not a tokenizer.json this device's tokenizers can read ({first})") from None


def encode_texts(release_dir, manifest: dict, texts) -> dict:
    """Raw texts to the int64 arrays the model takes, by the recorded spec and the release's tokenizer.json.

    Only the inputs the spec names come back (a model may take no token_type_ids).
    """
    spec = text_spec(manifest)
    name = str(spec["tokenizer"])
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise runner.RunnerError(f"manifest.json: preprocessing.text.tokenizer: {name!r} is not a file name "
                                 "inside the release")
    tokenizer = load_tokenizer_file(os.path.join(str(release_dir), name))
    ids, type_ids, lengths = token_rows(tokenizer, texts, int(spec["max_length"]))
    arrays = padded(ids, type_ids, lengths, int(spec["pad_id"]), spec.get("pad_to"))
    return {input_name: arrays[input_name] for input_name in spec.get("inputs", INPUT_NAMES)}


def is_text_file(path) -> bool:
    return str(path).lower().endswith(TEXT_SUFFIXES)


def read_text_lines(path) -> list:
    """One text per non-empty line of a UTF-8 file (a byte-order mark is dropped); blank lines are skipped."""
    if not os.path.isfile(str(path)):
        raise runner.RunnerError(f"{path}: not found")
    texts = []
    with open(str(path), "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise runner.RunnerError(f"{path}:{number}: not UTF-8 text (byte {error.start + 1} of the line)") \
                    from None
            line = line.rstrip("\r\n")
            if line.strip():
                texts.append(line)
    if not texts:
        raise runner.RunnerError(f"{path}: no text in it (one text per line)")
    return texts


# --- the task's part of inference (deploy/runner/inference.py dispatches here for text classifiers) ---

TEXT_CHUNK = 4096  # texts tokenised and classified at a time: memory stays flat over a long file


def checked_encoder(release, manifest: dict):
    """texts -> the model's arrays, once the release's tokenizer.json matches the manifest's checksum."""
    check_tokenizer_file(release, manifest, releases.sha256_file)
    return lambda texts: encode_texts(release, manifest, texts)


def read_inputs(release, manifest: dict, inputs: list, preprocessed: bool, names: list):
    """(where each text came from, or None for the rows of one .npz; the model feeds, tokenised a chunk at a
    time as they are classified)."""
    if not text_inputs(inputs, preprocessed):
        return None, [token_ids(inputs[0], names)]
    texts = [(path, text) for path in inputs for text in read_text_lines(path)]
    encode = checked_encoder(release, manifest)
    chunks = (encode([text for _, text in texts[i:i + TEXT_CHUNK]]) for i in range(0, len(texts), TEXT_CHUNK))
    return [{"file": str(path), "text": text} for path, text in texts], chunks


def sample_inputs(sample: dict, names: list) -> dict:
    """The val sample's feed: a text model's token-id arrays by input name."""
    return {name: sample[name] for name in names}


def sample_texts(sample: dict) -> list:
    """The raw val texts a text bundle ships beside their token ids (UTF-8 end to end, and where each begins)."""
    data, offsets = sample["texts_utf8"].tobytes(), sample["text_offsets"].tolist()
    return [data[start:stop].decode("utf-8") for start, stop in zip(offsets[:-1], offsets[1:])]


def check_sample(release, manifest: dict, sample: dict, names: list) -> dict:
    """Tokenise the shipped val texts here and compare with the host's token ids: raw texts then get the
    predictions the host measured, or the deploy stops (another `tokenizers` may split words otherwise)."""
    import numpy as np

    if "texts_utf8" not in sample:
        return {"texts": 0}
    texts = sample_texts(sample)
    encoded = checked_encoder(release, manifest)(texts)
    differ = np.zeros(len(texts), dtype=bool)
    for name in names:
        ours, hosts = encoded[name], sample[name]
        if ours.shape != hosts.shape:
            differ[:] = True
            break
        differ |= (ours != hosts).any(axis=1)
    if differ.any():
        first = int(np.flatnonzero(differ)[0])
        raise runner.RunnerError(f"tokenizers {runner.module_version('tokenizers')} on this device encodes "
                                 f"{int(differ.sum())} of {len(texts)} val texts otherwise than the host did "
                                 f"(the first: {texts[first][:60]!r}); install the host's tokenizers version")
    return {"texts": len(texts), "identical": True}


def text_inputs(inputs: list, preprocessed: bool) -> bool:
    """True for text files, False for one .npz of token ids; anything else, or a mix, is refused naming the file."""
    return runner.raw_or_array(inputs, is_text_file, ".npz", f"this text model takes (text files "
                               f"{' '.join(TEXT_SUFFIXES)}, one text per line, or one .npz of token ids)",
                               "text files", "a .npz of token ids", preprocessed)


def token_ids(path, names: list) -> dict:
    """The model's int64 inputs from a .npz that holds one (n, L) array per input name."""
    import zipfile

    import numpy as np

    if not os.path.isfile(str(path)):
        raise runner.RunnerError(f"{path}: not found")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError(f"it holds one array, not one per input name ({', '.join(names)})")
        with data:
            arrays = {name: data[name] for name in names if name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise runner.RunnerError(f"{path}: not a .npz of token ids ({error or type(error).__name__})") from None
    missing = [name for name in names if name not in arrays]
    if missing:
        raise runner.RunnerError(f"{path}: no {', '.join(missing)} array (the model takes {', '.join(names)})")
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or not next(iter(shapes))[0]:
        raise runner.RunnerError(f"{path}: the token-id arrays must all be (n, length) with n >= 1, not "
                                 f"{', '.join(str(list(a.shape)) for a in arrays.values())}")
    return arrays
