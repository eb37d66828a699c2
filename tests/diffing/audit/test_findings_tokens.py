"""Finding tokens by relevance (issue #16 item 11): the tokens most of a merged finding's lenses name come first."""

from __future__ import annotations

from mechdiff.diffing.audit.findings import Finding, findings_table, link_and_rank


def test_linked_finding_lists_the_tokens_most_lenses_name_first():
    found = link_and_rank([
        Finding("behaviour", 5.0, "after 'zz' the fine-tune predicts 'yy'", frozenset({"zz", "yy"})),
        Finding("weights", 0.8, "rank-1 change", frozenset({"aa", "bb", "cc", "zz", "yy", "dd"})),
        Finding("crosscoder", 0.5, "latent 3 fires on 'zz'", frozenset({"zz", "ab"})),
    ])
    assert len(found) == 1
    # zz: behaviour, weights, crosscoder; yy: behaviour, weights; the rest one lens each, by name
    assert found[0].ranked_tokens() == ["zz", "yy", "aa", "ab", "bb", "cc", "dd"]
    assert found[0].to_json()["tokens"][:2] == ["zz", "yy"]
    assert findings_table(found)["tokens"][0].split("\x1f")[:2] == ["zz", "yy"]
