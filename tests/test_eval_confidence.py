"""Box confidence from real vLLM output: what ``generate --logprobs`` keeps of vLLM's
completions and how ``score`` reads it (the mechanics; the miniature's values mean nothing).

``data/vllm_logprobs/completions.json`` holds vLLM's own ``CompletionOutput`` fields from a
CPU run (its provenance inside): its text leaves out the end token, its ``logprobs`` do not.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import pytest

from perception_r1_verl.eval.confidence import box_confidences, token_table
from perception_r1_verl.eval.generate import VLLMEngine
from perception_r1_verl.parsing import parse_answer

REAL = json.loads((Path(__file__).parent / "data" / "vllm_logprobs" / "completions.json").read_text())


def completion(raw: dict):
    """A vLLM ``CompletionOutput`` rebuilt from the recorded fields (vllm/outputs.py, logprobs.py)."""
    logprobs = [
        {int(t): types.SimpleNamespace(logprob=lp, rank=rank, decoded_token=tok) for t, (lp, rank, tok) in pos.items()}
        for pos in raw["logprobs"]
    ]
    return types.SimpleNamespace(
        text=raw["text"], token_ids=raw["token_ids"], finish_reason=raw["finish_reason"], logprobs=logprobs
    )


@pytest.mark.parametrize("raw", REAL["max_tokens_40"], ids=lambda r: r["text"])
def test_a_finished_vllm_answer_keeps_the_tokens_that_spell_it(raw):
    row = VLLMEngine._row(completion(raw))
    assert row["finish_reason"] == "stop" and row["response"] == raw["text"]
    # vLLM's text drops <|im_end|>; its logprobs hold it: the row keeps the tokens of the text.
    assert raw["logprobs"][-1][str(raw["token_ids"][-1])][2] == "<|im_end|>"
    assert len(row["logprobs"]) == len(raw["token_ids"]) - 1 == len(row["token_ends"])
    assert row["token_ends"][-1] == len(row["response"])
    kept = [pos[str(t)][0] for t, pos in zip(raw["token_ids"], raw["logprobs"])][:-1]
    assert row["logprobs"] == [round(lp, 4) for lp in kept]
    # score's confidence of the one box: the tokens from its first digit to its last.
    text = row["response"]
    first = min(text.index(d) for d in "0123456789" if d in text)
    last = max(text.rindex(d) for d in "0123456789" if d in text) + 1
    starts = [0, *row["token_ends"][:-1]]
    inside = [lp for s, e, lp in zip(starts, row["token_ends"], row["logprobs"]) if s < last and e > first]
    (value,) = box_confidences(parse_answer(text), text, row)
    assert value == pytest.approx(math.exp(sum(inside) / len(inside)))


@pytest.mark.parametrize("raw", REAL["max_tokens_6"], ids=lambda r: r["text"])
def test_a_vllm_answer_cut_at_max_tokens_says_length(raw):
    row = VLLMEngine._row(completion(raw))
    assert row["finish_reason"] == "length" and len(row["logprobs"]) == len(raw["token_ids"]) == 6
    assert not isinstance(token_table(row, row["response"]), str)


def test_offsets_of_another_tokenizer_are_refused_not_used():
    """Log-probabilities written for another text (another tokenizer, an edited file) do not
    spell this response: no confidence, and the reason says why."""
    row = VLLMEngine._row(completion(REAL["max_tokens_40"][0]))
    other = row["response"].replace("38", "3")
    assert token_table(row, other) == "log-probabilities do not match the response"
    assert box_confidences(parse_answer(other), other, row) == "log-probabilities do not match the response"
    split = completion(REAL["max_tokens_40"][0])
    for pos in split.logprobs[:2]:  # a character whose bytes two tokens share decode as U+FFFD
        for lp in pos.values():
            lp.decoded_token = "\ufffd"
    assert "logprobs_error" in VLLMEngine._row(split)
