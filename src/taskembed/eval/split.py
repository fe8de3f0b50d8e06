"""Held-out split rule for the evaluation suite, importable by the training side.

The rule is a pure function of ``(source, key)`` so that the eval builder (``data/build_suite.py``) and any
training-data pipeline agree without sharing state:

* ``lohelp``  -- LibreOffice help, key = language-independent page path (``text/swriter/guide/x.html``);
  30 % of pages are held out. Keying on the path (not on a paragraph) keeps every language version and
  every paragraph of a held-out page out of training, so cross-lingual leakage is impossible.
* ``manpage`` -- man pages, key = page name with section (``ls.1``), language-independent; 30 % held out.
* ``debref``  -- Debian Reference, key = ``"<chapter>#<paragraph index>"`` (the paragraph order is
  identical in all languages); 40 % held out. Whole chapters cannot be held out because the chapter is
  the clustering label.
* ``gettext`` -- translation catalogs, key = gettext domain (``vlc``, ``gnucash``, ...); whole domains in
  :data:`HELDOUT_GETTEXT_DOMAINS` are held out, all others are free for training. UI strings repeat
  across applications, so training code should additionally drop any pair whose English text has a
  :func:`text_fingerprint` listed in ``data/eval/fingerprints.txt``.
* ``gensim``  -- the English similarity sets shipped in gensim's test data; always held out.

Hashing uses sha256, never Python's salted ``hash()``, so the result is identical across processes,
machines and Python versions.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Fraction of keys held out per source (hash-based sources only).
HELDOUT_FRACTION: dict[str, float] = {
    "lohelp": 0.30,
    "manpage": 0.30,
    "debref": 0.40,
    "gensim": 1.0,
}

# Whole gettext domains reserved for evaluation; fixed list, never derived from data.
HELDOUT_GETTEXT_DOMAINS: frozenset[str] = frozenset({"vlc", "gnucash", "gramps"})

SOURCES: frozenset[str] = frozenset(HELDOUT_FRACTION) | {"gettext"}


def stable_unit(source: str, key: str) -> float:
    """Map ``(source, key)`` to a reproducible number in ``[0, 1)`` (first 64 bits of sha256)."""
    digest = hashlib.sha256(f"{source}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_heldout(source: str, key: str) -> bool:
    """Return True when the unit ``key`` of ``source`` belongs to the evaluation suite.

    Raises ``KeyError`` for an unknown source: silently treating it as "train" would leak eval data.
    """
    if source == "gettext":
        return key in HELDOUT_GETTEXT_DOMAINS
    if source not in HELDOUT_FRACTION:
        raise KeyError(f"unknown source {source!r}; known: {sorted(SOURCES)}")
    return stable_unit(source, key) < HELDOUT_FRACTION[source]


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
# Accelerator markers of UI strings (``_Open``, ``&Save``, ``~Print``) must not change the fingerprint.
_ACCEL = re.compile(r"[_&~](?=\w)")


def normalize_text(text: str) -> str:
    """Normalisation behind :func:`text_fingerprint`: NFKC, casefold, drop accelerators/punctuation."""
    text = unicodedata.normalize("NFKC", text)
    text = _ACCEL.sub("", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def text_fingerprint(text: str) -> str:
    """Hash of the normalised text (32 hex chars); equal for texts differing only in case/punctuation."""
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()[:32]
