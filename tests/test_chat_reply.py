"""How %%qwen writes an answer: reasoning folded and muted, the footer, and why an answer is
empty."""

from jupyter_qwen.notebook.chat_reply import ChatReply


def finished(**fields) -> ChatReply:
    reply = ChatReply(**{k: v for k, v in fields.items() if k not in ("tokens", "finish")})
    reply.add("", "", fields.get("finish"))
    reply.finish(10, fields.get("tokens"))
    return reply


def test_an_empty_answer_says_why():
    assert finished(reasoning="hm", finish="length", max_tokens=4).empty_reason() == (
        "no answer: the token limit (4) was reached while reasoning")
    assert finished(finish="length").empty_reason() == (
        "no answer: the token limit was reached before answering")
    assert finished(reasoning="hm", finish="stop").empty_reason() == (
        "no answer: the model reasoned and ended without answering")
    assert finished(finish="stop").empty_reason() == "no answer: the model returned nothing"
    assert finished(content="Hi", finish="stop").empty_reason() == ""


def test_the_reasoning_is_folded_and_muted_and_the_footer_counts():
    reply = ChatReply()
    reply.add("Think <b>", "")
    reply.add("", "Answer", "stop")
    reply.first_token_at = reply.started + 0.05
    reply.finish(12, 20)
    reply.ended_at = reply.first_token_at + 0.5
    markdown = reply.markdown(done=True)
    assert markdown.startswith("<details><summary>Reasoning</summary>")
    assert "<blockquote style=\"color: var(--jp-ui-font-color2" in markdown
    assert "Think &lt;b&gt;" in markdown and markdown.index("</details>") < markdown.index(
        "Answer")
    assert reply.footer() == "20 tokens · first token 50 ms · 40 tok/s"
    assert "no answer" not in markdown and "tok/s" not in reply.markdown()
    assert finished(tokens=None).footer() == "– tokens · first token – · – tok/s"
