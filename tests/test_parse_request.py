"""The service's request parsing, fast (no server): every limit exactly at and one past it."""
import pytest

from ktt.serving.runtime import MAX_TEXT_CHARS, MAX_TEXTS_PER_REQUEST, parse_request


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
])
def test_bad_requests_named(body, message):
    with pytest.raises(ValueError) as err:
        parse_request(body)
    assert str(err.value) == message  # the whole message: it is what a client reads


def test_one_character_is_enough():
    assert parse_request({"text": "x"}) == ["x"]
