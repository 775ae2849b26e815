"""Text heuristics of the offline provider: content words, a light stemmer, sentence splitting,
question decomposition and follow-up rewriting. English-centric, dependency-free, deterministic."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "content_terms", "content_words", "decompose", "is_follow_up", "resolve_follow_up", "split_sentences", "stem",
]

STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
else ever few for from further get gets got had hadn't has hasn't have haven't having he he'd he'll he's her
here here's hers herself him himself his how how's however i i'd i'll i'm i've if in into is isn't it it's
its itself just let let's like many may me might more most much must mustn't my myself need no nor not now of
off on once one only or other ought our ours ourselves out over own per please same shall shan't she she'd
she'll she's should shouldn't so some such than that that's the their theirs them themselves then there
there's these they they'd they'll they're they've this those though through thus to too under until up upon
us use used using very via was wasn't we we'd we'll we're we've were weren't what what's whatever when when's
where where's whereas whether which while who who's whom whose why why's will with within without won't would
wouldn't yes yet you you'd you'll you're you've your yours yourself yourselves tell explain describe give
know show say said something anything thing things does done make makes made kind kinds way ways
""".split())

# Words that make a question lean on an earlier turn ("what do they eat?").
ANAPHORS = frozenset("it its it's they them their theirs this that these those he him his she her there such "
                     "same former latter one ones".split())
_FOLLOW_UP_OPENERS = ("and ", "also ", "what about ", "how about ", "and what", "and how", "why not", "so ")
_WH = ("what", "how", "who", "whom", "whose", "when", "where", "why", "which", "is", "are", "was", "were",
       "do", "does", "did", "can", "could", "should", "will", "would", "has", "have", "had")

# These run on chat questions inside the API and on every retrieved text, so each is linear: a
# repeated part is possessive (`*+`, `++`: it never gives back what it read) and none is next to
# another that could match the same characters. A match that could start inside a run of blanks
# starts only where the run does (`(?<!...)`): otherwise each blank of a long run is a new start
# that reads the rest of the run again (quadratic; 40,000 spaces took 19 s in `_AND_SPLIT`).
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*+")
_SENTENCE_END = re.compile(
    r"(?<=[.!?])[\"')\]]*+\s++(?=[\"'(\[]?[A-Z0-9])"  # a sentence end, its closers, blanks, a new start
    r"|\n(?:[^\S\n]*+\n)++"  # a blank line (through the last line break of the blanks)
    r"|\n(?=\s*+[-*•#\d])"  # a line break before a list item or heading
)
_PART_SPLIT = re.compile(r"\?++\s*+|;\s*+|\n++")
_AND_SPLIT = re.compile(
    r"(?:,|(?<![\s,]))\s++(?:and|also|as well as|plus)\s++(?=(?:" + "|".join(_WH) + r")\b)", re.IGNORECASE
)


def stem(word: str) -> str:
    """A light suffix stripper (plural, -ing, -ed, -ly, possessive, final e): enough to match
    "ships"/"ship", "proofing"/"proof", "carved"/"carve" without a dictionary. Only ever
    compared with other stems, so it need not produce real words."""
    w = word.lower().strip("'-")
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) >= 5:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "xes", "ches", "shes", "zes")):
        w = w[:-2]
    elif w.endswith("ing") and len(w) >= 6:
        w = w[:-3]
    elif w.endswith("ed") and len(w) >= 5:
        w = w[:-2]
    elif w.endswith("ly") and len(w) >= 6:
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
        w = w[:-1]  # "stopp(ed)" -> "stop"
    return w


def content_words(text: str) -> list[str]:
    """The words of `text` that carry meaning (stopwords dropped), in order, original case."""
    return [w for w in _WORD.findall(text) if (w.lower() not in STOPWORDS and len(w) > 1) or w.isdigit()]


def content_terms(text: str) -> set[str]:
    """Distinct stems of the content words."""
    return {stem(w) for w in content_words(text)}


def split_sentences(text: str) -> list[str]:
    """Sentences (and list items / paragraphs), whitespace-normalised, without empty pieces."""
    pieces = _SENTENCE_END.split(text)
    out = []
    for piece in pieces:
        sentence = " ".join(piece.split()).lstrip("#*-• ").strip()
        if sentence:
            out.append(sentence)
    return out


def decompose(question: str, max_parts: int = 4) -> list[str]:
    """Split a multi-part question into its parts: several questions in one message ("What is X?
    How does Y work?"), or one sentence joining two questions ("what is X and how does Y work").
    A single question comes back as a one-element list; parts without content words are dropped."""
    parts: list[str] = []
    for piece in _PART_SPLIT.split(question):
        for sub in _AND_SPLIT.split(piece):
            sub = sub.strip(" ,.")
            if sub and content_terms(sub):
                parts.append(sub)
    if not parts:
        stripped = question.strip()
        return [stripped] if stripped else []
    return parts[:max_parts]


def is_follow_up(question: str) -> bool:
    """Does this question lean on an earlier turn (a pronoun, "what about ...", no topic of its own)?"""
    lowered = question.lower().strip()
    if any(lowered.startswith(opener) for opener in _FOLLOW_UP_OPENERS):
        return True
    if any(w.lower() in ANAPHORS for w in _WORD.findall(lowered)):
        return True
    return not content_terms(question)


def resolve_follow_up(question: str, earlier_questions: Sequence[str]) -> tuple[str, list[str]]:
    """The question and the topic words it borrows: a follow-up gets the content words of the
    previous user turn (itself resolved against the turns before it) that it does not mention."""
    previous: list[str] = []
    for earlier in earlier_questions:
        previous = _topic_of(earlier, previous)
    if not is_follow_up(question):
        return question, []
    have = content_terms(question)
    borrowed: list[str] = []
    for word in previous:
        if stem(word) not in have:
            have.add(stem(word))
            borrowed.append(word)
    return question, borrowed


def _topic_of(question: str, previous_topic: list[str]) -> list[str]:
    """The content words a later follow-up would borrow from this question."""
    own = content_words(question)
    if is_follow_up(question):
        own_stems = {stem(w) for w in own}
        return own + [w for w in previous_topic if stem(w) not in own_stems]
    return own
