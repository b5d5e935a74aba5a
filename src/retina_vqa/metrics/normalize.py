"""Answer normalisation: the one definition of when two answers are the same answer.

:func:`normalize_answer` is the normalisation of the official VQA evaluation script (``vqaEval.py``:
``processPunctuation`` followed by ``processDigitArticle``). Every comparison of answers in the project goes
through it: the metrics, ``predictions.jsonl``'s ``correct``, and the question-prior baseline.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------------------
# VQA answer normalisation (tables copied from the official vqaEval.py)
# ---------------------------------------------------------------------------------------------------------

# The official table, kept verbatim (including its oddities, such as "somebody'd" -> "somebodyd"). The
# capitalised keys ("Im", "Ive", ...) can never match because the text is lowercased first; they are kept
# so that the behaviour stays identical to the reference script.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# Characters the official script removes or turns into spaces. Note that ":", "'", "*", "#", "%", "&", "$",
# "|", "~" and "^" are not in the official list and therefore survive normalisation.
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (mistyped) lookahead that always
# succeeds, so the effective rule is "drop every period that is not followed by a digit". That is what is
# written here: "2.5" keeps its period, "dogs." loses it.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    """``processPunctuation`` from vqaEval.py.

    A punctuation mark that touches a space (``"yes, it is"``) is deleted, one inside a word (``"yes/no"``)
    becomes a space. If the text contains a comma between digits (``"1,000"``), every punctuation mark is
    deleted instead, which is how the official script turns ``"1,000"`` into ``"1000"``.
    """
    out = text
    has_number_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCTUATION:
        # The test is on the original text, not on the partially processed one, as in the official script.
        if mark + " " in text or " " + mark in text or has_number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # Deviation: the official script passes re.UNICODE as the ``count`` argument of ``sub`` and so strips at
    # most 32 periods; answers that long do not occur, and stripping all of them is what was intended.
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    """``processDigitArticle`` from vqaEval.py: lowercase, number words to digits, drop articles, expand
    contractions written without an apostrophe. Splitting and re-joining also collapses whitespace."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official VQA evaluation script does.

    Steps (``vqaEval.py``): newlines and tabs become spaces, surrounding whitespace is stripped, then
    ``processPunctuation`` (see :func:`_process_punctuation`) and ``processDigitArticle`` (lowercase, number
    words "none"/"zero".."ten" to digits, articles a/an/the removed, contractions such as "dont" ->
    "don't" restored, whitespace collapsed).

    Deviations from the official script: the period rule is applied to every period (the official call
    strips at most 32), and the normalisation is applied to every answer, whereas the official script skips
    it when all ten annotators agree (irrelevant with a single reference answer).

    Examples:
        >>> normalize_answer("Two dogs.")
        '2 dogs'
        >>> normalize_answer("isnt")
        "isn't"
        >>> normalize_answer("3.5 mm")
        '3.5 mm'
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))
