"""Answers: find the number in a model's output, parse numbers, and grade an output against a
gold answer. Pure functions on strings.

A number is an integer, a decimal (``.5``, ``1,234.5``), a fraction (``3/4``) or a LaTeX fraction
(``\\frac{3}{4}``), with an optional sign. Outputs are graded by exact match: numerically when the
gold answer is a number (the last number of the output, fractions compared as floats), else on
the first line of the output, case and spacing ignored.
"""

from __future__ import annotations

import math
import re

_UNSIGNED = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    # A minus counts only when it is not attached to an operand before it (5-3 is not -3).
    rf"(?P<neg>(?<![\w)\]}}.])[-−])?(?:"
    rf"\\[dt]?frac\s*\{{\s*(?P<tn_neg>[-−])?\s*(?P<tn>{_UNSIGNED})\s*\}}"
    rf"\s*\{{\s*(?P<td_neg>[-−])?\s*(?P<td>{_UNSIGNED})\s*\}}"
    rf"|(?P<fn>{_UNSIGNED})\s*/\s*(?P<fd>{_UNSIGNED})"
    rf"|(?P<n>{_UNSIGNED}))"
)


def _plain_digits(text: str | None) -> str | None:
    if not text or text in "-−":
        return text
    text = text.replace(",", "")
    return "0" + text if text.startswith(".") else text


def _number_text(match: re.Match) -> str:
    g = {k: _plain_digits(v) for k, v in match.groupdict().items()}
    negative = bool(g["neg"])
    if g["tn"] is not None:
        negative ^= bool(g["tn_neg"]) ^ bool(g["td_neg"])
        body = f"{g['tn']}/{g['td']}"
    elif g["fn"] is not None:
        body = f"{g['fn']}/{g['fd']}"
    else:
        body = g["n"]
    return ("-" if negative else "") + body


def extract_answer(text: str) -> str | None:
    """The last number in ``text`` as plain text, or None when there is none.

    Handles negatives (``-3``; but ``5-3`` gives ``3``), decimals, thousands separators
    (``1,234`` -> ``1234``), fractions (``3/4``) and LaTeX fractions (``\\frac{3}{4}`` -> ``3/4``).
    """
    matches = list(_NUMBER_RE.finditer(text or ""))
    return _number_text(matches[-1]) if matches else None


def number_value(text: str | None) -> float | None:
    """Float value of an extracted number (``3/4`` -> 0.75); None when unparsable or x/0."""
    if text is None:
        return None
    text = text.strip()
    negative = text.startswith("-")
    body = text[1:] if negative else text
    try:
        if "/" in body:
            num, den = (float(part) for part in body.split("/"))
            if den == 0:
                return None
            value = num / den
        else:
            value = float(body)
    except ValueError:
        return None
    return -value if negative else value


def parse_number(text: str) -> float | None:
    """Value of ``text`` when the whole string is one number (``$1,234.``, ``-\\frac{1}{2}``,
    ``3/4``, ``50%``), else None."""
    text = (text or "").strip().removeprefix("$").rstrip(".%").strip()
    match = _NUMBER_RE.fullmatch(text)
    return number_value(_number_text(match)) if match else None


def gold_answer(answer: str) -> str | None:
    """The number a gold answer stands for: the last number after ``####`` (GSM8K style) if
    present, else the last number of the whole answer."""
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return extract_answer(text)


def answers_match(predicted: str | None, gold: str | None, tolerance: float = 1e-6) -> bool:
    """Numeric exact match: values within ``tolerance`` (absolute, or relative for big numbers)."""
    p, g = number_value(predicted), number_value(gold)
    if p is None or g is None:
        return False
    return math.isclose(p, g, rel_tol=1e-9, abs_tol=tolerance)


def _normalize_text(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".").strip().casefold()


def grade_output(output: str, answer: str) -> tuple[str | None, bool]:
    """(extracted, correct): numeric match when the gold answer is a number, else the first line
    of the output against the answer (case and spacing ignored)."""
    gold = gold_answer(answer)
    if gold is not None:
        extracted = extract_answer(output)
        return extracted, answers_match(extracted, gold)
    first = output.strip().split("\n", 1)[0].strip()
    return first, _normalize_text(first) == _normalize_text(answer)
