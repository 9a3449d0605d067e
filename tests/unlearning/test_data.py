import pytest
from PIL import Image

from unlearning.data import QA, ForgetData
from unlearning.errors import InvalidInputError

IMG = Image.new("RGB", (64, 64))


def test_empty_qa_list_is_rejected():
    with pytest.raises(InvalidInputError, match="qa_pairs is empty"):
        ForgetData("x", [IMG], [])


def test_no_images_is_rejected():
    with pytest.raises(InvalidInputError, match="no images"):
        ForgetData("x", [], [QA("q?", "a")])


def test_wrong_mode_and_tiny_images_are_rejected():
    with pytest.raises(InvalidInputError, match="mode"):
        ForgetData("x", [Image.new("CMYK", (64, 64))], [QA("q?", "a")])
    with pytest.raises(InvalidInputError, match="16x16"):
        ForgetData("x", [Image.new("RGB", (8, 8))], [QA("q?", "a")])


def test_blank_question_and_too_many_pairs_are_rejected():
    with pytest.raises(InvalidInputError, match=r"qa_pairs\[0\]"):
        ForgetData("x", [IMG], [QA(" ", "a")])
    with pytest.raises(InvalidInputError, match="over the limit"):
        ForgetData("x", [IMG], [QA("q?", "a")] * 10_000)
