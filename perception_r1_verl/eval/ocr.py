"""Page-OCR metrics: normalised edit distance, token-set F1 / precision / recall, BLEU, METEOR.

These follow the evaluation the paper used (Fox / GOT-OCR style), averaged per sample:

- ``edit_distance``: character Levenshtein distance / ``max(len(pred), len(gt))``
  (lower is better; 0 when both are empty).
- ``precision`` / ``recall`` / ``F1``: over the *sets* of tokens (as ``nltk.metrics``).
- ``BLEU``: ``nltk`` ``sentence_bleu`` with the default 4-gram weights, no smoothing.
- ``METEOR``: ``nltk`` ``meteor_score`` (Porter stemming, WordNet synonyms).

Tokenisation. A sample is Chinese (``zh``) when its ground truth holds a CJK ideograph
(U+4E00-U+9FFF), else English (``en``); the released code also looked at the prediction,
which let a garbled prediction change how its own reference is tokenised.
``en``: whitespace split. ``zh``: ``jieba.lcut`` (whitespace tokens dropped) when
``zh_tokenizer="jieba"``, or one token per ideograph with other runs split on whitespace
when ``"char"``; ``"auto"`` picks jieba if it is installed. ``metrics.json`` records the
tokeniser used, since the two give different numbers.

Empty answers never crash: an empty prediction scores 0 (and edit distance 1) against a
non-empty reference, and an empty prediction of an empty reference scores perfectly.

METEOR needs WordNet 3.0, read offline from NLTK's data (``python -m nltk.downloader
wordnet``, which needs network once) or from Debian's ``wordnet-base`` package
(``apt-get install wordnet-base``, files in ``/usr/share/wordnet``, laid out once for NLTK
under ``~/.cache/perception_r1_verl``). Without either METEOR is reported as ``null`` with a
warning saying this; every other metric is unaffected.
"""

from __future__ import annotations

import difflib
import functools
import html
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..parsing import Answer
from ..rewards.ocr import edit_similarity
from .metric import Metric
from .registry import register

_CJK = re.compile(r"[\u4e00-\u9fff]")
_CHAR_TOKENS = re.compile(r"[\u4e00-\u9fff]|[^\s\u4e00-\u9fff]+")
DEBIAN_WORDNET = Path("/usr/share/wordnet")
METEOR_HELP = (
    "METEOR needs WordNet 3.0 offline: install Debian's `wordnet-base` (apt-get install "
    "wordnet-base) or NLTK's data package (python -m nltk.downloader wordnet)"
)
# WordNet 3.0's lexicographer files in order (lexnames(5WN)); Debian omits this index
# file that NLTK's reader requires, so it is written from this fixed list.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_DEBIAN_FILES = (
    "adj.exc adv.exc noun.exc verb.exc cntlist.rev data.adj data.adv data.noun data.verb "
    "index.adj index.adv index.noun index.verb"
).split()
OCR_METRICS = ("edit_distance", "F1", "precision", "recall", "BLEU", "METEOR")


def language(reference: str) -> str:
    """``"zh"`` when the reference holds a CJK ideograph, else ``"en"``.

    >>> language("Hello world"), language("你好 world")
    ('en', 'zh')
    """
    return "zh" if _CJK.search(reference) else "en"


def resolve_zh_tokenizer(name: str = "auto") -> str:
    """``"jieba"`` or ``"char"``; ``"auto"`` is jieba when importable."""
    if name == "auto":
        try:
            import jieba  # noqa: F401
        except ImportError:
            return "char"
        return "jieba"
    if name not in ("jieba", "char"):
        raise ValueError(f"zh tokenizer must be 'auto', 'jieba' or 'char', got {name!r}")
    return name


