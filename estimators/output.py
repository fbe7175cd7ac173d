"""What every command's JSON output shares: numbers as JSON has them, and the file written the same way."""

from __future__ import annotations

import json
import math

import numpy as np


def json_value(value):
    """``value`` for JSON: NumPy scalars as Python ones, and NaN, ±inf or a missing value (pandas NA, NaT) as
    null (JSON has no NaN); other values unchanged."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and not isinstance(value, (str, bool, int, float, list, tuple, dict)):
        import pandas as pd

        if pd.api.types.is_scalar(value) and pd.isna(value):
            return None
    return value


def json_number(value) -> float | None:
    """``value`` as a float, or None where it is NaN or infinite."""
    return json_value(float(value))


def write_json(payload: dict, path: str | None = None, indent: int = 2) -> str:
    """``payload`` as JSON text; written to ``path`` (a text file ending in a newline) when given."""
    text = json.dumps(payload, indent=indent)
    if path is not None:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    return text
