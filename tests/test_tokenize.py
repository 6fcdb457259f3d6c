"""Tokenization rules, checked against the tokenizer called directly (SmolLM2's real tokenizer, MiniLM's for BERT)."""
from __future__ import annotations

import math

import pytest

from ray_rm.data.formats import normalize_row
from ray_rm.data.packer import TokenizedGroup
from ray_rm.data.tokenize import SequenceEncoder, tokenize_examples


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def prefix_len(seqs):
    """Independent reference: longest common prefix, leaving every sequence >= 1 token of its own."""
    n = 0
    while all(n < len(s) - 1 for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    return n


HH_ROW = {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for nine minutes.",
          "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Eggs are overrated."}
CHAT_ROW = {"prompt": [{"role": "user", "content": "How do I boil an egg?"}],
            "chosen": [{"role": "assistant", "content": "Put it in boiling water for nine minutes."}],
            "rejected": [{"role": "assistant", "content": "Eggs are overrated."}]}


def test_text_pairs_are_tokenized_whole_as_given(tok):
    ex = normalize_row(HH_ROW, "hh", 1)
    (group,) = tokenize_examples(SequenceEncoder(tok), [ex], 1024, "drop")
    expected = [tok(HH_ROW[k])["input_ids"] for k in ("chosen", "rejected")]  # no hidden tokens: no EOS added
    assert group.sequences == expected
    assert group.shared_len == prefix_len(expected) > 10
    assert group.ranks == [0, 1] and math.isnan(group.margin) and all(math.isnan(s) for s in group.scores)
    assert group.num_tokens(False) == sum(map(len, expected))
    assert group.num_tokens(True) == sum(map(len, expected)) - group.shared_len


def test_conversations_use_the_chat_template(tok):
    ex = normalize_row(CHAT_ROW, "chat", 1)
    (group,) = tokenize_examples(SequenceEncoder(tok), [ex], 1024, "drop")
    for seq, key in zip(group.sequences, ("chosen", "rejected")):
        messages = CHAT_ROW["prompt"] + CHAT_ROW[key]
        assert seq == tok.apply_chat_template(messages, tokenize=True)["input_ids"]  # the template ends the turn
        assert tok.decode(seq).endswith(CHAT_ROW[key][0]["content"] + "<|im_end|>\n")
    assert group.shared_len == prefix_len(group.sequences)
    # the shared prefix is the system + user turns and the assistant header
    assert tok.decode(group.sequences[0][:group.shared_len]).endswith("<|im_start|>assistant\n")


def test_no_hidden_tokens(tok):
    eos = tok.eos_token_id
    assert SequenceEncoder(tok).encode([("Q: hi ", "A: yo")])[0] == tok("Q: hi A: yo")["input_ids"]
    text = SequenceEncoder(tok).encode([("Q: hi ", "A: yo" + tok.eos_token)])[0]
    assert text == tok("Q: hi A: yo" + tok.eos_token)["input_ids"] and text.count(eos) == 1  # data's own EOS kept
    # only checkpoints exported before the contract (config.json ray_rm.append_eos: true) append EOS
    legacy = SequenceEncoder(tok, legacy_append_eos=True)
    assert legacy.encode([("Q: hi ", "A: yo")])[0] == tok("Q: hi A: yo")["input_ids"] + [eos]
    assert legacy.encode([("Q: hi ", "A: yo" + tok.eos_token)])[0].count(eos) == 1


def test_chat_template_modes(tok):
    never = SequenceEncoder(tok, chat_template="never")
    seq = never.encode([((("user", "Hi?"),), (("assistant", "Hello."),))])[0]
    assert seq == tok("User: Hi?\nAssistant: Hello.")["input_ids"]
    always = SequenceEncoder(tok, chat_template="always")
    auto = SequenceEncoder(tok)
    assert always.encode([("Hi?", "Hello.")]) == auto.encode([((("user", "Hi?"),), (("assistant", "Hello."),))])


def test_over_length_drop_and_truncate_left(tok):
    long = " ".join(f"word{i}" for i in range(200))
    ex = normalize_row({"prompt": "Q: ", "chosen": "short answer.", "rejected": long}, "long", 4)
    (dropped,) = tokenize_examples(SequenceEncoder(tok), [ex], 64, "drop")
    assert dropped[0] == "over_length" and "long:4" in dropped[1] and "> data.max_length 64" in dropped[1]
    (group,) = tokenize_examples(SequenceEncoder(tok), [ex], 64, "truncate_left")
    full = SequenceEncoder(tok).encode([("Q: ", "short answer."), ("Q: ", long)])
    assert group.sequences[0] == full[0]  # short enough: untouched
    assert group.sequences[1] == full[1][-64:] and group.sequences[1][-1] == full[1][-1]  # the reward token stays
    assert group.shared_len == prefix_len(group.sequences)


def test_identical_tokens_are_dropped(tok):
    words = " ".join(f"w{i}" for i in range(50))
    ex = normalize_row({"chosen": f"Alpha {words}", "rejected": f"Beta {words}"}, "same", 2)
    (out,) = tokenize_examples(SequenceEncoder(tok), [ex], 16, "truncate_left")
    assert out[0] == "identical" and "same:2" in out[1]


def test_kway_groups_keep_order_and_labels(tok):
    ex = normalize_row({"prompt": "Pick a colour: ", "responses": ["red", "green", "blue"], "scores": [1, 5, 3],
                        "subset": "colours"}, "k", 1)
    (group,) = tokenize_examples(SequenceEncoder(tok), [ex], 1024, "drop")
    assert [tok.decode(s) for s in group.sequences] == ["Pick a colour: green", "Pick a colour: blue",
                                                          "Pick a colour: red"]
    assert group.ranks == [0, 1, 2] and group.scores == [5.0, 3.0, 1.0] and group.subset == "colours"
    assert group.shared_len == prefix_len(group.sequences)
    assert group.num_tokens(True) == sum(map(len, group.sequences)) - 2 * group.shared_len


def test_margin_is_carried(tok):
    ex = normalize_row({**HH_ROW, "margin": 2}, "m", 1)
    (group,) = tokenize_examples(SequenceEncoder(tok), [ex], 1024, "drop")
    assert group.margin == 2.0


def test_bert_tokenizer_for_encoders(minilm_dir):
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(minilm_dir)
    enc = SequenceEncoder(bert)
    ex = normalize_row({"prompt": "Is the sky blue? ", "chosen": "Yes.", "rejected": "No."}, "b", 1)
    (group,) = tokenize_examples(enc, [ex], 512, "drop")
    for seq, answer in zip(group.sequences, ("Yes.", "No.")):
        assert seq == bert("Is the sky blue? " + answer)["input_ids"]
        assert seq[0] == bert.cls_token_id and seq[-1] == bert.sep_token_id


def test_shared_prompt_tokens_count_once():
    assert TokenizedGroup("g", [[1, 2, 3], [1, 2, 4]], [0, 1], shared_len=2).num_tokens(True) == 4