def tokenize(text: str, lang: str, zh_tokenizer: str = "char") -> list[str]:
    """Tokens of ``text`` for language ``lang`` (see the module docstring).

    >>> tokenize("a  b\\nc", "en")
    ['a', 'b', 'c']
    >>> tokenize("识别 OCR 文本", "zh", "char")
    ['识', '别', 'OCR', '文', '本']
    """
    if lang == "en":
        return text.split()
    if zh_tokenizer == "jieba":
        import jieba

        return [t for t in jieba.lcut(text) if t.strip()]
    return _CHAR_TOKENS.findall(text)


def set_prf(pred_tokens: list[str], gt_tokens: list[str]) -> tuple[float, float, float]:
    """Precision, recall and F1 of the token sets.

    >>> set_prf(["a", "b", "b", "c"], ["a", "b", "d", "e"])
    (0.6666666666666666, 0.5, 0.5714285714285715)
    """
    p_set, g_set = set(pred_tokens), set(gt_tokens)
    if not p_set and not g_set:
        return 1.0, 1.0, 1.0
    common = len(p_set & g_set)
    precision = common / len(p_set) if p_set else 0.0
    recall = common / len(g_set) if g_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if common else 0.0
    return precision, recall, f1


def bleu(pred_tokens: list[str], gt_tokens: list[str]) -> float:
    """nltk sentence BLEU (4-gram, no smoothing); 1 for two empty texts, 0 for one."""
    if not pred_tokens or not gt_tokens:
        return float(not pred_tokens and not gt_tokens)
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns on every zero n-gram overlap
        return float(sentence_bleu([gt_tokens], pred_tokens))


def meteor(pred_tokens: list[str], gt_tokens: list[str], wordnet) -> float:
    """nltk METEOR with the given WordNet reader; 1 for two empty texts, 0 for one."""
    if not pred_tokens or not gt_tokens:
        return float(not pred_tokens and not gt_tokens)
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([gt_tokens], pred_tokens, wordnet=wordnet))


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "perception_r1_verl" / "nltk_data"


