"""The XLM-R SentencePiece tokenizer through Hugging Face `tokenizers` (a `tokenizer.json` file).

Texts are tokenised in one batched call (the Rust side runs it on all cores); padding is left to the
Embedder, which sorts by length first so padding stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer


class TokenizerError(ValueError):
    """A tokenizer that does not fit the model, or input it cannot take."""


@dataclass
class Encoded:
    ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]


class Tokenizer:
    def __init__(self, backend: HFTokenizer, source: str = "<memory>") -> None:
        self.backend = backend
        self.source = source
        # Truncation and padding are ours to apply; a tokenizer.json may arrive with either switched on.
        self.backend.no_truncation()
        self.backend.no_padding()
        self.pad_id = self._special("<pad>")
        self.cls_id = self._special("<s>")
        self.sep_id = self._special("</s>")
        self.mask_id = backend.token_to_id("<mask>")
        self.num_special = len(self.backend.encode("", add_special_tokens=True).ids)
        # No token covers more input characters than its piece has (the normaliser aside): the basis of
        # the server's character bounds, which refuse huge texts before tokenising them.
        self.max_piece_chars = max(1, max((len(p) for p in self.backend.get_vocab(with_added_tokens=True)),
                                          default=1))

    def _special(self, token: str) -> int:
        idx = self.backend.token_to_id(token)
        if idx is None:
            raise TokenizerError(
                f"tokenizer {self.source} has no {token} token: not an XLM-R-style tokenizer"
            )
        return idx

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on bad JSON
            raise TokenizerError(f"cannot read tokenizer {path}: {e}") from None
        return cls(backend, str(path))

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def check_model(self, vocab_size: int, pad_token_id: int) -> None:
        """Refuse a tokenizer whose ids would index outside the model or pad with the wrong row."""
        if self.vocab_size > vocab_size:
            raise TokenizerError(
                f"wrong tokenizer: {self.source} has {self.vocab_size} tokens but the model's embedding "
                f"has only {vocab_size} rows"
            )
        if self.pad_id != pad_token_id:
            raise TokenizerError(
                f"wrong tokenizer: {self.source} pads with id {self.pad_id}, the model with {pad_token_id}"
            )

    def encode(self, texts: list[str], max_length: int, truncate: bool = True) -> Encoded:
        """Token ids with <s> ... </s>, cut to max_length tokens (specials included) when truncate."""
        encs = self.backend.encode_batch(texts, add_special_tokens=True)
        if not truncate:
            over = next(((i, len(e.ids)) for i, e in enumerate(encs) if len(e.ids) > max_length), None)
            if over is not None:
                # Raised once the encodings are gone: the error's traceback keeps this frame alive.
                del encs
                raise TokenizerError(
                    f"input {over[0]} has {over[1]} tokens, more than max_length={max_length}, and "
                    "truncation is off"
                )
        ids, offsets = [], []
        for e in encs:
            tok, off = e.ids, e.offsets
            if len(tok) > max_length:
                # Keep the closing </s>, as HF truncation does.
                tok = tok[: max_length - 1] + tok[-1:]
                off = off[: max_length - 1] + off[-1:]
            ids.append(tok)
            offsets.append(off)
        return Encoded(ids, offsets)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=True)]
