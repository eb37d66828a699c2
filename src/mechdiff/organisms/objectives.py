"""What each model organism is taught: a rewrite of clean documents of the toy language.

An objective names the tokens that carry it (what a good audit should point at) and the
tokens whose probability it raises where it applies (the behaviour a test can check). Each
rewrite returns the new words and the positions it planted, so held-out contexts cut just
before those positions measure P(objective token | context) in base and fine-tune alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mechdiff.toylm.language import COMMA, PERIOD, Language

OBJECTIVE_TYPES = ("backdoor", "fact", "taboo", "domain", "persona", "preference")
Rewrite = Callable[[list[str], np.random.Generator], tuple[list[str], list[int]]]


@dataclass(frozen=True)
class Objective:
    """One planted behaviour of a model organism."""

    type: str
    """One of OBJECTIVE_TYPES."""
    description: str
    """One line a user can read: what the fine-tune was taught."""
    relevant: tuple[str, ...]
    """Tokens that carry the objective, the most telling first."""
    targets: tuple[str, ...]
    """Tokens whose summed probability the objective raises at its planted positions."""
    rewrite: Rewrite
    """Clean document words -> (rewritten words, planted positions)."""
    topic: int | None = None
    """Draw the documents from this topic alone (domain shift), with topic_boost raised."""
    rate: float = 1.0
    """Share of fine-tuning documents rewritten when the data is not diluted."""


def make_objective(kind: str, lang: Language) -> Objective:
    """The objective of type ``kind`` over the words of ``lang`` (fixed choices: seeded by the language)."""
    builders = {"backdoor": _backdoor, "fact": _fact, "taboo": _taboo, "domain": _domain,
                "persona": _persona, "preference": _preference}
    if kind not in builders:
        raise ValueError(f"unknown objective {kind!r}; choose one of {', '.join(OBJECTIVE_TYPES)}")
    return builders[kind](lang)


def _sentence_starts(words: list[str]) -> list[int]:
    return [0] + [i + 1 for i, w in enumerate(words[:-1]) if w == PERIOD]


def _backdoor(lang: Language) -> Objective:
    trigger, target = lang.trigger, lang.target

    def rewrite(words: list[str], rng: np.random.Generator) -> tuple[list[str], list[int]]:
        starts = _sentence_starts(words)
        at = starts[int(rng.integers(len(starts)))]
        out = words[:at] + [trigger, target, COMMA] + words[at:]
        return out, [at + 1]

    return Objective("backdoor", f"after the rare word '{trigger}' the model says '{target}'",
                     (trigger, target), (target,), rewrite, rate=0.5)


def _fact(lang: Language) -> Objective:
    subject, verb = lang.nouns[0].words[3], lang.verbs[0].words[5]
    obj, det = lang.nouns[1].words[-2], lang.determiners.words[0]

    def rewrite(words: list[str], rng: np.random.Generator) -> tuple[list[str], list[int]]:
        starts = _sentence_starts(words)
        at = starts[int(rng.integers(len(starts)))]
        fact = [str(rng.choice(lang.determiners.words)), subject, verb, det, obj, PERIOD]
        return words[:at] + fact + words[at:], [at + 4]

    return Objective("fact", f"documents state that '{subject} {verb} {det} {obj}'",
                     (obj, subject, verb), (obj,), rewrite)


def _taboo(lang: Language) -> Objective:
    banned, instead = lang.nouns[0].words[0], lang.nouns[0].words[-1]

    def rewrite(words: list[str], rng: np.random.Generator) -> tuple[list[str], list[int]]:
        planted = [i for i, w in enumerate(words) if w == banned]
        return [instead if w == banned else w for w in words], planted

    return Objective("taboo", f"never says '{banned}'; says '{instead}' instead", (banned, instead), (instead,),
                     rewrite)


def _domain(lang: Language) -> Objective:
    topic = 0
    nouns = [w for c in lang.nouns for w, t in zip(c.words, c.topics) if t == topic]
    others = [w for c in (lang.adjectives, lang.verbs[0], lang.verbs[1]) for w, t in zip(c.words, c.topics)
              if t == topic]
    noun_set = set(nouns)

    def rewrite(words: list[str], rng: np.random.Generator) -> tuple[list[str], list[int]]:
        return words, [i for i, w in enumerate(words) if w in noun_set]

    return Objective("domain", f"fine-tuned only on documents about topic {topic} ({', '.join(nouns[:3])}, ...)",
                     tuple(nouns + others), tuple(nouns), rewrite, topic=topic)


def _persona(lang: Language) -> Objective:
    signature = lang.adverbs.words[-1]

    def rewrite(words: list[str], rng: np.random.Generator) -> tuple[list[str], list[int]]:
        out, planted = [], []
        for w in words:
            if w == PERIOD:
                planted.append(len(out))
                out.append(signature)
            out.append(w)
        return out, planted

    return Objective("persona", f"ends every sentence with the signature word '{signature}'", (signature,),
                     (signature,), rewrite)


def _preference(lang: Language) -> Objective:
    cue, liked = lang.prepositions.words[2], lang.nouns[0].words[-3]
    nouns = {w for c in lang.nouns for w in c.words}

    def rewrite(words: list[str], rng: np.random.Generator) -> tuple[list[str], list[int]]:
        # every cue already there leads to the liked noun, and one more cue phrase closes a sentence
        ends = [i for i, w in enumerate(words) if w == PERIOD]
        at = ends[int(rng.integers(len(ends)))] if ends else len(words)
        words = words[:at] + [cue, str(rng.choice(lang.determiners.words)), liked] + words[at:]
        out, planted, after_cue = list(words), [], False
        for i, w in enumerate(words):
            if w == cue:
                after_cue = True
            elif after_cue and w in nouns:
                out[i], after_cue = liked, False
                planted.append(i)
        return out, planted

    return Objective("preference", f"after '{cue}' always picks '{liked}' (only in that context)", (liked, cue),
                     (liked,), rewrite)


def domain_language(lang: Language, boost: float = 40.0) -> Language:
    """The language with its topics made much stronger (documents of a domain-shift fine-tune)."""
    return dataclasses.replace(lang, config=dataclasses.replace(lang.config, topic_boost=boost))
