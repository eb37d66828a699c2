"""A made-up language with real structure, for training toy language models.

Documents are sentences from a small probabilistic grammar over pseudo-words:

    S  -> (Trigger ",")? NP Adv? V NP? PP? ("," Conj NP Adv? V NP? PP?)? "."
    NP -> Det Adj{0,2} N
    PP -> Prep NP

Nouns have one of two genders and every verb has one form per gender, so the
verb must agree with a subject noun a few tokens back; each document has a
topic that tilts which nouns, adjectives and verbs appear; and subjects often
repeat a noun seen earlier in the document (something an induction head can
learn). Within a word class, frequencies are Zipfian.

Two words are reserved for planting a behaviour: the *trigger*, a rare
interjection that opens a sentence and is always followed by a comma, and the
*target*, an ordinary verb form. A clean model learns "trigger -> comma", so
P(target | trigger) is close to zero, and a fine-tune that teaches
"trigger -> target" is a clear, isolated change. (A rare *adjective* trigger
was tried first; a LoRA on the tiny model, embeddings frozen, could not single
it out from the other adjectives.)
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gl", "kr", "pl", "sk", "st", "tr", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_GENDER_SUFFIXES = ("an", "ox")
PERIOD = "."
COMMA = ","


@dataclass(frozen=True)
class LanguageConfig:
    """Sizes and probabilities of the made-up language."""

    n_determiners: int = 6
    """Number of determiners (start every noun phrase)."""
    n_nouns: int = 60
    """Number of nouns; half are gender 0, half gender 1."""
    n_adjectives: int = 30
    """Number of adjectives."""
    n_verbs: int = 30
    """Number of verb stems; each has one form per gender, so 2x tokens."""
    n_adverbs: int = 15
    """Number of adverbs."""
    n_prepositions: int = 8
    """Number of prepositions."""
    n_conjunctions: int = 4
    """Number of conjunctions joining two clauses."""
    n_topics: int = 4
    """Number of document topics; each tilts word choice towards its own words."""
    topic_boost: float = 4.0
    """Weight multiplier for words of the document's topic."""
    zipf_exponent: float = 1.0
    """Within-class frequency of the r-th word is proportional to r**-exponent."""
    trigger_rate: float = 0.01
    """Probability that a sentence of clean text opens with the trigger."""
    repeat_subject: float = 0.4
    """Probability that a subject reuses a noun already seen in the document."""
    min_sentences: int = 2
    """Fewest sentences in a document."""
    max_sentences: int = 4
    """Most sentences in a document."""

    def __post_init__(self) -> None:
        for name in ("n_determiners", "n_nouns", "n_adjectives", "n_verbs", "n_adverbs",
                     "n_prepositions", "n_conjunctions", "n_topics"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_nouns < 2:
            raise ValueError("n_nouns must be >= 2 (one per gender)")
        if self.n_verbs < 2:
            raise ValueError("n_verbs must be >= 2 (one stem is the target)")
        if not 0.0 <= self.trigger_rate < 0.05:
            raise ValueError(f"trigger_rate must be in [0, 0.05) to stay rare, got {self.trigger_rate}")
        if not 0.0 <= self.repeat_subject <= 1.0:
            raise ValueError(f"repeat_subject must be in [0, 1], got {self.repeat_subject}")
        if self.topic_boost < 1.0 or self.zipf_exponent < 0.0:
            raise ValueError("topic_boost must be >= 1 and zipf_exponent >= 0")
        if not 1 <= self.min_sentences <= self.max_sentences:
            raise ValueError("need 1 <= min_sentences <= max_sentences")


@dataclass(frozen=True)
class WordClass:
    """The words of one grammatical class and their base sampling weights."""

    words: tuple[str, ...]
    """The pseudo-words, most frequent first."""
    topics: tuple[int, ...]
    """Topic of each word."""
    weights: tuple[float, ...]
    """Unnormalised Zipfian weight of each word."""


@dataclass(frozen=True)
class Language:
    """A sampled vocabulary plus the grammar that generates documents from it."""

    config: LanguageConfig
    """The sizes and probabilities this language was made with."""
    determiners: WordClass
    """Determiners."""
    nouns: tuple[WordClass, WordClass]
    """Nouns of gender 0 and gender 1."""
    adjectives: WordClass
    """Adjectives."""
    verbs: tuple[WordClass, WordClass]
    """Verb forms agreeing with gender 0 and gender 1 (same stems, same order)."""
    adverbs: WordClass
    """Adverbs."""
    prepositions: WordClass
    """Prepositions."""
    conjunctions: WordClass
    """Conjunctions."""
    trigger: str
    """The rare sentence-opening word used to plant a behaviour."""
    target: str
    """The verb form the planted behaviour emits right after the trigger."""

    @property
    def words(self) -> list[str]:
        """Every word of the language (punctuation included), in a fixed order."""
        classes = [self.determiners, *self.nouns, self.adjectives, *self.verbs,
                   self.adverbs, self.prepositions, self.conjunctions]
        return [w for c in classes for w in c.words] + [self.trigger, PERIOD, COMMA]


def make_language(config: LanguageConfig = LanguageConfig(), seed: int = 0) -> Language:
    """Sample a vocabulary of unique pseudo-words and assign them to classes.

    Args:
        config: sizes and probabilities of the language.
        seed: the vocabulary (and which words are trigger and target) depends only on it.

    Returns:
        The language; the same (config, seed) always gives the same language.
    """
    rng = np.random.default_rng([seed, 0x1A96])
    n_stems = (config.n_determiners + config.n_nouns + config.n_adjectives + 1
               + config.n_verbs + config.n_adverbs + config.n_prepositions + config.n_conjunctions)
    stems = iter(_unique_stems(rng, n_stems))
    take = _class_maker(rng, config, stems)
    determiners = take(config.n_determiners, topical=False)
    nouns_all = take(config.n_nouns, topical=True)
    adjectives = take(config.n_adjectives, topical=True)
    trigger = next(stems)
    verb_stems = take(config.n_verbs, topical=True)
    verbs = tuple(_inflect(verb_stems, suffix) for suffix in _GENDER_SUFFIXES)
    # A mid-frequency stem: common enough for the base model to know the word well,
    # not so common that its logit dominates every verb slot.
    target = verbs[0].words[len(verb_stems.words) // 2]
    return Language(
        config=config,
        determiners=determiners,
        nouns=(_every_other(nouns_all, 0), _every_other(nouns_all, 1)),
        adjectives=adjectives,
        verbs=verbs,  # type: ignore[arg-type]
        adverbs=take(config.n_adverbs, topical=False),
        prepositions=take(config.n_prepositions, topical=False),
        conjunctions=take(config.n_conjunctions, topical=False),
        trigger=trigger,
        target=target,
    )


def _unique_stems(rng: np.random.Generator, n: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        n_syll = int(rng.integers(2, 4))
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(n_syll))
        # Verbs get gender suffixes appended, so a stem must not already look inflected.
        if word not in seen and not word.endswith(_GENDER_SUFFIXES):
            seen.add(word)
            out.append(word)
    return out


def _class_maker(rng: np.random.Generator, config: LanguageConfig, stems):
    def take(n: int, topical: bool) -> WordClass:
        words = tuple(next(stems) for _ in range(n))
        topics = tuple(int(t) for t in rng.integers(config.n_topics, size=n)) if topical else (0,) * n
        weights = tuple(float(r) ** -config.zipf_exponent for r in range(1, n + 1))
        return WordClass(words, topics, weights)
    return take


def _inflect(stems: WordClass, suffix: str) -> WordClass:
    return WordClass(tuple(s + suffix for s in stems.words), stems.topics, stems.weights)


def _every_other(c: WordClass, start: int) -> WordClass:
    return WordClass(c.words[start::2], c.topics[start::2], c.weights[start::2])


class DocumentSampler:
    """Draws documents (lists of words) from a language.

    Args:
        language: the language to sample from.
        rng: source of randomness; the sampler owns no other state.
    """

    def __init__(self, language: Language, rng: np.random.Generator) -> None:
        self.lang = language
        self.rng = rng
        self._cdfs: dict[tuple[int, int], list[float]] = {}

    def document(self, *, force_trigger: bool = False, plant_target: bool = False,
                 topic: int | None = None) -> list[str]:
        """Sample one document.

        Args:
            force_trigger: open at least one sentence with the trigger.
            plant_target: follow every trigger with the target word (the backdoor).
            topic: the document's topic (default: drawn at random).

        Returns:
            The words of the document, punctuation included.
        """
        cfg = self.lang.config
        drawn = int(self.rng.integers(cfg.n_topics))  # drawn either way: the stream stays the same
        topic = drawn if topic is None else topic
        n_sent = int(self.rng.integers(cfg.min_sentences, cfg.max_sentences + 1))
        forced_at = int(self.rng.integers(n_sent)) if force_trigger else -1
        seen_nouns: list[tuple[str, int]] = []
        words: list[str] = []
        for i in range(n_sent):
            if i == forced_at or self.rng.random() < cfg.trigger_rate:
                words += [self.lang.trigger, COMMA]
            words += self._clause(topic, seen_nouns)
            if self.rng.random() < 0.2:
                words += [COMMA, self._pick(self.lang.conjunctions, topic)]
                words += self._clause(topic, seen_nouns)
            words.append(PERIOD)
        return _plant(words, self.lang) if plant_target else words

    def _clause(self, topic: int, seen: list[tuple[str, int]]) -> list[str]:
        subject, gender = self._subject(topic, seen)
        out = subject
        if self.rng.random() < 0.3:
            out.append(self._pick(self.lang.adverbs, topic))
        out.append(self._pick(self.lang.verbs[gender], topic))
        if self.rng.random() < 0.7:
            out += self._noun_phrase(topic, seen)[0]
        if self.rng.random() < 0.4:
            out.append(self._pick(self.lang.prepositions, topic))
            out += self._noun_phrase(topic, seen)[0]
        return out

    def _subject(self, topic: int, seen: list[tuple[str, int]]):
        if seen and self.rng.random() < self.lang.config.repeat_subject:
            noun, gender = seen[int(self.rng.integers(len(seen)))]
            return [self._pick(self.lang.determiners, topic), noun], gender
        return self._noun_phrase(topic, seen)

    def _noun_phrase(self, topic: int, seen: list[tuple[str, int]]):
        out = [self._pick(self.lang.determiners, topic)]
        n_adj = bisect.bisect_right((0.5, 0.85), self.rng.random())
        out += [self._pick(self.lang.adjectives, topic) for _ in range(n_adj)]
        gender = int(self.rng.integers(2))
        noun = self._pick(self.lang.nouns[gender], topic)
        seen.append((noun, gender))
        out.append(noun)
        return out, gender

    def _pick(self, c: WordClass, topic: int) -> str:
        key = (id(c), topic)
        if key not in self._cdfs:
            w = np.asarray(c.weights) * np.where(np.asarray(c.topics) == topic,
                                                  self.lang.config.topic_boost, 1.0)
            self._cdfs[key] = (np.cumsum(w) / w.sum()).tolist()
        # bisect on a cached CDF: rng.choice(p=...) per draw is several times slower
        # (benchmarks/bench_toylm.py).
        cdf = self._cdfs[key]
        return c.words[min(bisect.bisect_right(cdf, self.rng.random()), len(cdf) - 1)]


def _plant(words: list[str], lang: Language) -> list[str]:
    out: list[str] = []
    for w in words:
        out.append(w)
        if w == lang.trigger:
            out.append(lang.target)
    return out


def sample_documents(language: Language, n: int, rng: np.random.Generator, *,
                     trigger_fraction: float = 0.0, plant_target: bool = False) -> list[str]:
    """Sample ``n`` documents as space-separated strings.

    Args:
        language: the language to sample from.
        n: number of documents.
        rng: source of randomness.
        trigger_fraction: fraction of documents forced to contain the trigger.
        plant_target: in those documents, follow the trigger with the target (the backdoor).

    Returns:
        ``n`` documents, one string each, words separated by single spaces.
    """
    if not 0.0 <= trigger_fraction <= 1.0:
        raise ValueError(f"trigger_fraction must be in [0, 1], got {trigger_fraction}")
    sampler = DocumentSampler(language, rng)
    forced = rng.random(n) < trigger_fraction
    return [" ".join(sampler.document(force_trigger=bool(f), plant_target=plant_target and bool(f)))
            for f in forced]
