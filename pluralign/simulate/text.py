"""Render an English response from five binary attributes, so that an LM can learn tastes.

Attributes: length (4 steps plus an introduction and an example, or 2 steps), formality
(register, no contractions), bullets (a list or prose), caution (hedges and a safety note), and
enthusiasm (exclamations and encouragement). Phrasings are drawn at random for variety.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pluralign.settings.stages import TEXT_ATTRIBUTES
from pluralign.simulate.textbank import Topic

ATTRIBUTES = TEXT_ATTRIBUTES  # defined with the settings, which check item counts against it

_OPEN = {  # (formal, enthusiastic) -> openers
    (0, 0): ("Sure.", "OK, so here's what I'd do.", "Here's the short version.", ""),
    (1, 0): ("Certainly.", "The following approach is recommended.", "Here is an overview."),
    (0, 1): ("Ooh, love this one!", "Great question!", "Oh, this is a fun one!"),
    (1, 1): ("What an excellent question!", "Wonderful question!", "I am delighted to help!"),
}
_STEP = {
    0: ("{S}.", "Try to {s}.", "Definitely {s}.", "You'll want to {s}."),
    1: ("It is advisable to {s}.", "One should {s}.", "You may wish to {s}.",
        "It is worth making sure to {s}."),
}
_CONNECT = {0: ("First, ", "Also, ", "Then ", "And "),
            1: ("To begin, ", "In addition, ", "Furthermore, ", "Finally, ")}
_INTRO = {0: "A few things make a real difference with {s}.",
          1: "Several practices make a considerable difference with {s}."}
_HEDGE = {0: ("I'm no expert, and it really depends on you, but this usually helps.",
              "Take this with a grain of salt, since everyone's different."),
          1: ("Circumstances vary, so please treat this as general guidance only.",
              "I would note that this may not apply in every situation.")}
_CLOSE = {0: ("You've got this!", "Have fun with it!", "Go for it, you'll love it!"),
          1: ("Best of luck, you will do brilliantly!", "I am sure you will succeed!")}
_WRAP = {0: "Stick with it and it gets easier.", 1: "Over time, these habits add up."}


def render(topic: Topic, subject: str, attrs: Sequence[int], rng: np.random.Generator) -> str:
    """One response to a question about `subject`, shaped by the attribute vector `attrs`."""
    long, formal, bullets, caution, excited = (int(x) for x in attrs)
    pick = _picker(rng)
    steps = [topic.steps[i].format(s=subject)
             for i in rng.choice(len(topic.steps), 4 if long else 2, replace=False)]
    head = [pick(_OPEN[formal, excited])]
    if caution:
        head.append(pick(_HEDGE[formal]))
    if long:
        head.append(_INTRO[formal].format(s=subject))
    sentences = [_sentence(pick(_STEP[formal]), step, formal, excited and i == 0)
                 for i, step in enumerate(steps)]
    if bullets:
        body = "\n".join(f"- {s}" for s in sentences)
    else:
        body = " ".join(_join(_CONNECT[formal][i], s) for i, s in enumerate(sentences))
    tail = []
    if long:
        tail += [topic.example.format(s=subject), _WRAP[formal]]
    if caution:
        tail.append(topic.caution.format(s=subject))
    if excited:
        tail.append(pick(_CLOSE[formal]))
    text = " ".join(h for h in head if h)
    text = f"{text}\n{body}" if bullets else f"{text} {body}"
    tail_text = " ".join(tail)
    text = f"{text}\n{tail_text}" if bullets and tail else f"{text} {tail_text}"
    text = text.strip()
    return _informal(text) if not formal else text


def _picker(rng: np.random.Generator):
    return lambda options: options[int(rng.integers(len(options)))]


def _sentence(template: str, step: str, formal: int, excited: bool) -> str:
    s = template.replace("{S}", step[0].upper() + step[1:]).replace("{s}", step)
    return s[:-1] + "!" if excited else s


def _join(connector: str, sentence: str) -> str:
    if not connector:
        return sentence
    return connector + sentence[0].lower() + sentence[1:]


def _informal(text: str) -> str:
    for a, b in (("do not", "don't"), ("does not", "doesn't"), ("you will", "you'll"),
                 ("it is", "it's"), ("have not", "haven't"), ("is not", "isn't")):
        text = text.replace(a, b)
    return text
