"""rho.evaluation.answers: numeric answer extraction, parsing and grading."""

from __future__ import annotations

import pytest

from rho.evaluation.answers import (
    answers_match,
    extract_answer,
    gold_answer,
    grade_output,
    number_value,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("so x = -7", "-7"),
        ("5-3 = 2", "2"),
        ("5-3", "3"),  # a minus attached to an operand is subtraction, not a sign
        ("v = (-3)", "-3"),
        ("It costs $3.50, or 0.25 each", "0.25"),
        ("about .5", "0.5"),
        ("a total of 1,234 apples", "1234"),
        ("Answer: 1,000,000.5", "1000000.5"),
        ("first 7 then 12,3456", "3456"),  # not a thousands group
        ("1,2 and 3", "3"),
        ("it is 3/4", "3/4"),
        ("it is 3 / 4 of it", "3/4"),
        ("-2/3", "-2/3"),
        (r"$\frac{3}{4}$", "3/4"),
        (r"so -\dfrac{1}{2} here", "-1/2"),
        (r"\frac{-1}{-2}", "1/2"),
        (r"\tfrac{1,000}{3}", "1000/3"),
        ("20 apples, then 50%", "50"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_numbers_compare_numerically():
    assert answers_match("0.75", "3/4")
    assert answers_match("1/3", "0.333333")  # within 1e-6
    assert not answers_match("0.3333", "1/3")
    assert answers_match("1000000", "1000000.0000001")
    assert not answers_match("-3", "3")
    assert not answers_match(None, "3")
    assert not answers_match("1/0", "1")
    assert number_value("-1/2") == -0.5
    assert gold_answer("Janet has 3 eggs, then 6.\n#### 1,072") == "1072"
    assert gold_answer("3/2") == "3/2"


def test_parse_number_needs_the_whole_string():
    assert parse_number("3/2") == 1.5
    assert parse_number(" $1,234. ") == 1234.0
    assert parse_number(r"-\frac{1}{4}") == -0.25
    assert parse_number("-5") == -5.0
    for text in ("100 (i.e., all values)", "sqrt(2)", "C(10, 5), or 252", "No", "n!", "2^(n-1)"):
        assert parse_number(text) is None, text


def test_non_numeric_gold_uses_the_first_line():
    assert grade_output(" Paris\nQuestion: more", "paris.") == ("Paris", True)
    assert grade_output(" 12 apples", "#### 12") == ("12", True)
    assert grade_output(" none", "12") == (None, False)
