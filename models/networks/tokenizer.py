"""CLIP byte-level BPE tokenizer.

Reads the BPE merge list ``bpe_simple_vocab_16e6.txt.gz`` of OpenAI CLIP (49,152 lines:
a header, then merges by priority). The pip package ``open_clip_torch`` ships that
file; it is found without importing ``open_clip``, whose ``__init__`` imports
torchvision. Install it with ``pip install --no-deps open_clip_torch``.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import regex
import torch

VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_PACKAGE = "open_clip"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
CONTEXT_LENGTH = 77
# 49,408 tokens = 256 bytes + 256 word-final bytes + 48,894 merges + 2 special tokens.
MERGE_COUNT = 49152 - 256 - 2
END_OF_WORD = "</w>"

# Special tokens, English contractions, letter runs, single digits, other symbol runs.
TOKEN_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


class VocabularyNotFoundError(FileNotFoundError):
    """The CLIP BPE vocabulary file is not installed."""


def find_vocabulary_file() -> Path:
    """Return the path of the CLIP BPE vocabulary shipped by ``open_clip_torch``.

    Raises
    ------
    VocabularyNotFoundError
        If the package or the file inside it is missing.
    """
    spec = importlib.util.find_spec(VOCAB_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / VOCAB_FILE_NAME
        if candidate.is_file():
            return candidate
    raise VocabularyNotFoundError(
        f"CLIP BPE vocabulary {VOCAB_FILE_NAME} not found; install it with "
        "'pip install --no-deps open_clip_torch' (without its dependencies, which pull in torchvision)"
    )


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Return CLIP's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others are shifted past U+00FF so
    that no byte maps to whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    shift = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shift)
            shift += 1
    return mapping


def clean_text(text: str) -> str:
    """Fix mojibake, unescape HTML twice, collapse whitespace and lower-case, as CLIP does."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return regex.sub(r"\s+", " ", text).strip().lower()


def adjacent_pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    """Return the set of neighbouring symbol pairs of ``word``."""
    return set(zip(word[:-1], word[1:]))


class ClipTokenizer:
    """Turn text into CLIP token ids.

    Parameters
    ----------
    vocabulary_file
        The gzipped merge list; default: the one shipped by ``open_clip_torch``.
    """

    def __init__(self, vocabulary_file: Path | None = None) -> None:
        path = vocabulary_file or find_vocabulary_file()
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]
        if len(merges) != MERGE_COUNT or any(len(pair) != 2 for pair in merges):
            raise ValueError(f"{path} is not a CLIP BPE merge list ({MERGE_COUNT} merge lines expected)")

        symbols = list(byte_to_unicode().values())
        tokens = symbols + [symbol + END_OF_WORD for symbol in symbols]
        tokens += ["".join(pair) for pair in merges]
        tokens += [START_OF_TEXT, END_OF_TEXT]
        self.encoder = {token: index for index, token in enumerate(tokens)}
        self.decoder = {index: token for token, index in self.encoder.items()}
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {symbol: byte for byte, symbol in self.byte_encoder.items()}
        self.start_of_text = self.encoder[START_OF_TEXT]
        self.end_of_text = self.encoder[END_OF_TEXT]
        self._cache: dict[str, list[str]] = {START_OF_TEXT: [START_OF_TEXT], END_OF_TEXT: [END_OF_TEXT]}

    @property
    def vocab_size(self) -> int:
        """Number of token ids (49,408 for CLIP)."""
        return len(self.encoder)

    def bpe(self, word: str) -> list[str]:
        """Split one pre-tokenised word (in byte symbols) into BPE tokens."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]

        # Merge the pair with the lowest rank until no known pair remains.
        while len(symbols) > 1:
            pair = min(adjacent_pairs(symbols), key=lambda p: self.merge_ranks.get(p, float("inf")))
            if pair not in self.merge_ranks:
                break
            merged: list[str] = []
            index = 0
            while index < len(symbols):
                if index < len(symbols) - 1 and (symbols[index], symbols[index + 1]) == pair:
                    merged.append(symbols[index] + symbols[index + 1])
                    index += 2
                else:
                    merged.append(symbols[index])
                    index += 1
            symbols = merged

        self._cache[word] = symbols
        return symbols

    def encode(self, text: str) -> list[int]:
        """Return the token ids of ``text`` without start and end tokens."""
        ids: list[int] = []
        for word in TOKEN_PATTERN.findall(clean_text(text)):
            symbols = "".join(self.byte_encoder[byte] for byte in word.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(symbols))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of token ids, with word ends turned back into spaces."""
        text = "".join(self.decoder[int(index)] for index in ids)
        data = bytearray(self.byte_decoder[symbol] for symbol in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """Return a ``(len(texts), context_length)`` int64 tensor of padded token ids.

        Each row is start token, text tokens, end token, then zeros. A text that does not
        fit is truncated and its last id replaced by the end token, as open_clip does.
        """
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_of_text, *self.encode(text), self.end_of_text]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.end_of_text
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result
