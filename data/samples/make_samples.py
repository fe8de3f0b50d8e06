"""Write the small multilingual sample sets in this folder (deterministic; no downloads).

    python data/samples/make_samples.py

Facts about countries in four languages give query/passage pairs (one file per language, as the paper's
one-language batches), hard-negative tuples, graded STS pairs and raw text for MLM; short product reviews
and assistant requests give labelled sets. They exist to run every training stage end to end, not to
train a useful model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

# country (en, de, fr, es), capital, continent (en, de, fr, es), language (en, de, fr, es), river
COUNTRIES = [
    (("France", "Frankreich", "la France", "Francia"), "Paris", ("Europe", "Europa", "l'Europe", "Europa"),
     ("French", "Französisch", "le français", "francés"), "Loire"),
    (("Germany", "Deutschland", "l'Allemagne", "Alemania"), "Berlin", ("Europe", "Europa", "l'Europe", "Europa"),
     ("German", "Deutsch", "l'allemand", "alemán"), "Rhine"),
    (("Spain", "Spanien", "l'Espagne", "España"), "Madrid", ("Europe", "Europa", "l'Europe", "Europa"),
     ("Spanish", "Spanisch", "l'espagnol", "español"), "Ebro"),
    (("Italy", "Italien", "l'Italie", "Italia"), "Rome", ("Europe", "Europa", "l'Europe", "Europa"),
     ("Italian", "Italienisch", "l'italien", "italiano"), "Po"),
    (("Portugal", "Portugal", "le Portugal", "Portugal"), "Lisbon", ("Europe", "Europa", "l'Europe", "Europa"),
     ("Portuguese", "Portugiesisch", "le portugais", "portugués"), "Tagus"),
    (("Poland", "Polen", "la Pologne", "Polonia"), "Warsaw", ("Europe", "Europa", "l'Europe", "Europa"),
     ("Polish", "Polnisch", "le polonais", "polaco"), "Vistula"),
    (("Sweden", "Schweden", "la Suède", "Suecia"), "Stockholm", ("Europe", "Europa", "l'Europe", "Europa"),
     ("Swedish", "Schwedisch", "le suédois", "sueco"), "Klarälven"),
    (("Greece", "Griechenland", "la Grèce", "Grecia"), "Athens", ("Europe", "Europa", "l'Europe", "Europa"),
     ("Greek", "Griechisch", "le grec", "griego"), "Aliakmonas"),
    (("Japan", "Japan", "le Japon", "Japón"), "Tokyo", ("Asia", "Asien", "l'Asie", "Asia"),
     ("Japanese", "Japanisch", "le japonais", "japonés"), "Shinano"),
    (("China", "China", "la Chine", "China"), "Beijing", ("Asia", "Asien", "l'Asie", "Asia"),
     ("Mandarin Chinese", "Hochchinesisch", "le mandarin", "chino mandarín"), "Yangtze"),
    (("India", "Indien", "l'Inde", "India"), "New Delhi", ("Asia", "Asien", "l'Asie", "Asia"),
     ("Hindi", "Hindi", "le hindi", "hindi"), "Ganges"),
    (("Vietnam", "Vietnam", "le Viêt Nam", "Vietnam"), "Hanoi", ("Asia", "Asien", "l'Asie", "Asia"),
     ("Vietnamese", "Vietnamesisch", "le vietnamien", "vietnamita"), "Mekong"),
    (("Egypt", "Ägypten", "l'Égypte", "Egipto"), "Cairo", ("Africa", "Afrika", "l'Afrique", "África"),
     ("Arabic", "Arabisch", "l'arabe", "árabe"), "Nile"),
    (("Kenya", "Kenia", "le Kenya", "Kenia"), "Nairobi", ("Africa", "Afrika", "l'Afrique", "África"),
     ("Swahili", "Swahili", "le swahili", "suajili"), "Tana"),
    (("Nigeria", "Nigeria", "le Nigeria", "Nigeria"), "Abuja", ("Africa", "Afrika", "l'Afrique", "África"),
     ("English", "Englisch", "l'anglais", "inglés"), "Niger"),
    (("Brazil", "Brasilien", "le Brésil", "Brasil"), "Brasília", ("South America", "Südamerika",
     "l'Amérique du Sud", "Sudamérica"), ("Portuguese", "Portugiesisch", "le portugais", "portugués"), "Amazon"),
    (("Argentina", "Argentinien", "l'Argentine", "Argentina"), "Buenos Aires", ("South America", "Südamerika",
     "l'Amérique du Sud", "Sudamérica"), ("Spanish", "Spanisch", "l'espagnol", "español"), "Paraná"),
    (("Peru", "Peru", "le Pérou", "Perú"), "Lima", ("South America", "Südamerika", "l'Amérique du Sud",
     "Sudamérica"), ("Spanish", "Spanisch", "l'espagnol", "español"), "Ucayali"),
    (("Canada", "Kanada", "le Canada", "Canadá"), "Ottawa", ("North America", "Nordamerika",
     "l'Amérique du Nord", "Norteamérica"), ("English and French", "Englisch und Französisch",
     "l'anglais et le français", "inglés y francés"), "Mackenzie"),
    (("Mexico", "Mexiko", "le Mexique", "México"), "Mexico City", ("North America", "Nordamerika",
     "l'Amérique du Nord", "Norteamérica"), ("Spanish", "Spanisch", "l'espagnol", "español"), "Grijalva"),
    (("Australia", "Australien", "l'Australie", "Australia"), "Canberra", ("Oceania", "Ozeanien", "l'Océanie",
     "Oceanía"), ("English", "Englisch", "l'anglais", "inglés"), "Murray"),
    (("Turkey", "die Türkei", "la Turquie", "Turquía"), "Ankara", ("Asia and Europe", "Asien und Europa",
     "l'Asie et l'Europe", "Asia y Europa"), ("Turkish", "Türkisch", "le turc", "turco"), "Kızılırmak"),
]

LANGS = ("en", "de", "fr", "es")

# Per language: (question template, passage template) per fact; {c}=country {k}=capital {r}=continent
# {l}=language {v}=river.
FACTS = {
    "en": [
        ("What is the capital of {c}?", "{k} is the capital of {c} and the seat of its national government."),
        ("Which language is spoken in {c}?", "The official language of {c} is {l}, used in schools and courts."),
        ("On which continent is {c}?", "{c} is a country in {r}; its capital is {k}."),
        ("longest river {c}", "The {v} is the longest river that flows within the borders of {c}."),
    ],
    "de": [
        ("Was ist die Hauptstadt von {c}?", "{k} ist die Hauptstadt von {c} und Sitz der Regierung."),
        ("Welche Sprache spricht man in {c}?",
         "Amtssprache in {c} ist {l}; sie wird in Schulen und Behörden verwendet."),
        ("Auf welchem Kontinent liegt {c}?", "{c} ist ein Staat in {r}, die Hauptstadt heißt {k}."),
        ("längster Fluss {c}", "Der längste Fluss, der ganz durch {c} fließt, ist der {v}."),
    ],
    "fr": [
        ("Quelle est la capitale de {c} ?", "{k} est la capitale de {c} et le siège du gouvernement."),
        ("Quelle langue parle-t-on dans {c} ?",
         "La langue officielle de {c} est {l}, utilisée à l'école et en justice."),
        ("Sur quel continent se trouve {c} ?", "{c} est un pays situé en {r} ; sa capitale est {k}."),
        ("plus long fleuve {c}", "Le {v} est le plus long cours d'eau qui traverse {c}."),
    ],
    "es": [
        ("¿Cuál es la capital de {c}?", "{k} es la capital de {c} y sede del gobierno nacional."),
        ("¿Qué idioma se habla en {c}?", "El idioma oficial de {c} es el {l}, usado en escuelas y tribunales."),
        ("¿En qué continente está {c}?", "{c} es un país de {r}; su capital es {k}."),
        ("río más largo {c}", "El {v} es el río más largo que corre dentro de {c}."),
    ],
}

PARAPHRASES = [  # English STS: (sentence, paraphrase) per fact kind
    ("{k} is the capital of {c}.", "The capital city of {c} is {k}."),
    ("People in {c} mostly speak {l}.", "{l} is the main language of {c}."),
    ("{c} lies in {r}.", "{c} is located in {r}."),
    ("The {v} flows through {c}.", "The river {v} runs across {c}."),
]

REVIEWS = {
    "positive": [
        "Great product, works exactly as described.", "Absolutely love it, would buy again.",
        "Fast delivery and excellent quality.", "Sehr gutes Produkt, schnelle Lieferung.",
        "Ich bin total zufrieden, klare Empfehlung.", "Produit excellent, je le recommande.",
        "Très bonne qualité, livraison rapide.", "Me encanta, funciona perfectamente.",
        "Excelente calidad y muy buen precio.", "The battery lasts for days, fantastic.",
        "Super bequem und sieht toll aus.", "Rapport qualité-prix imbattable.",
    ],
    "negative": [
        "Broke after two days, very disappointed.", "Terrible quality, do not buy.",
        "It arrived damaged and support never answered.", "Leider nach einer Woche kaputt.",
        "Völlig überteuert und schlecht verarbeitet.", "Produit de mauvaise qualité, déçu.",
        "Jamais reçu ma commande, service nul.", "Muy mala calidad, no lo recomiendo.",
        "Llegó roto y nadie respondió.", "The screen flickers constantly, waste of money.",
        "Passt überhaupt nicht, zurückgeschickt.", "Ça ne fonctionne pas du tout.",
    ],
    "neutral": [
        "It is okay, nothing special.", "Does the job, average quality.", "Arrived on time, as expected.",
        "Ganz okay für den Preis.", "Erfüllt seinen Zweck, mehr nicht.", "Correct, sans plus.",
        "Conforme à la description.", "Está bien, nada especial.", "Cumple su función.",
        "Packaging was plain, product is fine.", "Durchschnittliche Qualität.", "Ni bien ni mal.",
    ],
}

INTENTS = {
    "weather": ["Will it rain tomorrow?", "What's the weather like in Berlin?", "Wird es morgen schneien?",
                "Quel temps fera-t-il ce week-end ?", "¿Va a hacer calor mañana?", "Do I need an umbrella today?"],
    "alarm": ["Wake me up at 6 am.", "Set an alarm for seven thirty.", "Stell einen Wecker auf 7 Uhr.",
              "Réveille-moi à six heures.", "Pon una alarma a las ocho.", "Cancel my morning alarm."],
    "music": ["Play some jazz.", "Put on my running playlist.", "Spiel etwas von den Beatles.",
              "Mets de la musique classique.", "Reproduce música relajante.", "Skip this song."],
    "timer": ["Start a ten minute timer.", "Timer for the pasta, eight minutes.", "Stell einen Timer auf fünf Minuten.",
              "Lance un minuteur de trois minutes.", "Pon un temporizador de veinte minutos.",
              "How much time is left on my timer?"],
    "translate": ["How do you say thank you in Japanese?", "Translate good morning into Spanish.",
                  "Was heißt Katze auf Französisch?", "Comment dit-on merci en allemand ?",
                  "¿Cómo se dice perro en inglés?", "Translate this sentence to Italian."],
}


def fill(t: str, row: tuple, lang: int) -> str:
    names, capital, continent, language, river = row
    return t.format(c=names[lang], k=capital, r=continent[lang], l=language[lang], v=river)


def write(name: str, records: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(0)
    for li, lang in enumerate(LANGS):
        pairs = [{"query": fill(q, row, li), "positive": fill(p, row, li)}
                 for row in COUNTRIES for q, p in FACTS[lang]]
        rng.shuffle(pairs)
        write(f"pairs_{lang}.jsonl", pairs)
        write(f"raw_{lang}.jsonl", [{"text": r["positive"]} for r in pairs])
    tuples = []
    for li, lang in enumerate(LANGS):
        for ci, row in enumerate(COUNTRIES):
            for fi, (q, p) in enumerate(FACTS[lang]):
                # Hard negatives: the same fact about other countries, and other facts about this one.
                others = [COUNTRIES[j] for j in rng.sample([j for j in range(len(COUNTRIES)) if j != ci], 2)]
                negs = [fill(p, o, li) for o in others] + [fill(FACTS[lang][(fi + 1) % 4][1], row, li)]
                tuples.append({"query": fill(q, row, li), "positive": fill(p, row, li), "negatives": negs})
    rng.shuffle(tuples)
    write("retrieval_tuples.jsonl", tuples)
    sts = []
    for ci, row in enumerate(COUNTRIES):
        for fi, (a, b) in enumerate(PARAPHRASES):
            sts.append({"text1": fill(a, row, 0), "text2": fill(b, row, 0), "score": 5.0})
            other_fact = PARAPHRASES[(fi + 1) % 4][1]
            sts.append({"text1": fill(a, row, 0), "text2": fill(other_fact, row, 0), "score": 2.0})
            other = COUNTRIES[(ci + 1 + rng.randrange(len(COUNTRIES) - 1)) % len(COUNTRIES)]
            sts.append({"text1": fill(a, row, 0), "text2": fill(PARAPHRASES[(fi + 2) % 4][0], other, 0),
                        "score": 0.0})
    rng.shuffle(sts)
    write("sts_scored.jsonl", sts)
    reviews = [{"text": t, "label": lab} for lab, ts in REVIEWS.items() for t in ts]
    intents = [{"text": t, "label": lab} for lab, ts in INTENTS.items() for t in ts]
    rng.shuffle(reviews)
    rng.shuffle(intents)
    write("reviews_labelled.jsonl", reviews)
    write("intents_labelled.jsonl", intents)


if __name__ == "__main__":
    main()
