"""The XLM-R SentencePiece tokenizer through Hugging Face `tokenizers` (a `tokenizer.json` file).

Texts are tokenised in one batched call (the Rust side runs it on all cores); padding is left to the
Embedder, which sorts by length first so padding stays small.

A model folder may also hold `tokenizer_config.json` (added-token flags, `model_max_length`) and
`special_tokens_map.json`, as the official repository does; they are read and written the way the
Hugging Face loader reads them, so a text tokenises the same here and in the official code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
_FLAGS = ("lstrip", "rstrip", "normalized", "single_word", "special")
# Hugging Face's role names, in the order the official files list them.
_ROLES = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
          "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
# Hugging Face writes int(1e30) for "no limit".
_NO_LIMIT = 10**12


class TokenizerError(ValueError):
    """A tokenizer that does not fit the model, or input it cannot take."""


@dataclass
class Encoded:
    ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]


class Tokenizer:
    def __init__(self, backend: HFTokenizer, source: str = "<memory>", config: dict[str, Any] | None = None) -> None:
        self.source = source
        # tokenizer_config.json as read (empty when the folder has none); written back on save.
        self.config: dict[str, Any] = dict(config or {})
        self.backend = _apply_added_token_flags(backend, self.config, source)
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
        return cls(_read_backend(Path(path)), str(path))

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """tokenizer.json, with the added-token flags of tokenizer_config.json applied when it is there."""
        path = Path(path)
        backend = _read_backend(path / TOKENIZER_FILE)
        config: dict[str, Any] = {}
        cfg_file = path / TOKENIZER_CONFIG_FILE
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TokenizerError(f"{cfg_file} is not valid JSON: {e}") from None
            if not isinstance(config, dict):
                raise TokenizerError(f"{cfg_file} must hold a JSON object")
        return cls(backend, str(path / TOKENIZER_FILE), config)

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))

    def save_pretrained(self, path: str | Path, model_max_length: int) -> None:
        """tokenizer.json, tokenizer_config.json and special_tokens_map.json into folder `path`, shaped as
        the official repository ships them. model_max_length is used when no tokenizer config was read."""
        path = Path(path)
        self.save(path / TOKENIZER_FILE)
        added = self._added_tokens()
        config = dict(self.config) or {
            "clean_up_tokenization_spaces": True,
            "model_max_length": model_max_length,
            "tokenizer_class": "XLMRobertaTokenizer",
        }
        # The flags must agree with tokenizer.json: both files are read by the Hugging Face loader.
        config["added_tokens_decoder"] = {str(e["id"]): {"content": e["content"], **{f: e[f] for f in _FLAGS}}
                                          for e in added.values()}
        roles = {role: token for role, token in _ROLES.items() if added.get(token, {}).get("special")}
        for role, token in roles.items():
            config.setdefault(role, token)
        config = dict(sorted(config.items()))
        special_map = {role: {"content": token, **{f: added[token][f] for f in _FLAGS if f != "special"}}
                       for role, token in roles.items()}
        for name, data in ((TOKENIZER_CONFIG_FILE, config), (SPECIAL_TOKENS_MAP_FILE, special_map)):
            (path / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def _added_tokens(self) -> dict[str, dict[str, Any]]:
        data = json.loads(self.backend.to_str())
        return {e["content"]: e for e in data.get("added_tokens", [])}

    @property
    def model_max_length(self) -> int | None:
        """The tokenizer config's length limit (8194 in the official files); None when it sets none."""
        value = self.config.get("model_max_length")
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT:
            return value
        return None

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


def _read_backend(path: Path) -> HFTokenizer:
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}")
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception on bad JSON
        raise TokenizerError(f"cannot read tokenizer {path}: {e}") from None


def _apply_added_token_flags(backend: HFTokenizer, config: dict[str, Any], source: str) -> HFTokenizer:
    """Set the added tokens' lstrip/rstrip/... as the Hugging Face loader would.

    tokenizer_config.json's `added_tokens_decoder` wins over tokenizer.json. Where it says nothing about
    `<mask>`, Hugging Face's XLM-R tokenizer class builds it with lstrip=True (so "a <mask>" drops the
    space before the mask), whatever tokenizer.json says.
    """
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise TokenizerError(f"tokenizer config of {source}: added_tokens_decoder must be an object")
    xlmr = str(config.get("tokenizer_class") or "XLMRoberta").startswith("XLMRoberta")
    updates: dict[int, dict[str, bool]] = {}
    for idx, token in backend.get_added_tokens_decoder().items():
        spec = decoder.get(str(idx))
        if isinstance(spec, dict) and spec.get("content") == token.content:
            flags = {f: bool(spec[f]) for f in _FLAGS if f in spec}
        elif token.content == "<mask>" and xlmr:
            flags = {"lstrip": True}
        else:
            continue
        if any(getattr(token, f) != v for f, v in flags.items()):
            updates[idx] = flags
    if not updates:
        return backend
    data = json.loads(backend.to_str())
    for entry in data.get("added_tokens", []):
        entry.update(updates.get(entry["id"], {}))
    return HFTokenizer.from_str(json.dumps(data))
