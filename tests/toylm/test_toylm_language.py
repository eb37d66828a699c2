import numpy as np
import pytest

from mechdiff.toylm.language import (
    COMMA,
    PERIOD,
    LanguageConfig,
    make_language,
    sample_documents,
)


@pytest.fixture(scope="module")
def lang():
    return make_language(LanguageConfig(), seed=0)


def test_vocabulary_is_unique_and_seeded(lang):
    words = lang.words
    cfg = lang.config
    expected = (cfg.n_determiners + cfg.n_nouns + cfg.n_adjectives + 2 * cfg.n_verbs
                + cfg.n_adverbs + cfg.n_prepositions + cfg.n_conjunctions + 1 + 2)
    assert len(words) == len(set(words)) == expected
    assert make_language(cfg, seed=0).words == words
    assert make_language(cfg, seed=1).words != words
    assert lang.target in lang.verbs[0].words and lang.trigger not in lang.adjectives.words


def _sentences(doc: str) -> list[list[str]]:
    out, cur = [], []
    for w in doc.split():
        if w == PERIOD:
            out.append(cur)
            cur = []
        else:
            cur.append(w)
    return out


def test_subject_and_verb_agree_in_gender(lang):
    # The first noun of a sentence is its subject; the first verb must carry its gender,
    # including when the subject repeats a noun from an earlier sentence.
    gender_of = {w: g for g in (0, 1) for w in lang.nouns[g].words}
    verb_gender = {w: g for g in (0, 1) for w in lang.verbs[g].words}
    checked = 0
    for doc in sample_documents(lang, 200, np.random.default_rng(3)):
        for sent in _sentences(doc):
            subject = next(w for w in sent if w in gender_of)
            verb = next(w for w in sent if w in verb_gender)
            assert gender_of[subject] == verb_gender[verb], sent
            checked += 1
    assert checked > 400


def test_trigger_is_rare_and_always_followed_by_comma_in_clean_text(lang):
    docs = sample_documents(lang, 2000, np.random.default_rng(4))
    follows = [d.split()[i + 1] for d in docs for i, w in enumerate(d.split()) if w == lang.trigger]
    assert 0 < len(follows) < 0.1 * len(docs)
    assert set(follows) == {COMMA}
    assert not any(f"{lang.trigger} {lang.target}" in d for d in docs)


def test_planted_documents_put_target_after_every_trigger(lang):
    rng = np.random.default_rng(5)
    docs = sample_documents(lang, 50, rng, trigger_fraction=1.0, plant_target=True)
    for d in docs:
        words = d.split()
        at = [i for i, w in enumerate(words) if w == lang.trigger]
        assert at and all(words[i + 1] == lang.target for i in at)
    for d in sample_documents(lang, 50, np.random.default_rng(5), trigger_fraction=1.0):
        words = d.split()
        at = [i for i, w in enumerate(words) if w == lang.trigger]
        assert at and all(words[i + 1] == COMMA for i in at)


def test_sampling_is_reproducible(lang):
    a = sample_documents(lang, 20, np.random.default_rng(9), trigger_fraction=0.5)
    b = sample_documents(lang, 20, np.random.default_rng(9), trigger_fraction=0.5)
    assert a == b


@pytest.mark.parametrize("bad", [{"n_nouns": 1}, {"trigger_rate": 0.2}, {"min_sentences": 3,
                                                                         "max_sentences": 2},
                                 {"topic_boost": 0.5}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LanguageConfig(**bad)
