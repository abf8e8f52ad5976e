import pytest

from memrl.data.digits import all_captions
from memrl.models.tokenizer import WordTokenizer


def test_round_trip_and_save(tmp_path):
    tok = WordTokenizer.from_corpus(all_captions(), max_length=16)
    cap = all_captions()[0]
    ids = tok([cap])
    assert ids.shape == (1, 16)
    assert tok.decode(ids[0]) == cap.replace(",", "").lower()
    tok.save_pretrained(tmp_path / "tok")
    tok2 = WordTokenizer.from_pretrained(tmp_path / "tok")
    assert tok2([cap]).tolist() == ids.tolist()
    assert tok2.vocab_size == tok.vocab_size


def test_vocabulary_is_deterministic():
    assert WordTokenizer.from_corpus(all_captions()).tokenizer.get_vocab() == WordTokenizer.from_corpus(all_captions()).tokenizer.get_vocab()


def test_unknown_words_map_to_unk_with_warning():
    tok = WordTokenizer.from_corpus(["digit 1 bold"])
    with pytest.warns(UserWarning, match="purple"):
        ids = tok(["digit 1 purple"])
    assert tok.unk_token_id in ids[0].tolist()


def test_empty_prompt_is_bos_eos():
    tok = WordTokenizer.from_corpus(["a b"])
    ids = tok([""])[0].tolist()
    assert ids[:2] == [tok.bos_token_id, tok.eos_token_id]
    assert set(ids[2:]) == {tok.pad_token_id}


def test_long_prompt_is_truncated():
    tok = WordTokenizer.from_corpus(["a"], max_length=6)
    ids = tok(["a a a a a a a a a"])[0].tolist()
    assert len(ids) == 6 and ids[-1] == tok.eos_token_id
