"""The service's request parsing, fast (no server): every limit exactly at and one past it."""
import pytest

from ktt.serving.requests import MAX_TEXT_CHARS, MAX_TEXTS_PER_REQUEST, load_json, parse_request


def test_shapes_accepted():
    assert parse_request({"text": "pasta"}) == ["pasta"]
    assert parse_request({"text": ["a", "b"]}) == ["a", "b"]
    assert parse_request([{"text": "a"}, {"text": ["b", "c"]}]) == ["a", "b", "c"]


def test_text_length_limit():
    assert parse_request({"text": "x" * MAX_TEXT_CHARS}) == ["x" * MAX_TEXT_CHARS]
    with pytest.raises(ValueError, match=f"has {MAX_TEXT_CHARS + 1:,} characters; the limit is {MAX_TEXT_CHARS:,}"):
        parse_request({"text": "x" * (MAX_TEXT_CHARS + 1)})


def test_texts_per_request_limit():
    assert len(parse_request({"text": ["a"] * MAX_TEXTS_PER_REQUEST})) == MAX_TEXTS_PER_REQUEST
    assert len(parse_request([{"text": "a"}] * MAX_TEXTS_PER_REQUEST)) == MAX_TEXTS_PER_REQUEST
    with pytest.raises(ValueError, match=f"{MAX_TEXTS_PER_REQUEST + 1} texts in one request; the limit is "
                                         f"{MAX_TEXTS_PER_REQUEST}"):
        parse_request({"text": ["a"] * (MAX_TEXTS_PER_REQUEST + 1)})
    with pytest.raises(ValueError, match="texts in one request"):
        parse_request([{"text": "a"}] * (MAX_TEXTS_PER_REQUEST + 1))


@pytest.mark.parametrize("body, message", [
    ([], 'empty list: send {"text": "..."} or a list of them'),
    ({"txt": "x"}, 'each item must be a JSON object with a "text" field'),
    ("just a string", 'each item must be a JSON object with a "text" field'),
    ({"text": 3}, '"text" must be a string, not int'),
    ({"text": [None]}, '"text" must be a string, not NoneType'),
    ({"text": ""}, '"text" is empty'),
    ({"text": " \t\n"}, '"text" is empty'),
    ({"text": ["ok", ""]}, '"text" is empty'),
    ({"text": "Tea \ud800 bags"}, '"text" is not valid Unicode: a lone surrogate \\ud800 at character 4'),
    ({"text": ["ok", "\udfff"]}, '"text" is not valid Unicode: a lone surrogate \\udfff at character 0'),
])
def test_bad_requests_named(body, message):
    with pytest.raises(ValueError) as err:
        parse_request(body)
    assert str(err.value) == message  # the whole message: it is what a client reads


def test_one_character_is_enough():
    assert parse_request({"text": "x"}) == ["x"]


@pytest.mark.parametrize("data, message", [
    (b"{not json", "the body is not valid JSON: Expecting property name enclosed in double quotes: "
                   "line 1 column 2 (char 1)"),
    (b"", "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'{"text": "caf\xe9"}', "the body is not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "the body's JSON is nested too deeply"),
])
def test_bodies_that_are_not_json_named(data, message):
    with pytest.raises(ValueError) as err:
        load_json(data)
    assert str(err.value) == message


def test_json_bodies_read():
    assert load_json(b'{"text": "Caf\xc3\xa9 \\u00e9"}') == {"text": "Café é"}
    assert load_json('[{"text": "a"}]') == [{"text": "a"}]


def test_thresholds_per_text():
    """Per text, (threshold, max_depth): a threshold sent has no depth cap; the default keeps the model's."""
    from ktt.serving.requests import parse_thresholds

    assert parse_thresholds({"text": "a"}, (0.2, 2)) == [(0.2, 2)]
    assert parse_thresholds({"text": ["a", "b"], "threshold": 0.5}, (0.2, 2)) == [(0.5, None), (0.5, None)]
    assert parse_thresholds([{"text": "a", "threshold": 1}, {"text": ["b", "c"]}, {"text": "d", "threshold": 0}],
                            (0.3, None)) == [(1, None), (0.3, None), (0.3, None), (0, None)]
    for bad in ("0.5", None, True, -0.01, 1.01, float("nan"), [0.5]):
        with pytest.raises(ValueError, match=r"^threshold must be a number from 0 to 1, not "):
            parse_thresholds([{"text": "a"}, {"text": "b", "threshold": bad}], (0.0, None))


def test_target_precision_per_text():
    """A target precision becomes the threshold and depth its curves give (here the lookup halves
    it and caps at level 1)."""
    from ktt.serving.requests import parse_thresholds

    half = lambda p: (p / 2, 1)  # noqa: E731
    assert parse_thresholds([{"text": ["a", "b"], "target_precision": 0.9}, {"text": "c"}], (0.1, None), half) \
        == [(.45, 1), (.45, 1), (.1, None)]
    assert parse_thresholds({"text": "a", "target_precision": 1}, (0.1, None), half) == [(.5, 1)]
    for bad in (0, 0.0, -1, 1.5, "0.9", None, True, float("nan"), [0.9]):
        with pytest.raises(ValueError, match=r"^target_precision must be a number above 0 and at most 1, not "):
            parse_thresholds({"text": "a", "target_precision": bad}, (0.0, None), half)
    with pytest.raises(ValueError, match="^send a threshold or a target_precision, not both$"):
        parse_thresholds({"text": "a", "target_precision": 0.9, "threshold": 0.1}, (0.0, None), half)
    with pytest.raises(ValueError, match="no precision curve"):
        parse_thresholds({"text": "a", "target_precision": 0.9}, (0.0, None))
