"""Model configuration: the official jina-embeddings-v3 `config.json` keys as a dataclass.

Keys this class does not model (auto_map, torch_dtype, transformers_version, ...) are kept in `extra`
and written back unchanged, so a checkpoint that goes through load/save keeps its whole config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapters import TASK_INSTRUCTIONS, TASKS

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# rotary: jina-embeddings-v3 (no position table). absolute: XLM-R's learned table, position ids counted
# from pad_token_id + 1 as the official code's create_position_ids_from_input_ids does.
POSITION_TYPES = ("rotary", "absolute")

# Keys the official code reads that only pick kernels, training behaviour or heads other than the embedding
# one; embeddings do not depend on them, so they are kept (in `extra`) and written back, never acted on.
KERNEL_ONLY_KEYS = ("use_flash_attn", "fused_bias_fc", "fused_mlp", "fused_dropout_add_ln", "mlp_checkpoint_lvl",
                    "use_reentrant", "lora_main_params_trainable", "last_layer_subset", "use_cache", "output_past",
                    "classifier_dropout")


class ConfigError(ValueError):
    """A config.json that this implementation cannot run."""


@dataclass
class EncoderConfig:
    vocab_size: int = 250002
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    position_embedding_type: str = "rotary"
    # 10000 while training, 20000 at inference: the paper's long-context trick (spec §2.1).
    rotary_emb_base: float = 20000.0
    # Rotate only the first rotary_emb_dim dims of each head (None: all of them), and in GPT-J interleaved
    # pairs (0,1), (2,3), ... rather than NeoX halves. The official code reads both through getattr.
    rotary_emb_dim: int | None = None
    rotary_emb_interleaved: bool = False
    max_position_embeddings: int = 8194
    model_type: str = "xlm-roberta"
    lora_adaptations: list[str] = field(default_factory=lambda: list(TASKS))
    task_instructions: dict[str, str] = field(default_factory=lambda: dict(TASK_INSTRUCTIONS))
    lora_rank: int = 4
    lora_alpha: float = 1.0
    lora_dropout_p: float = 0.0
    matryoshka_dimensions: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 768, 1024])
    truncate_dim: int | None = None
    emb_pooler: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_tokens(self) -> int:
        """The longest sequence one forward pass takes, specials included: the position table's reach
        for absolute positions (longer texts go through windows), max_position_embeddings for rotary."""
        if self.position_embedding_type == "absolute":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    def validate(self) -> None:
        if self.position_embedding_type not in POSITION_TYPES:
            raise ConfigError(
                f"unsupported architecture: position_embedding_type={self.position_embedding_type!r}; "
                f"supported: {', '.join(POSITION_TYPES)}"
            )
        if self.position_embedding_type == "absolute" and self.max_position_embeddings <= self.pad_token_id + 2:
            raise ConfigError(
                f"max_position_embeddings={self.max_position_embeddings} leaves no positions: XLM-R numbers "
                f"positions from pad_token_id + 1 = {self.pad_token_id + 1}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.position_embedding_type == "rotary" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head dim, got {self.head_dim}")
        self._validate_rotary()
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        if self.emb_pooler not in (None, "mean", "cls"):
            raise ConfigError(f"unsupported emb_pooler {self.emb_pooler!r}; use null (mean) or 'cls'")
        if len(set(self.lora_adaptations)) != len(self.lora_adaptations):
            raise ConfigError(f"duplicate task names in lora_adaptations: {self.lora_adaptations}")
        missing = [t for t in self.lora_adaptations if t not in self.task_instructions]
        for t in missing:
            self.task_instructions[t] = ""
        bad = [d for d in self.matryoshka_dimensions if not 0 < d <= self.hidden_size]
        if bad:
            raise ConfigError(f"matryoshka_dimensions {bad} are outside 1..hidden_size={self.hidden_size}")
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {self.lora_rank}")

    def _validate_rotary(self) -> None:
        dim = self.rotary_emb_dim
        if dim is not None:
            # The official default is hidden_size / num_heads, a float; integral floats are fine.
            if isinstance(dim, bool) or not isinstance(dim, int | float) or dim != int(dim):
                raise ConfigError(f"rotary_emb_dim must be a whole number, got {dim!r}")
            dim = self.rotary_emb_dim = int(dim)
            if not 0 <= dim <= self.head_dim or dim % 2:
                raise ConfigError(
                    f"rotary_emb_dim={dim} is not supported: it must be even and within 0..head_dim={self.head_dim}"
                )
        if not isinstance(self.rotary_emb_interleaved, bool):
            raise ConfigError(f"rotary_emb_interleaved must be true or false, got {self.rotary_emb_interleaved!r}")
        if self.extra.get("rotary_emb_scale_base") is not None:
            raise ConfigError(
                f"rotary_emb_scale_base={self.extra['rotary_emb_scale_base']!r} (xPos rotary scaling) is not "
                "supported; taskembed runs plain rotary positions only"
            )

    @property
    def rotary_dim(self) -> int:
        """How many leading dims of each head rotate."""
        return self.head_dim if self.rotary_emb_dim is None else self.rotary_emb_dim

    # --- (de)serialisation -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        archs = extra.get("architectures") or []
        if archs and not any("Roberta" in a or "Jina" in a or "TaskEmbed" in a for a in archs):
            raise ConfigError(f"unsupported architecture {archs}; expected an XLM-RoBERTa-style encoder")
        # The official file has null task_instructions in the class default; treat null like absent.
        for key in ("task_instructions", "lora_adaptations", "matryoshka_dimensions"):
            if known.get(key) is None:
                known.pop(key, None)
        # The official model rounds its vocabulary up to this multiple (and saves the rounded size).
        multiple = extra.get("pad_vocab_size_multiple", 1)
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            raise ConfigError(f"pad_vocab_size_multiple must be a positive int, got {multiple!r}")
        if "vocab_size" in known and known["vocab_size"] % multiple:
            known["vocab_size"] += multiple - known["vocab_size"] % multiple
        if "task_instructions" not in known and "lora_adaptations" in known:
            known["task_instructions"] = {
                t: TASK_INSTRUCTIONS.get(t, "") for t in known["lora_adaptations"]
            }
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out.setdefault("architectures", ["XLMRobertaModel"])
        if self.rotary_emb_dim is None:
            # The official code reads it with getattr and a head-dim default: a null would break it.
            del out["rotary_emb_dim"]
        if not self.rotary_emb_interleaved:
            del out["rotary_emb_interleaved"]
        return out

    @classmethod
    def load(cls, path: str | Path) -> EncoderConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
