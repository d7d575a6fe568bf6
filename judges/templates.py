"""Judge prompt templates. Bump TEMPLATE_VERSION whenever a template's text changes: it is
stored with every critique and preference row, so old and new labels never mix silently."""

from __future__ import annotations

from constitution import Constitution, Principle

TEMPLATE_VERSION = "v1"
LABELS = ("A", "B")
# The judge's answer is read from the next token after this assistant-turn prefix.
ANSWER_PREFIX = "The better response is ("
# Chain of thought: the assistant turn starts with this; the rationale follows, then
# "\n" + ANSWER_PREFIX, and the labels are read after it.
COT_PREFIX = "Let's think step by step: "
# Direct scoring (d-RLAIF): the rating 1-10 is read from the digits after this prefix.
RATING_PREFIX = "Rating: "
RATINGS = tuple(range(1, 11))


def prompt_markers(tokenizer) -> tuple[str, ...]:
    """The strings that delimit turns in the prompts a model reads: the raw format's "User:" and
    "Assistant:", the option labels, and every special token its chat template writes (e.g.
    Gemma's <start_of_turn>, ChatML's <|im_start|>) or the tokenizer declares."""
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a tokenizer without a chat template: raw prompts only
        rendered = ""
    used = {t for t in special if t in rendered} | set(tokenizer.all_special_tokens)
    return tuple(sorted({"User:", "Assistant:", *(f"({label})" for label in LABELS), *used}))


def _few_shot(constitution: Constitution, n: int) -> list[dict]:
    turns: list[dict] = []
    for ex in constitution.examples[:n]:
        p = constitution.principle(ex.principle_id)
        turns += [
            {"role": "user", "content": ex.prompt},
            {"role": "assistant", "content": ex.response},
            {"role": "user", "content": p.critique_request},
            {"role": "assistant", "content": ex.critique},
            {"role": "user", "content": p.revision_request},
            {"role": "assistant", "content": ex.revision},
        ]
    return turns


def critique_messages(constitution: Constitution, principle: Principle, prompt: str,
                      response: str, few_shot: int = 0) -> list[dict]:
    """SL-CAI step 1: the conversation so far, then the principle's critique request."""
    return _few_shot(constitution, few_shot) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": principle.critique_request},
    ]


def revision_messages(critique_msgs: list[dict], critique: str, principle: Principle) -> list[dict]:
    """SL-CAI step 2: the critique, then the principle's revision request."""
    return critique_msgs + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision_request},
    ]


def preference_messages(principle: Principle, prompt: str, response_a: str,
                        response_b: str) -> list[dict]:
    """RL-CAI: a multiple-choice question; the answer is read from P(A) vs P(B)."""
    content = (
        "Consider this request from a user to an AI assistant.\n\n"
        f"Request: {prompt}\n\n"
        f"{principle.preference_question}\n"
        f"Options:\n(A) {response_a}\n\n(B) {response_b}\n\n"
        "Reply with the letter of the better option."
    )
    return [{"role": "user", "content": content}]


def rating_messages(principle: Principle, prompt: str, response: str) -> list[dict]:
    """d-RLAIF: rate one response 1-10; the expected rating is read from the digit tokens."""
    content = (
        "Consider this request from a user to an AI assistant, and the assistant's response.\n\n"
        f"Request: {prompt}\n\nResponse: {response}\n\n"
        f"Judge the response by this question: {principle.preference_question}\n"
        "Rate the response from 1 (very poor) to 10 (as good as possible)."
    )
    return [{"role": "user", "content": content}]


def raw_prompt(messages: list[dict]) -> str:
    """The judge prompt as plain 'User:/Assistant:' text, without the chat template."""
    turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant: "


def contrastive_messages(principle: Principle, prompt: str, follow: bool) -> list[dict]:
    """Contrastive scoring: a system prompt that follows (or violates) the principle. A
    response's log-likelihood under the first minus under the second is its score."""
    aim = "better" if follow else "worse"
    return [{"role": "system", "content": f"You are an AI assistant. Always give the {aim} answer "
                                          f"by this question: {principle.preference_question}"},
            {"role": "user", "content": prompt}]