def _lay_out(root: Path) -> Path:
    """Copy Debian's WordNet under ``root/corpora/wordnet`` with the ``lexnames`` NLTK needs."""
    target = root / "corpora" / "wordnet"
    if (target / "lexnames").exists():
        return root
    tmp = target.with_name(f"wordnet.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in _DEBIAN_FILES:
        shutil.copyfile(DEBIAN_WORDNET / name, tmp / name)
    lines = (f"{i:02d}\t{name}\t0\n" for i, name in enumerate(_LEXNAMES))
    (tmp / "lexnames").write_text("".join(lines))
    try:
        tmp.rename(target)
    except OSError:  # another process laid it out first
        shutil.rmtree(tmp)
    return root


def _debian_wordnet_reader():
    """An NLTK reader over Debian's WordNet 3.0, laid out once in the cache."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _WordNet30(WordNetCorpusReader):
        # Debian's files say "WordNet 3.0", which NLTK would map onto its own
        # (absent) 3.0 copy; they are that version, so no mapping is needed.
        def map_wn(self, version="wordnet"):
            return None

    try:
        root = _lay_out(_cache_root())
    except OSError:  # no writable cache (read-only home): a private temporary copy
        root = _lay_out(Path(tempfile.mkdtemp(prefix="perception_r1_verl_wordnet_")))
    target = root / "corpora" / "wordnet"
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # NLTK only reads corpora under its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return _WordNet30(str(target), None)


@functools.lru_cache(maxsize=1)
def find_wordnet():
    """A WordNet reader for METEOR (NLTK's data, else Debian's), or None when neither exists."""
    import nltk

    try:
        nltk.data.find("corpora/wordnet.zip/wordnet/")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            if all((DEBIAN_WORDNET / name).exists() for name in _DEBIAN_FILES):
                return _debian_wordnet_reader()
            return None
    from nltk.corpus import wordnet

    return wordnet


def sample_ocr(answer: Answer, gt: dict, zh_tokenizer: str = "char", wordnet=None) -> dict:
    """Per-sample record; ``score`` (1 - edit distance) ranks samples in the report.

    ``wordnet`` None leaves ``METEOR`` None.

    >>> from perception_r1_verl.parsing import parse_answer
    >>> r = sample_ocr(parse_answer("Hello world"), {"text": "Hello there world"})
    >>> r["lang"], round(r["edit_distance"], 4), r["precision"], r["recall"], r["METEOR"]
    ('en', 0.3529, 1.0, 0.6666666666666666, None)
    """
    pred, ref = answer.text, gt["text"]
    lang = language(ref)
    pt, rt = tokenize(pred, lang, zh_tokenizer), tokenize(ref, lang, zh_tokenizer)
    precision, recall, f1 = set_prf(pt, rt)
    edit = 1.0 - edit_similarity(pred, ref)  # the training reward's measure, as a distance
    return {
        "score": 1.0 - edit,
        "lang": lang,
        "edit_distance": edit,
        "F1": f1,
        "precision": precision,
        "recall": recall,
        "BLEU": bleu(pt, rt),
        "METEOR": None if wordnet is None else meteor(pt, rt, wordnet),
        "pred_text": pred,
    }


def _means(records: list[dict]) -> dict:
    out = {}
    for name in OCR_METRICS:
        values = [r[name] for r in records]
        out[name] = None if any(v is None for v in values) else float(np.mean(values))
    return out


def summarize_ocr(records: list[dict]) -> dict:
    """Means of every metric, overall and per language (``by_language``).

    >>> recs = [{"lang": "en", "edit_distance": 0.2, "F1": 1.0, "precision": 1.0, "recall": 1.0,
    ...          "BLEU": 0.5, "METEOR": None}]
    >>> s = summarize_ocr(recs)
    >>> s["edit_distance"], s["METEOR"], list(s["by_language"])
    (0.2, None, ['en'])
    """
    out = _means(records)
    out["by_language"] = {}
    for lang in sorted({r["lang"] for r in records}):
        group = [r for r in records if r["lang"] == lang]
        out["by_language"][lang] = {"n_samples": len(group), **_means(group)}
    return out


def text_diff(pred: str, reference: str) -> str:
    """HTML diff of ``pred`` against ``reference`` by words (English) or characters (Chinese).

    >>> text_diff("the cat sat", "the dog sat")
    'the <del>dog</del> <ins>cat</ins> sat'
    """
    by_char = language(reference) == "zh"
    a = list(reference) if by_char else reference.split()
    b = list(pred) if by_char else pred.split()
    sep = "" if by_char else " "
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(html.escape(sep.join(a[i1:i2])))
            continue
        if i2 > i1:
            parts.append(f"<del>{html.escape(sep.join(a[i1:i2]))}</del>")
        if j2 > j1:
            parts.append(f"<ins>{html.escape(sep.join(b[j1:j2]))}</ins>")
    return sep.join(parts)


@register("ocr")
class OCRMetric(Metric):
    """Free text: no answer style to miss, nothing drawn; cases show the diff."""

    case_fields = ("edit_distance", "F1", "BLEU")
    summarize = staticmethod(summarize_ocr)

    def scorer(self, options, metrics, warnings):
        zh_tokenizer = resolve_zh_tokenizer(options.zh_tokenizer)
        wordnet = find_wordnet()
        if wordnet is None:
            warnings.append(f"METEOR not computed: {METEOR_HELP}")
        metrics["zh_tokenizer"] = zh_tokenizer
        return functools.partial(sample_ocr, zh_tokenizer=zh_tokenizer, wordnet=wordnet)

    def case_note(self, sample, record, response):
        return f'<div class="diff">{text_diff(record["pred_text"], sample.ground_truth["text"])}</div>'

    def rollout_note(self, answer, gt):
        if "text" not in gt:
            return ""
        return f'<div class="text">{text_diff(answer.text, gt["text"])}</div>'
