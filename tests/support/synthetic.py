"""Generated toy data and a matching tiny model, for tests and smoke runs of every stage.

Texts are made of pseudo-words. Each topic has its own "query words" and disjoint "passage words", so a
query and its passage share no surface form: a model only retrieves well once training has tied the two
word sets together, which a 2-layer, 64-wide model learns within a few dozen steps.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from taskembed.embedder import Embedder
from taskembed.encoder import Encoder
from taskembed.eval.metrics import paired_mrr
from taskembed.tokenizer import Tokenizer

from .tiny import SPECIALS, randomize_lora, tiny_config

_CONS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass
class Topics:
    query_words: list[list[str]]
    passage_words: list[list[str]]
    noise: list[str]
    seed: int = 0

    @classmethod
    def make(cls, n_topics: int = 12, words_per_side: int = 4, n_noise: int = 12, seed: int = 0) -> Topics:
        rng = random.Random(seed)
        words: set[str] = set()
        need = n_topics * 2 * words_per_side + n_noise
        while len(words) < need:
            words.add("".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3)))))
        pool = sorted(words)
        rng.shuffle(pool)
        q = [pool[i * words_per_side:(i + 1) * words_per_side] for i in range(n_topics)]
        off = n_topics * words_per_side
        p = [pool[off + i * words_per_side: off + (i + 1) * words_per_side] for i in range(n_topics)]
        return cls(q, p, pool[2 * off: 2 * off + n_noise], seed)

    @property
    def n(self) -> int:
        return len(self.query_words)

    def query(self, t: int, rng: random.Random) -> str:
        ws = rng.sample(self.query_words[t], 2) + rng.sample(self.noise, 1)
        rng.shuffle(ws)
        return " ".join(ws)

    def passage(self, t: int, rng: random.Random) -> str:
        ws = rng.sample(self.passage_words[t], 3) + rng.sample(self.noise, 2)
        rng.shuffle(ws)
        return " ".join(ws)

    def sentence(self, t: int, rng: random.Random, n: int = 6) -> str:
        ws = [rng.choice(self.query_words[t] + self.passage_words[t]) for _ in range(n)]
        return " ".join(ws)

    # --- records -------------------------------------------------------------------------------------

    def pairs(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            t = rng.randrange(self.n)
            out.append({"query": self.query(t, rng), "positive": self.passage(t, rng)})
        return out

    def tuples(self, n: int, seed: int, negatives: int = 2) -> list[dict]:
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            t = rng.randrange(self.n)
            others = [u for u in range(self.n) if u != t]
            out.append({"query": self.query(t, rng), "positive": self.passage(t, rng),
                        "negatives": [self.passage(rng.choice(others), rng) for _ in range(negatives)]})
        return out

    def scored(self, n: int, seed: int) -> list[dict]:
        """Topics come in related twos (0-1, 2-3, ...): score 5 same topic, 2 related, 0 otherwise."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            a = rng.randrange(self.n)
            b = rng.choice([a, a, a ^ 1, rng.randrange(self.n)])
            score = 5.0 if a == b else 2.0 if a // 2 == b // 2 else 0.0
            out.append({"text1": self.query(a, rng), "text2": self.passage(b, rng), "score": score})
        return out

    def labelled(self, n: int, seed: int, n_labels: int | None = None) -> list[dict]:
        rng = random.Random(seed)
        k = n_labels or self.n
        out = []
        for _ in range(n):
            t = rng.randrange(k)
            text = self.query(t, rng) if rng.random() < 0.5 else self.passage(t, rng)
            out.append({"text": text, "label": f"topic{t}"})
        return out

    def raw(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        return [{"text": self.sentence(rng.randrange(self.n), rng, n=rng.randint(5, 9))} for _ in range(n)]


# Short retrieval prefixes for the toy model, one token each, so short max_lengths keep the text.
TOY_PREFIX_WORDS = ["query:", "passage:"]


def word_tokenizer(topics: Topics) -> Tokenizer:
    """An XLM-R-layout Unigram tokenizer (<s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last) with every toy word as
    one "▁word" piece, plus single letters as a fallback for any other text."""
    words = [w for ws in topics.query_words + topics.passage_words for w in ws] + topics.noise
    pieces = [(s, 0.0) for s in SPECIALS]
    pieces += [("\u2581" + w, -1.0) for w in [*words, *TOY_PREFIX_WORDS]]
    pieces += [("\u2581", -5.0)] + [(c, -6.0) for c in sorted(set("".join(words)) | set(string.ascii_letters))]
    tk = HFTokenizer(Unigram(pieces, unk_id=3))
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.add_special_tokens(SPECIALS + ["<mask>"])
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return Tokenizer(tk, "<toy>")


def tiny_embedder(topics: Topics, seed: int = 0, lora: bool = False, **overrides) -> Embedder:
    """A random 2-layer, 64-wide model whose tokenizer knows the toy words (one piece per word)."""
    import torch

    tok = word_tokenizer(topics)
    torch.manual_seed(seed)
    cfg = tiny_config(tok.vocab_size, **overrides)
    cfg.task_instructions.update({"retrieval.query": "query: ", "retrieval.passage": "passage: "})
    model = Encoder(cfg)
    if lora:
        randomize_lora(model, torch.Generator().manual_seed(seed + 1), std=0.2)
    return Embedder(model, tok)


def topic_retrieval(emb: Embedder, topics: Topics, seed: int, q_task=None, d_task=None, n: int | None = None) -> float:
    """MRR of one query per topic against one passage per topic (held-out texts from `seed`)."""
    rng = random.Random(seed)
    ts = list(range(topics.n))
    qs = [topics.query(t, rng) for t in ts]
    ds = [topics.passage(t, rng) for t in ts]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qv = emb.encode(qs, task=q_task)
        dv = emb.encode(ds, task=d_task)
    return paired_mrr(qv, dv)
