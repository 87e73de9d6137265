import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert, make_tokenizer
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
)

from distill.errors import ConfigError
from distill.models.trim import oov_stats, trim_vocabulary

CORPUS = ["the movie was very good", "a great film", "the plot is boring", "the actor plays"]
KEPT_TEXT = ["the film was good", "a very boring plot", "the actor was great"]  # only corpus pieces


def _logits(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**enc).logits  # (B, C)


def test_trimmed_model_gives_the_same_logits_and_loads_with_vanilla_transformers(tmp_path):
    model, tokenizer = make_tiny_bert(tmp_path / "bert")
    before = _logits(model, tokenizer, KEPT_TEXT)
    trimmed, new_tok, info = trim_vocabulary(model, tokenizer, CORPUS)
    assert info.new_vocab_size < info.old_vocab_size == len(tokenizer)
    assert trimmed.get_input_embeddings().num_embeddings == info.new_vocab_size == trimmed.config.vocab_size
    trimmed.save_pretrained(tmp_path / "trim")
    new_tok.save_pretrained(tmp_path / "trim")

    model2 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "trim")
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "trim")
    assert torch.equal(_logits(model2, tok2, KEPT_TEXT), before)
    # the same pieces as before, ids remapped to the new order
    remap = {old: new for new, old in enumerate(info.kept_ids)}
    for text in KEPT_TEXT:
        assert tok2(text)["input_ids"] == [remap[i] for i in tokenizer(text)["input_ids"]]
        assert tok2.tokenize(text) == tokenizer.tokenize(text)


def test_out_of_vocabulary_pieces_become_unk_and_are_counted(tmp_path):
    model, tokenizer = make_tiny_bert(tmp_path / "bert")
    _, new_tok, info = trim_vocabulary(model, tokenizer, CORPUS)
    ids = new_tok("the dog", add_special_tokens=False)["input_ids"]  # "dog" is not in the corpus
    assert ids == [new_tok.convert_tokens_to_ids("the"), new_tok.unk_token_id]
    stats = oov_stats(tokenizer, info.kept_ids, ["the dog eats", "the film"], new_tok)
    assert (stats["oov_examples"], stats["oov_tokens"], stats["tokens"]) == (1, 2, 5)
    assert (stats["unk_examples_after"], stats["unk_tokens_after"]) == (1, 2)


def test_token_id_corpus_and_special_tokens_are_kept(tmp_path):
    model, tokenizer = make_tiny_bert(tmp_path / "bert")
    ids = [torch.tensor(tokenizer(t)["input_ids"]) for t in CORPUS]  # like a GLUE split's input_ids
    _, new_tok, info = trim_vocabulary(model, tokenizer, ids)
    _, from_text, _ = trim_vocabulary(make_tiny_bert(tmp_path / "b2")[0], tokenizer, CORPUS)
    assert new_tok.get_vocab() == from_text.get_vocab()
    assert set(tokenizer.all_special_tokens) <= set(new_tok.get_vocab())
    assert new_tok.pad_token_id == model.config.pad_token_id == 0


def test_tied_output_layer_of_a_masked_lm_is_shrunk_with_the_embedding(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64)).eval()
    text = "the movie was good"
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits  # (1, T, V)
    trimmed, new_tok, info = trim_vocabulary(model, tokenizer, [text])
    out = trimmed.get_output_embeddings()
    assert out.weight is trimmed.get_input_embeddings().weight and out.weight.shape[0] == info.new_vocab_size
    with torch.no_grad():
        after = trimmed(**new_tok(text, return_tensors="pt")).logits  # (1, T, V')
    # a narrower output matmul may round differently in the last bit: only the MLM head is not bit-exact
    torch.testing.assert_close(after, before[..., list(info.kept_ids)], rtol=0, atol=1e-6)


def test_bad_inputs_stop_with_one_sentence(tmp_path):
    model, tokenizer = make_tiny_bert(tmp_path / "bert")
    with pytest.raises(ConfigError, match="corpus .* is empty"):
        trim_vocabulary(model, tokenizer, [])
    from tokenizers import Tokenizer, models

    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0, "[UNK]": 1}, merges=[],
                                                                        unk_token="[UNK]")))
    with pytest.raises(ConfigError, match="needs a WordPiece .* got BPE"):
        trim_vocabulary(model, bpe, CORPUS)


def test_trim_script_trims_evaluates_and_reports(tmp_path, glue_dir):
    path = Path(__file__).resolve().parents[2] / "scripts" / "trim_vocab.py"
    spec = importlib.util.spec_from_file_location("trim_vocab", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    make_tiny_bert(tmp_path / "student")
    out = tmp_path / "trimmed"
    assert script.main([str(tmp_path / "student"), "--task", "sst2", "--data-dir", str(glue_dir),
                        "--out", str(out)]) == 0
    result = json.loads((out / "trim.json").read_text())
    assert result["new_vocab_size"] < result["old_vocab_size"]
    assert result["train_examples_tokenized_identically"] == result["corpus_examples"] == 40
    assert result["dev_accuracy_after"] == result["dev_accuracy_before"]  # dev uses only training words
    assert result["dev_oov"]["oov_examples"] == 0
    assert script.main([str(tmp_path / "missing")]) == 2


def test_an_albert_student_trims_to_the_same_logits(tmp_path):
    from transformers import BertForSequenceClassification

    from distill.models.albert import albert_student

    model, tokenizer = make_tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    student = albert_student(model, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=40).eval()
    assert not isinstance(student, BertForSequenceClassification)
    before = _logits(student, tokenizer, KEPT_TEXT)
    trimmed, new_tok, info = trim_vocabulary(student, tokenizer, CORPUS)
    assert trimmed.albert.embeddings.word_embeddings.weight.shape == (info.new_vocab_size, 16)
    assert torch.equal(_logits(trimmed, new_tok, KEPT_TEXT), before)
