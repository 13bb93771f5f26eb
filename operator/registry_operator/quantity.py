"""Kubernetes resource quantities (`500m`, `1Gi`, `1e3`), parsed to exact numbers.

The API server stores quantities in canonical form (`1024Mi` becomes `1Gi`, `cpu: 1` becomes `"1"`), so
comparing what we sent with what it stored as strings would see a change on every reconcile and re-apply
forever. Comparing values does not. The grammar is the API server's own (the same regular expression the
CRD schema uses to reject malformed quantities before anything is written).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
_QUANTITY = re.compile(PATTERN)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}


def parse(value: object) -> Decimal | None:
    """The exact value of a quantity (a string or an integer), or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value)
    if not _QUANTITY.match(text):
        return None
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    suffix = text[-1] if text[-1] in _DECIMAL and not text[-1].isdigit() else ""
    number = text[: -len(suffix)] if suffix else text
    try:
        return Decimal(number) * _DECIMAL[suffix]
    except InvalidOperation:
        return None
