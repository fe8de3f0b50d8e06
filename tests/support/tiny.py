"""Tiny models made on the fly: an XLM-R-style Unigram tokenizer trained on a few sample sentences and a
small random encoder. Tests, the demo and benchmarks build these; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import unicodedata

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from tokenizers.trainers import UnigramTrainer

from taskembed.config import EncoderConfig
from taskembed.embedder import Embedder
from taskembed.encoder import Encoder
from taskembed.lora import LORA_MODULES
from taskembed.tokenizer import Tokenizer

SAMPLE_TEXTS = [
    "The cat sits on the warm windowsill and watches the birds outside.",
    "A retrieval model maps queries and documents into one vector space.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I change the default font size in a spreadsheet?",
    "Die Katze sitzt auf der warmen Fensterbank und beobachtet die Vögel.",
    "Wie ändere ich die Standardschriftgröße in einer Tabelle?",
    "Le chat est assis sur le rebord chaud de la fenêtre.",
    "Comment changer la taille de police par défaut dans un tableur ?",
    "El gato está sentado en el alféizar caliente de la ventana.",
    "Кошка сидит на тёплом подоконнике и смотрит на птиц.",
    "Как изменить размер шрифта по умолчанию в таблице?",
    "猫は暖かい窓辺に座って外の鳥を見ています。",
    "猫坐在温暖的窗台上看着外面的鸟。",
    "如何更改电子表格中的默认字体大小？",
    "القطة تجلس على حافة النافذة الدافئة وتراقب الطيور.",
    "बिल्ली गर्म खिड़की पर बैठी है और बाहर पक्षियों को देख रही है।",
    "고양이가 따뜻한 창턱에 앉아 밖의 새들을 보고 있습니다.",
    "Η γάτα κάθεται στο ζεστό περβάζι του παραθύρου.",
    "Represent the query for retrieving evidence documents: ",
    "Represent the document for retrieval: ",
]

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def make_tokenizer(texts: list[str] | None = None, vocab_size: int = 400) -> Tokenizer:
    """A Unigram tokenizer with XLM-R's layout: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask> last."""
    texts = texts or SAMPLE_TEXTS
    tk = HFTokenizer(Unigram())
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    tk.train_from_iterator(texts * 4, trainer=trainer)
    tk = _canonical_order(tk, texts)
    tk.add_special_tokens(["<mask>"])
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return Tokenizer(tk, "<tiny>")


def _canonical_order(tk: HFTokenizer, texts: list[str]) -> HFTokenizer:
    """The trainer's piece set is stable, but its scores wobble (about 1e-3) from run to run, and with them
    the ids and segmentation. Re-score each piece by its log frequency in the texts and sort, so the same
    texts always give the same tokenizer (and tests see the same tiny model in every session)."""
    data = json.loads(tk.to_str())
    vocab = data["model"]["vocab"]
    n_special = len(SPECIALS)
    corpus = "\n".join("▁" + unicodedata.normalize("NFKC", t).replace(" ", "▁") for t in texts)
    total = len(corpus)
    scored = [[piece, math.log((corpus.count(piece) + 1) / total)] for piece, _ in vocab[n_special:]]
    data["model"]["vocab"] = vocab[:n_special] + sorted(scored, key=lambda e: (-e[1], e[0]))
    return HFTokenizer.from_str(json.dumps(data))


def tiny_config(vocab_size: int, **overrides) -> EncoderConfig:
    base = dict(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, matryoshka_dimensions=[8, 16, 32, 64], max_position_embeddings=8194,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    base.update(overrides)
    return EncoderConfig(**base)


def randomize_lora(model: Encoder, generator: torch.Generator, std: float = 0.5) -> None:
    """Make every adapter non-zero and different (fresh adapters are no-ops by construction)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LORA_MODULES):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=generator) * std)
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=generator) * std)


def make_tiny_embedder(seed: int = 0, lora: bool = True, **overrides) -> Embedder:
    """A random 2-layer, 64-wide model with all five adapters non-zero (unless lora=False)."""
    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_config(tok.vocab_size, **overrides)
    model = Encoder(cfg)
    with torch.no_grad():
        # Non-trivial LayerNorm affines and biases, so a reference that forgot one would disagree.
        for name, p in model.named_parameters():
            if name.endswith("bias") or ("norm" in name or "emb_ln" in name):
                p.add_(torch.randn_like(p) * 0.1)
    if lora:
        randomize_lora(model, torch.Generator().manual_seed(seed + 1))
    return Embedder(model, tok)
