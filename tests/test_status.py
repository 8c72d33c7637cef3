"""The one vocabulary of status words: members are their words (stored files keep them), and the
words of upgrade reports written before the vocabulary was unified still read."""

import json

from quantperf.status import Status, from_word


def test_a_member_is_its_word_in_comparisons_and_in_json():
    assert Status.REGRESSED == "regressed" and "ok" == Status.OK
    assert json.dumps({"status": Status.NO_BASELINE}) == '{"status": "no-baseline"}'
    assert f"{Status.INCONCLUSIVE}" == "inconclusive" and Status.FLIPPED.upper() == "FLIPPED"


def test_every_word_is_defined_once():
    # a second name for a word would be an alias in the enum: __members__ lists aliases too
    assert len(Status.__members__) == len({m.value for m in Status.__members__.values()})


def test_old_upgrade_report_words_map_on_load():
    assert [from_word(w) for w in ("slower", "faster", "same", "unsettled")] == [
        Status.REGRESSED, Status.IMPROVED, Status.OK, Status.INCONCLUSIVE]
    assert from_word("holds") is Status.HOLDS and from_word(None) is None
    assert from_word("a-word-of-a-newer-version") == "a-word-of-a-newer-version"
