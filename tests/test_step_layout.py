"""Step ends in characters and in SmolLM2 tokens: every step's label token is its separator's last token.

Checks, with the real SmolLM2 tokenizer, on steps with spaces, digits and newlines: the ids up to each
step end decode to exactly the text through that step and its separator; the token at each step end is
the separator's last token; and, where BPE merges a separator with its neighbours in the joined text
(so the joined text has no token boundary at the step end), the per-piece rule still has one.
"""
from __future__ import annotations

import pytest

from ray_rm.data.step_layout import (StepTokens, encode_prompt, encode_steps, layout_steps,
                                     step_end_token_positions)

STEPS = ["Start with 17.", "17 + 8 = 25, and 25 - 5 = 20.", "Then 20 * 3 = 60.\nSo the answer is 60."]


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_layout_steps_offsets():
    text, ends = layout_steps(["ab", "c d", "e"], separator="\n")
    assert text == "ab\nc d\ne\n" and ends == [3, 7, 9]
    assert [text[:e] for e in ends] == ["ab\n", "ab\nc d\n", text]
    text, ends = layout_steps(["x", "y"], separator=" ки ")
    assert text == "x ки y ки " and ends == [5, 10]
    assert layout_steps(["x", "y"], separator="") == ("xy", [1, 2])


@pytest.mark.parametrize("separator", ["\n", "\n\n", " ", " ки\n"])
def test_every_step_end_decodes_to_the_text_through_that_step(tok, separator):
    prompt = "Q: compute it step by step.\n"
    st = step_end_token_positions(tok, prompt, STEPS, separator)
    text, char_ends = layout_steps(STEPS, separator)
    separator_ids = ids_of(tok, separator)
    assert len(st.step_ends) == len(STEPS) and st.step_ends[-1] == len(st.input_ids) - 1
    assert tok.decode(st.input_ids[:len(st.prompt_ids)]) == prompt  # SmolLM2 adds no special tokens to text
    for i, (end, char_end) in enumerate(zip(st.step_ends, char_ends)):
        assert tok.decode(st.input_ids[:end + 1]) == prompt + text[:char_end], (separator, i)
        assert st.input_ids[end - len(separator_ids) + 1:end + 1] == separator_ids  # the label token
    assert st.step_ends == sorted(set(st.step_ends))
    if separator == " ки\n":
        assert len(separator_ids) > 1  # a multi-token separator: the label sits on its last token


def test_separator_merged_with_the_next_step_in_the_joined_text(tok):
    """In the joined text SmolLM2 merges '\\n' with a following space ("\\n " is one token) and ' ' with
    a following word (" Add"): no token boundary falls where the first step ends. The per-piece rule
    always ends the step on the separator's own token."""
    for steps, separator in ((["x = 1", "  y = 2"], "\n"), (["17 + 8 = 25.", "Add 5."], " ")):
        text, char_ends = layout_steps(steps, separator)
        joined = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert char_ends[0] not in {e for _, e in joined["offset_mapping"]}, (steps, separator)
        st = step_end_token_positions(tok, "Q\n", steps, separator)
        first_end = st.step_ends[0]
        assert tok.decode(st.input_ids[:first_end + 1]) == "Q\n" + text[:char_ends[0]]
        assert st.input_ids[first_end] == ids_of(tok, separator)[-1]
        assert st.input_ids != tok("Q\n" + text, add_special_tokens=False)["input_ids"]  # the price, documented


def test_separator_is_tokenized_apart_from_its_step(tok):
    """TRL's rule tokenizes the separator on its own: tokenizing step + separator together (as
    ProcessBench's TRL evaluation script does) merges a trailing space into ' \\n', so the scored token
    would not be the separator's."""
    assert ids_of(tok, "a \n") == ids_of(tok, "a") + ids_of(tok, " \n")  # one token ' \n'...
    assert ids_of(tok, " \n") != ids_of(tok, "\n")  # ...which is not the separator's token
    st = step_end_token_positions(tok, "Q\n", ["a ", "b"], "\n")
    assert [st.input_ids[e] for e in st.step_ends] == ids_of(tok, "\n") * 2
    assert tok.decode(st.solution_ids) == "a \nb\n"


def test_chat_prompt_ends_with_the_generation_prompt(tok):
    messages = (("user", "What is 17 + 8?"),)
    st = step_end_token_positions(tok, messages, ["17 + 8 = 25"], "\n")
    prompt_text = tok.decode(st.prompt_ids)
    assert prompt_text.endswith("<|im_start|>user\nWhat is 17 + 8?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(st.solution_ids) == "17 + 8 = 25\n"
    assert tok.eos_token_id not in st.solution_ids  # the assistant turn is left open: steps are its text
    # a text prompt with chat_template="always" is the same one-user-message conversation
    assert encode_prompt(tok, "What is 17 + 8?", "always") == list(st.prompt_ids)
    with pytest.raises(ValueError, match="chat_template"):
        encode_prompt(tok, "Q", "never")


def test_solution_relative_positions_share_one_prompt(tok):
    """k solutions of one prompt: prompt ids once, each solution's step ends relative to its own start
    (what the [prompt | solution_1 | ... | solution_k] layout needs)."""
    prompt_ids = encode_prompt(tok, "Q\n")
    for steps in (STEPS, STEPS[:1], ["1 + 1 = 2", "2 + 2 = 4"]):
        st = StepTokens(tuple(prompt_ids), encode_steps(tok, steps))
        full = step_end_token_positions(tok, "Q\n", steps)
        assert st == full
        assert [len(prompt_ids) + e for e in st.solution_step_ends] == full.step_ends
        assert st.input_ids == prompt_ids + st.solution_ids


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="at least one step"):
        encode_steps(tok, [])

    class NoTemplate:
        chat_template = None

        def __call__(self, text, add_special_tokens=True):
            return tok(text, add_special_tokens=add_special_tokens)

    with pytest.raises(ValueError, match="chat template"):
        encode_prompt(NoTemplate(), (("user", "Q"),))
    # no separator: the label sits on the step's own last token
    st = step_end_token_positions(tok, "Q", ["ab", "cd"], separator="")
    assert [st.input_ids[e] for e in st.step_ends] == [ids_of(tok, "ab")[-1], ids_of(tok, "cd")[-1]]
