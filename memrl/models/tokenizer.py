"""A word-level tokenizer built from the captions (Hugging Face ``tokenizers``).

The embedded model's text side is tiny and trained from scratch, so a word vocabulary built from
the embedded captions is all it needs. It is saved as a standard ``tokenizer.json`` (loadable by
``tokenizers.Tokenizer.from_file``) plus a small ``memrl_tokenizer.json`` config. Words outside
the vocabulary map to ``[UNK]`` with a warning, never an error: a user's prompt may use any word.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
CONFIG_NAME = "memrl_tokenizer.json"
TOKENIZER_FILE = "tokenizer.json"


class WordTokenizer:
    """Lower-cased, punctuation-split word tokenizer with fixed-length padding."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = 16) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_token_id = tokenizer.token_to_id(PAD)
        self.unk_token_id = tokenizer.token_to_id(UNK)
        self.bos_token_id = tokenizer.token_to_id(BOS)
        self.eos_token_id = tokenizer.token_to_id(EOS)
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ building
    @staticmethod
    def _pipeline(tok: Tokenizer) -> Tokenizer:
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
        )
        return tok

    @classmethod
    def from_corpus(cls, texts: Iterable[str], max_length: int = 16) -> "WordTokenizer":
        """Vocabulary = special tokens + every word of ``texts``, in sorted order (deterministic)."""
        probe = cls._pipeline(Tokenizer(WordLevel({UNK: 0}, unk_token=UNK)))
        words: set[str] = set()
        for t in texts:
            norm = probe.normalizer.normalize_str(t)
            words.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(norm))
        vocab = {PAD: 0, UNK: 1, BOS: 2, EOS: 3}
        for w in sorted(words):
            vocab.setdefault(w, len(vocab))
        tok = cls._pipeline(Tokenizer(WordLevel(vocab, unk_token=UNK)))
        return cls(tok, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    # ------------------------------------------------------------------ encoding
    def words(self, text: str) -> list[str]:
        return [t for t in self.tokenizer.encode(text).tokens]

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Token ids ``len(texts) x max_length``: BOS, words, EOS, then PAD (truncated to fit)."""
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for text in texts:
            enc = self.tokenizer.encode(text)
            unknown = [w for w, i in zip(enc.tokens, enc.ids) if i == self.unk_token_id]
            if enc.ids and unknown:
                # Report the original words, not the [UNK] symbol.
                norm = self.tokenizer.normalizer.normalize_str(text)
                raw = [w for w, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(norm)]
                missing = sorted({w for w, i in zip(raw, enc.ids) if i == self.unk_token_id} - self._warned)
                if missing:
                    self._warned.update(missing)
                    warnings.warn(
                        f"prompt words not in the model's vocabulary, mapped to {UNK}: {', '.join(missing)}",
                        stacklevel=2,
                    )
            ids = [self.bos_token_id] + enc.ids[: self.max_length - 2] + [self.eos_token_id]
            ids += [self.pad_token_id] * (self.max_length - len(ids))
            rows.append(ids)
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, ids: Sequence[int]) -> str:
        special = {self.pad_token_id, self.bos_token_id, self.eos_token_id}
        inv = {v: k for k, v in self.tokenizer.get_vocab().items()}
        return " ".join(inv[int(i)] for i in ids if int(i) not in special)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        (folder / CONFIG_NAME).write_text(
            json.dumps({"type": "word_level", "max_length": self.max_length}, indent=2) + "\n"
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "WordTokenizer":
        folder = Path(folder)
        for name in (TOKENIZER_FILE, CONFIG_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"tokenizer folder {folder} lacks {name}")
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        return cls(Tokenizer.from_file(str(folder / TOKENIZER_FILE)), max_length=int(cfg["max_length"]))
