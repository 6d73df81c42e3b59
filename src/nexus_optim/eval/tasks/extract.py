"""Answer extraction and comparison for exact-match tasks.

Numbers are compared by value after normalisation: thousands separators, a leading ``$``,
a trailing ``.`` and trailing zeros of a decimal are dropped ("1,200.50" == "1200.5";
"12.0" == "12"). A prediction with no number never matches.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# an optional sign, digits with optional thousands groups, an optional decimal part
NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is[:\s]*", re.IGNORECASE)


def normalize_number(text: str | None) -> str | None:
    """Canonical string of the number in ``text`` ("$1,200.50" -> "1200.5"), or None."""
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def first_number(text: str) -> str | None:
    m = NUMBER.search(text)
    return normalize_number(m.group(0)) if m else None


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def extract_gsm_answer(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the first number after the first ``####``;
    else the first number after "the answer is"; else the last number in the text."""
    if "####" in text:
        return first_number(text.split("####", 1)[1])
    m = _ANSWER_IS.search(text)
    if m:
        got = first_number(text[m.end():])
        if got is not None:
            return got
    return last_number(text)


def extract_arith_answer(text: str) -> str | None:
    """The first number of a completion ("Answer: 85." -> "85")."""
    return first_number(text)


def numbers_match(pred: str | None, gold: str | None) -> bool:
    p, g = normalize_number(pred), normalize_number(gold)
    return p is not None and p == g
