"""Answer overlap: ROUGE-L F1, token F1, exact match and containment, for English and Chinese.

Normalization (`tokens`), after SQuAD v1.1's evaluation script (normalize_answer): Unicode NFKC
(full-width letters and digits become ASCII), lowercase, punctuation and symbols removed (Unicode
categories P* and S*, a superset of SQuAD's string.punctuation that also covers '，。？' and '+='),
the English articles a/an/the dropped. Chinese, Japanese and Korean text has no spaces between
words, so every CJK character is a token of its own (character-level, the usual choice for Chinese
ROUGE/F1, e.g. CLUE and DuReader); other text splits into runs of letters and digits.

ROUGE-L comes from Google's `rouge-score` (rouge_scorer.RougeScorer, LCS-based F1 of Lin 2004).
Its default tokenizer replaces everything but [a-z0-9] with spaces, which turns Chinese into no
tokens at all (a score of 0 for any Chinese answer), so it is given the tokenizer above; no stemming.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import cache
from typing import Any

ARTICLES = frozenset({"a", "an", "the"})
# CJK Unified Ideographs (+ extension A, compatibility), kana, Hangul syllables
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def tokens(text: str) -> list[str]:
    """Normalized tokens of `text` (see the module docstring). '' -> []."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return [t for t in _TOKEN.findall(text) if t not in ARTICLES]


@cache
def _scorer() -> Any:
    """rouge-score's scorer with the tokenizer above, made on first use: rouge-score imports nltk,
    which only the evaluation child needs, not the control plane that imports this package."""
    from rouge_score import rouge_scorer, tokenizers

    class _Tokenizer(tokenizers.Tokenizer):  # type: ignore[misc]
        def tokenize(self, text: str) -> list[str]:
            return tokens(text)

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] (rouge-score; 0 when either side has no token)."""
    return float(_scorer().score(reference, answer)["rougeL"].fmeasure)


def token_f1(answer: str, reference: str) -> float:
    """SQuAD token F1 in [0, 1]: harmonic mean of token precision and recall over the multiset of
    common tokens. Both empty: 1.0; one empty: 0.0 (as SQuAD v2's script)."""
    pred, gold = tokens(answer), tokens(reference)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(answer: str, references: Iterable[str]) -> float:
    """1.0 when the answer's normalized tokens equal those of any reference, else 0.0."""
    pred = tokens(answer)
    return float(any(pred == tokens(ref) for ref in references))


def contains(answer: str, references: Iterable[str]) -> float:
    """1.0 when any reference's normalized tokens occur as a contiguous run in the answer's: 'Paris'
    is in 'The capital of France is Paris.', '5' is not in '2 + 3 = 15', '巴黎' is in '首都是巴黎。'.
    A reference with no token never matches."""
    pred = tokens(answer)
    for ref in references:
        gold = tokens(ref)
        if gold and any(pred[i:i + len(gold)] == gold for i in range(len(pred) - len(gold) + 1)):
            return 1.0
    return 0.0
