"""Reading a request: the body as JSON, its texts and each text's stopping threshold, or a
one-line ValueError saying what is wrong (the service answers it as HTTP 400)."""
from __future__ import annotations

import json

from ktt.hierarchy import check_threshold

MAX_TEXT_CHARS = 10_000  # a request with a longer text is refused (in-process callers: cut); titles never need more
MAX_TEXTS_PER_REQUEST = 256
# a body's own limit, as the front server's (scripts/patch_bentoml.py sets BentoML's max_request_size
# to it): checked before any parsing, so that clients sending bodies near BentoML's 20 MB cap cannot
# keep the one model worker busy. 256 titles fit many times over; 256 texts of 10,000 characters
# fit in UTF-8 unless most are outside the Basic Multilingual Plane, or sent as \u escapes (up to
# 6 bytes a character): such a request is split in two
MAX_BODY_BYTES = 8 * 1024 * 1024


def load_json(data: bytes | str):
    """A request body as JSON, or ValueError saying in one line why it is not."""
    if len(data) > MAX_BODY_BYTES:
        raise ValueError(f"the body is {len(data) / 1e6:.1f} MB; the limit is {MAX_BODY_BYTES / 1e6:.1f} MB: "
                         "send its texts in more than one request")
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError("the body's JSON is nested too deeply") from None


def parse_request(body) -> list[str]:
    """The texts of one request, or ValueError with what is wrong."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise ValueError("empty list: send {\"text\": \"...\"} or a list of them")
    # counted before any text is looked at: a request of 100,000 items is refused at once
    n = sum(len(i["text"]) if isinstance(i, dict) and isinstance(i.get("text"), list) else 1 for i in items)
    if n > MAX_TEXTS_PER_REQUEST:
        raise ValueError(f"{n} texts in one request; the limit is {MAX_TEXTS_PER_REQUEST}")
    texts = []
    for item in items:
        if not isinstance(item, dict) or "text" not in item:
            raise ValueError("each item must be a JSON object with a \"text\" field")
        value = item["text"]
        for t in value if isinstance(value, list) else [value]:
            if not isinstance(t, str):
                raise ValueError(f"\"text\" must be a string, not {type(t).__name__}")
            if not t.strip():
                raise ValueError("\"text\" is empty")
            if len(t) > MAX_TEXT_CHARS:
                raise ValueError(f"\"text\" has {len(t):,} characters; the limit is {MAX_TEXT_CHARS:,}")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON's \\ud800 escapes decode to lone surrogates
                raise ValueError(f"\"text\" is not valid Unicode: a lone surrogate "
                                 f"\\u{ord(t[e.start]):04x} at character {e.start}") from None
            texts.append(t)
    if len(texts) > MAX_TEXTS_PER_REQUEST:
        raise ValueError(f"{len(texts)} texts in one request; the limit is {MAX_TEXTS_PER_REQUEST}")
    return texts


def parse_thresholds(body, default: tuple, for_target=None) -> list[tuple]:
    """Per text of a request that :func:`parse_request` accepted, where its answer stops:
    ``(threshold, max_depth)`` (``Hierarchy.stop_depths``): the item's ``"threshold"`` (no depth
    cap), or the threshold and depth that reach its ``"target_precision"`` (``for_target``, e.g.
    ``Predictor.stop_for``), or ``default``; ValueError naming a bad one."""
    from ktt.confidence import check_target

    out = []
    for item in body if isinstance(body, list) else [body]:
        if "threshold" in item and "target_precision" in item:
            raise ValueError("send a threshold or a target_precision, not both")
        if "target_precision" in item:
            target = item["target_precision"]
            if isinstance(target, (list, dict)):  # one number per request object
                raise ValueError(f"target_precision must be a number above 0 and at most 1, not {target!r}")
            t = tuple((for_target or _no_curve)(check_target(target)))
        elif "threshold" in item:
            t = item["threshold"]
            if isinstance(t, (list, dict)):
                raise ValueError(f"threshold must be a number from 0 to 1, not {t!r}")
            t = (check_threshold(t), None)
        else:
            t = tuple(default)
        value = item["text"]
        out += [t] * (len(value) if isinstance(value, list) else 1)
    return out


def _no_curve(target):
    raise ValueError("this model has no precision curve: send a threshold instead")
