"""Build the ``tests/fixtures/official_tiny`` parity fixture with the *official* jina-embeddings-v3 code.

The official remote code (``jinaai/xlm-roberta-flash-implementation``) is not part of this repository
(licence) and is never imported by the package. This script imports it from a directory the user gives
(``--official-code DIR``, the directory that *contains* the package folder, default package name
``jina_official``), builds a tiny randomly initialised ``XLMRobertaLoRA`` with all five adapters randomised,
saves it with the official ``save_pretrained`` and records the official ``encode`` / ``forward`` outputs.

Run it in an environment that has torch, transformers (4.x), einops, numpy, safetensors and tokenizers::

    python scripts/make_official_fixture.py --official-code /tmp/official --out tests/fixtures/official_tiny
    python scripts/make_official_fixture.py --official-code /tmp/official --out tests/fixtures/official_rotary \
        --rotary-dim 8 --interleaved
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

SEED = 20240917

TASKS = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
TASK_INSTRUCTIONS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
MATRYOSHKA_DIMS = [16, 32, 64]
TRUNCATE_DIMS = [None, 32, 16]

# Small multilingual corpus for the tokenizer (written for this fixture).
CORPUS = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "A long document about the history of the city and its old harbour.",
        "What is the capital of France and how many people live there?",
        "Search engines rank documents by how relevant they are to a query.",
        "The weather today is sunny with a light breeze from the west.",
        "She reads a book every evening before going to sleep.",
        "Machine learning models need data, compute and careful evaluation.",
        "The museum opens at nine in the morning and closes at six.",
        "Please send me the report by Friday afternoon.",
        "Children were playing football in the park near the river.",
        "The train to London leaves from platform four in ten minutes.",
        "Embeddings map sentences to vectors so that similar texts are close.",
        "He bought fresh bread, cheese and apples at the market.",
        "Represent the query for retrieving evidence documents: ",
        "Represent the document for retrieval: ",
        "The committee approved the new budget after a long discussion.",
        "Mountains, lakes and forests cover most of the northern region.",
        "How do I reset my password if I forgot my email address?",
        "Scientists discovered a new species of frog in the rainforest.",
        "The concert was cancelled because of the storm.",
    ],
    "de": [
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Die Stadt liegt an einem großen Fluss im Süden des Landes.",
        "Wie spät ist es, und wann fährt der nächste Zug nach Berlin?",
        "Ich lese jeden Abend ein Buch, bevor ich schlafen gehe.",
        "Das Wetter ist heute schön, aber morgen soll es regnen.",
        "Die Kinder spielen im Garten mit ihrem neuen Ball.",
        "Maschinelles Lernen braucht Daten und sorgfältige Auswertung.",
        "Wir treffen uns um acht Uhr vor dem Bahnhof.",
        "Die Suchmaschine sortiert Dokumente nach ihrer Relevanz.",
        "Der Bäcker verkauft frisches Brot und süße Brötchen.",
        "Im Winter fällt in den Bergen viel Schnee.",
        "Können Sie mir bitte den Weg zum Museum zeigen?",
        "Die Regierung hat ein neues Gesetz beschlossen.",
        "Meine Großmutter erzählt gern Geschichten aus ihrer Jugend.",
        "Überall in der Straße blühen im Frühling die Bäume.",
    ],
    "fr": [
        "Le renard brun rapide saute par-dessus le chien paresseux.",
        "La ville se trouve au bord de la mer, près des montagnes.",
        "Quelle est la capitale de l'Allemagne et combien d'habitants compte-t-elle ?",
        "Je lis un livre chaque soir avant de dormir.",
        "Il fait beau aujourd'hui, mais il pleuvra demain.",
        "Les enfants jouent au football dans le parc.",
        "Ça va très bien, merci beaucoup pour votre aide.",
        "Le musée ouvre à neuf heures et ferme à dix-huit heures.",
        "Nous avons acheté du pain, du fromage et des pommes au marché.",
        "Les moteurs de recherche classent les documents par pertinence.",
        "Où se trouve la gare la plus proche, s'il vous plaît ?",
        "L'apprentissage automatique a besoin de données de qualité.",
    ],
    "es": [
        "El rápido zorro marrón salta sobre el perro perezoso.",
        "La ciudad está junto al mar y tiene un puerto muy antiguo.",
        "¿Cuál es la capital de España y cuántas personas viven allí?",
        "Leo un libro todas las noches antes de dormir.",
        "Hoy hace sol, pero mañana va a llover.",
        "Los niños juegan al fútbol en el parque cerca del río.",
        "El tren sale de la estación a las ocho de la mañana.",
        "Los buscadores ordenan los documentos según su relevancia.",
    ],
    "ru": [
        "Быстрая коричневая лиса прыгает через ленивую собаку.",
        "Город расположен на берегу большой реки на юге страны.",
        "Какая столица России и сколько людей там живёт?",
        "Я читаю книгу каждый вечер перед сном.",
        "Сегодня солнечно, но завтра обещают дождь.",
        "Дети играют в футбол в парке у реки.",
        "Поезд в Москву отправляется через десять минут.",
        "Поисковые системы ранжируют документы по релевантности.",
        "Машинное обучение требует данных и тщательной оценки.",
        "Мы купили свежий хлеб, сыр и яблоки на рынке.",
        "Зимой в горах выпадает много снега.",
        "Пожалуйста, пришлите мне отчёт до пятницы.",
    ],
    "zh": [
        "敏捷的棕色狐狸跳过了懒狗。",
        "这座城市位于一条大河的南岸。",
        "法国的首都是哪里？那里住着多少人？",
        "我每天晚上睡觉前都会读一本书。",
        "今天天气很好，但是明天会下雨。",
        "孩子们在河边的公园里踢足球。",
        "去北京的火车十分钟后出发。",
        "搜索引擎根据相关性对文档进行排序。",
        "机器学习需要数据和仔细的评估。",
        "我们在市场上买了新鲜的面包、奶酪和苹果。",
        "冬天山里会下很多雪。",
        "请在星期五之前把报告发给我。",
        "文本嵌入把句子映射成向量，相似的文本距离很近。",
    ],
    "ja": [
        "素早い茶色の狐がのろまな犬を飛び越える。",
        "この町は大きな川の南にあります。",
        "日本の首都はどこですか？そこには何人住んでいますか？",
        "私は毎晩寝る前に本を読みます。",
        "今日は晴れですが、明日は雨が降るでしょう。",
        "子供たちは川の近くの公園でサッカーをしています。",
        "東京行きの電車は十分後に出発します。",
        "検索エンジンは関連性で文書を並べ替えます。",
        "機械学習にはデータと慎重な評価が必要です。",
        "冬には山にたくさんの雪が降ります。",
    ],
    "ar": [
        "الثعلب البني السريع يقفز فوق الكلب الكسول.",
        "تقع المدينة على ضفة نهر كبير في جنوب البلاد.",
        "ما هي عاصمة مصر وكم عدد سكانها؟",
        "أقرأ كتابا كل مساء قبل النوم.",
        "الطقس مشمس اليوم لكن غدا سيكون ممطرا.",
        "يلعب الأطفال كرة القدم في الحديقة قرب النهر.",
        "يغادر القطار إلى القاهرة بعد عشر دقائق.",
        "ترتب محركات البحث الوثائق حسب صلتها بالسؤال.",
        "يحتاج تعلم الآلة إلى بيانات وتقييم دقيق.",
        "اشترينا خبزا طازجا وجبنا وتفاحا من السوق.",
    ],
    "hi": [
        "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
        "यह शहर देश के दक्षिण में एक बड़ी नदी के किनारे है।",
        "भारत की राजधानी क्या है और वहाँ कितने लोग रहते हैं?",
        "मैं हर शाम सोने से पहले एक किताब पढ़ता हूँ।",
        "आज धूप है, लेकिन कल बारिश होगी।",
        "बच्चे नदी के पास पार्क में फुटबॉल खेल रहे हैं।",
        "दिल्ली जाने वाली ट्रेन दस मिनट में निकलेगी।",
        "सर्च इंजन दस्तावेज़ों को प्रासंगिकता के अनुसार क्रमबद्ध करते हैं।",
        "मशीन लर्निंग को डेटा और सावधानीपूर्वक मूल्यांकन की ज़रूरत होती है।",
        "हमने बाज़ार से ताज़ी रोटी, पनीर और सेब खरीदे।",
    ],
}

LONG_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Search engines rank documents by how relevant they are to a query.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "Machine learning models need data, compute and careful evaluation.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Hello",
    "Ça va? 素早い狐 🦊 ok",  # mixed script; the emoji is not in the vocabulary (<unk>)
    None,  # placeholder for the long text, filled in main()
]

# Rows of the direct-forward check: text index and task id (-1 = no adapter).
FORWARD_ROWS = [(0, 3), (2, -1), (1, 4), (5, 0), (6, 2), (3, -1), (4, 1), (7, 0)]


def build_tokenizer(out_dir: Path, model_max_length: int = 8194):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from tokenizers.processors import TemplateProcessing
    from transformers import XLMRobertaTokenizerFast

    lines = [s for sents in CORPUS.values() for s in sents]
    # a few recombinations so that frequent pieces get real statistics
    lines += [f"{a} {b}" for a, b in zip(lines, lines[7:] + lines[:7], strict=True)]

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=1500,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        shrinking_factor=0.75,
        max_piece_length=12,
        n_sub_iterations=2,
    )
    tok.train_from_iterator(lines, trainer=trainer)

    # Unigram training is not bit-reproducible (last-ulp score noise reorders ties), so rebuild the
    # model from rounded scores in a canonical order: same pieces, stable ids on every run.
    trained = json.loads(tok.to_str())["model"]["vocab"]
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    assert [p for p, _ in trained[:4]] == specials, trained[:4]
    # Pieces the trainer appends after pruning get scores in 1e-4 steps, in arbitrary order: the run of
    # closely spaced lowest scores gets one common score.
    ranked = sorted(((p, round(s, 6)) for p, s in trained[4:]), key=lambda x: -x[1])
    k = len(ranked) - 1
    while k > 0 and ranked[k - 1][1] - ranked[k][1] < 2e-4:
        k -= 1
    tail_score = round(ranked[k][1], 2)
    rest = sorted(ranked[:k] + [(p, tail_score) for p, _ in ranked[k:]], key=lambda x: (-x[1], x[0]))
    tok = Tokenizer(models.Unigram([(p, 0.0) for p in specials] + rest, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)])
    ids = {t: tok.token_to_id(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}
    assert ids["<s>"] == 0 and ids["<pad>"] == 1 and ids["</s>"] == 2 and ids["<unk>"] == 3, ids
    assert ids["<mask>"] == tok.get_vocab_size() - 1, ids
    tok.post_processor = TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    hf_tok = XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=model_max_length,
    )
    hf_tok.save_pretrained(str(out_dir), legacy_format=False)
    return tok.get_vocab_size()


def make_long_text(tokenizer, min_tokens: int = 640) -> str:
    parts: list[str] = []
    i = 0
    while True:
        parts.append(LONG_SENTENCES[i % len(LONG_SENTENCES)])
        i += 1
        text = " ".join(parts)
        if len(tokenizer(text)["input_ids"]) >= min_tokens:
            return text


def randomise_state_dict(model, seed: int) -> dict:
    """Fresh seeded values for every tensor; LoRA factors non-zero and different per adapter."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    new_sd = {}
    for key, value in sorted(model.state_dict().items()):
        shape = value.shape
        is_emb = "embeddings." in key
        if key.endswith("lora_A"):
            if is_emb:  # (n_adapt, num_embeddings, r): zero-initialised officially
                t = torch.randn(shape, generator=gen)
            else:  # (n_adapt, r, fan_in)
                t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        elif key.endswith("lora_B"):
            t = torch.randn(shape, generator=gen)  # linear: (n_adapt, fan_out, r) zero officially
        elif key.endswith("parametrizations.weight.original"):
            if is_emb:
                t = torch.randn(shape, generator=gen)
            else:
                t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        elif any(f"{n}.weight" in key for n in ("emb_ln", "norm1", "norm2")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        else:
            raise KeyError(f"unexpected state-dict key {key}")
        new_sd[key] = t.to(value.dtype)
    return new_sd


def check_adapters(model) -> None:
    import torch

    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "lora_B"):
            a, b = module.lora_A.detach(), module.lora_B.detach()
            # the parametrization's own factor order: B @ A for linear layers, A @ B for embeddings
            deltas = [torch.matmul(*module.swap((b[t], a[t]))) for t in range(a.shape[0])]
            for t, d in enumerate(deltas):
                assert d.abs().max() > 1e-3, f"{name}: adapter {t} is ~zero"
                for u in range(t):
                    assert not torch.allclose(d, deltas[u]), f"{name}: adapters {u} and {t} coincide"


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--official-code", required=True, help="directory containing the official package")
    parser.add_argument("--package", default="jina_official", help="package name of the official code")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--rotary-dim", type=int, help="rotary_emb_dim (partial rotary; default: the head dim)")
    parser.add_argument("--interleaved", action="store_true", help="rotary_emb_interleaved (GPT-J pairs)")
    parser.add_argument("--absolute", type=int, metavar="N",
                        help="learned absolute positions with a table of N rows instead of rotary (N > the long "
                             "text's tokens + 2: the official code has no windows)")
    args = parser.parse_args()
    # Read by the official code through getattr: only written when asked for.
    rotary = {"rotary_emb_interleaved": True} if args.interleaved else {}
    if args.rotary_dim is not None:
        rotary["rotary_emb_dim"] = args.rotary_dim

    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    import torch
    import transformers

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = build_tokenizer(out, args.absolute - 2 if args.absolute else 8194)

    sys.path.insert(0, str(Path(args.official_code).resolve()))
    conf_mod = importlib.import_module(f"{args.package}.configuration_xlm_roberta")
    lora_mod = importlib.import_module(f"{args.package}.modeling_lora")

    config = conf_mod.XLMRobertaFlashConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=args.absolute or 8194,
        type_vocab_size=1,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        position_embedding_type="absolute" if args.absolute else "rotary",
        rotary_emb_base=20000.0,
        lora_adaptations=list(TASKS),
        task_instructions=dict(TASK_INSTRUCTIONS),
        lora_rank=4,
        lora_dropout_p=0.0,
        lora_alpha=1,
        lora_main_params_trainable=False,
        load_trained_adapters=True,
        use_flash_attn=False,
        torch_dtype=None,
        emb_pooler=None,
        matryoshka_dimensions=list(MATRYOSHKA_DIMS),
        truncate_dim=None,
        architectures=["XLMRobertaLoRA"],
        **rotary,
    )
    # the official XLMRobertaModel.__init__ calls AutoTokenizer.from_pretrained(config._name_or_path)
    config._name_or_path = str(out)

    model = lora_mod.XLMRobertaLoRA(config)
    model.load_state_dict(randomise_state_dict(model, args.seed), strict=True)
    model.eval()
    check_adapters(model)
    model.save_pretrained(str(out), safe_serialization=True)

    # Reload through the official from_pretrained: the outputs below come from the saved checkpoint.
    reload_cfg = conf_mod.XLMRobertaFlashConfig.from_pretrained(str(out))
    model = lora_mod.XLMRobertaLoRA.from_pretrained(str(out), config=reload_cfg)
    model.eval()
    check_adapters(model)
    tokenizer = model.roberta.tokenizer

    texts = list(TEXTS)
    texts[-1] = make_long_text(tokenizer)

    arrays: dict[str, np.ndarray] = {}
    for task in [None, *TASKS]:
        for dim in TRUNCATE_DIMS:
            emb = model.encode(texts, task=task, truncate_dim=dim)
            key = f"{task or 'none'}|{dim or 'none'}"
            arrays[key] = np.asarray(emb, dtype=np.float32)
            assert arrays[key].shape == (len(texts), dim or config.hidden_size), (key, arrays[key].shape)

    # Direct forward, per-row adapters. Rows are independent in the official forward, so rows with
    # task -1 (no adapter) are taken from a forward without adapter_mask and the others from a forward
    # whose adapter_mask holds each row's task (the official forward routes every row exactly).
    fwd_texts = [texts[i] for i, _ in FORWARD_ROWS]
    task_ids = torch.tensor([t for _, t in FORWARD_ROWS], dtype=torch.long)
    enc = tokenizer(fwd_texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        masked = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            adapter_mask=task_ids.clamp(min=0).to(torch.int32),
        )[0].float()
        base = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0].float()
    combined = torch.where((task_ids >= 0)[:, None, None], masked, base)
    arrays["forward/input_ids"] = enc["input_ids"].numpy().astype(np.int64)
    arrays["forward/attention_mask"] = enc["attention_mask"].numpy().astype(np.int64)
    arrays["forward/task_ids"] = task_ids.numpy().astype(np.int64)
    arrays["forward/last_hidden_state"] = combined.numpy().astype(np.float32)
    arrays["forward/base_last_hidden_state"] = base.numpy().astype(np.float32)
    np.savez_compressed(out / "expected.npz", **arrays)

    meta = {
        "description": "Outputs of the official jina-embeddings-v3 remote code on the tiny model here.",
        "texts": texts,
        "tasks": TASKS,
        "task_instructions": TASK_INSTRUCTIONS,
        "truncate_dims": TRUNCATE_DIMS,
        "encode_key_format": "'<task or none>|<truncate_dim or none>' -> float32 (n_texts, dim), unit norm",
        "encode_call": "model.encode(texts, task=task, truncate_dim=dim)  # official XLMRobertaLoRA.encode",
        "token_ids": [tokenizer(t)["input_ids"] for t in texts],
        "forward": {
            "rows": [{"text_index": i, "task_id": t} for i, t in FORWARD_ROWS],
            "note": (
                "forward/last_hidden_state: official forward (fp32) of forward/input_ids with "
                "attention_mask; row r uses adapter forward/task_ids[r] (-1 = no adapter). "
                "Compare real tokens only (attention_mask == 1); padded positions are whatever "
                "the official code computes."
            ),
        },
        "seed": args.seed,
        "rotary": rotary,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }
    with open(out / "expected.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
