"""Incremental detokenization: same text as decoding at once, no split characters, exact stops."""

import pytest

from jupyter_qwen.engine.detokenizer import OutputDetokenizer

TEXT = "Héllo wörld! 日本語のテキスト 🙂🚀 naïve café — ünïcödé ✓ end"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def stream(detok, token_ids):
    deltas = []
    for token_id in token_ids:
        stopped = detok.push([token_id])
        deltas.append(detok.take_delta())
        if stopped:
            break
    deltas.append(detok.take_delta(final=True))
    return deltas


def test_streamed_text_equals_decoding_at_once(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert len(ids) > len(TEXT) // 4
    detok = OutputDetokenizer.for_output(tokenizer, stop=[])
    deltas = stream(detok, ids)
    assert "".join(deltas) == TEXT == detok.text
    assert not any("\ufffd" in delta for delta in deltas)


def test_stop_string_cuts_exactly_and_is_never_streamed(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    detok = OutputDetokenizer.for_output(tokenizer, stop=["テキスト", "zzz"])
    deltas = stream(detok, ids)
    assert "".join(deltas) == detok.text == TEXT[:TEXT.index("テキスト")]
    assert detok.matched == "テキスト"


def test_include_stop_keeps_the_stop_string(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    detok = OutputDetokenizer.for_output(tokenizer, stop=["wörld"], include_stop=True)
    assert "".join(stream(detok, ids)) == "Héllo wörld"


def test_text_held_back_for_a_possible_stop_is_released_at_the_end(tokenizer):
    ids = tokenizer.encode("abc xy", add_special_tokens=False)
    detok = OutputDetokenizer.for_output(tokenizer, stop=["xyz"])
    deltas = stream(detok, ids)
    assert "".join(deltas) == "abc xy" and detok.matched is None
    assert not deltas[-2].endswith("xy"), "a possible stop prefix must be held back"


def test_special_tokens_are_skipped_or_kept(tokenizer):
    ids = tokenizer.encode("hi<|im_end|>", add_special_tokens=False)
    skipped = OutputDetokenizer.for_output(tokenizer, stop=[])
    kept = OutputDetokenizer.for_output(tokenizer, stop=[], skip_special_tokens=False)
    assert "".join(stream(skipped, ids)) == "hi"
    assert "".join(stream(kept, ids)) == "hi<|im_end|>"
