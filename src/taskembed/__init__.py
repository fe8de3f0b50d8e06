"""taskembed: multilingual text embeddings with task LoRA adapters (the jina-embeddings-v3 system)."""

from .checkpoint import CheckpointError, default_model_dir, load, save
from .config import TASKS, ConfigError, EncoderConfig
from .embedder import PRECISIONS, Embedder
from .encoder import Encoder
from .tokenizer import Tokenizer, TokenizerError

__all__ = [
    "TASKS",
    "PRECISIONS",
    "CheckpointError",
    "ConfigError",
    "Embedder",
    "Encoder",
    "EncoderConfig",
    "Tokenizer",
    "TokenizerError",
    "default_model_dir",
    "load",
    "save",
]
__version__ = "0.1.0"
