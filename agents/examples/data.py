"""The ``data`` agent: descriptive statistics, correlations and histograms over tabular input.

Input is CSV text (header row first; the delimiter , ; tab or | is sniffed) or JSON: an array of
records (objects) or an array of numbers (one column named "value"). A column is numeric when all
of its non-missing values are finite numbers; empty cells, null, NA, N/A, NaN and None are missing.
Parsing and statistics are plain functions; the MCP tools at the bottom are thin wrappers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field
from typing_extensions import TypedDict

from edgefleet.agents import Agent, ToolAnnotations, input_errors
from edgefleet.agents.examples._numpy import numpy as np

Format = Literal["auto", "csv", "json"]
Cell = float | str | None

_MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})


@dataclass(frozen=True)
class Table:
    """Parsed input: column names in input order and, per column, one cell per row."""

    columns: dict[str, list[Cell]]
    rows: int

    def numeric(self, name: str) -> np.ndarray | None:
        """The non-missing values of column ``name`` as floats, or None if any of them is not a number."""
        values: list[float] = []
        for cell in self.columns[name]:
            if cell is None:
                continue
            try:
                number = float(cell)
            except ValueError:
                return None
            if not math.isfinite(number):
                return None
            values.append(number)
        return np.array(values) if values else None

    def require_numeric(self, name: str) -> np.ndarray:
        """Like ``numeric``, but raises ValueError if the column is unknown, not numeric or empty."""
        if name not in self.columns:
            raise ValueError(f"unknown column {name!r}; the columns are {list(self.columns)}")
        values = self.numeric(name)
        if values is None:
            raise ValueError(f"column {name!r} is not numeric (or has no values)")
        return values


class NumericSummary(TypedDict):
    count: int
    missing: int
    mean: float
    std: float | None
    min: float
    q25: float
    median: float
    q75: float
    max: float


class TextSummary(TypedDict):
    count: int
    missing: int
    unique: int
    top: str | None
    top_count: int


class DescribeResult(TypedDict):
    """Row count and per-column statistics; std is the sample standard deviation (null below 2 values)."""

    rows: int
    numeric: dict[str, NumericSummary]
    text: dict[str, TextSummary]


class CorrelationResult(TypedDict):
    """Pearson coefficients, matrix[i][j] for columns[i] and columns[j]; null where a column is constant."""

    columns: list[str]
    matrix: list[list[float | None]]
    rows_used: int


class Bin(TypedDict):
    start: float
    end: float
    count: int


class HistogramResult(TypedDict):
    """Equal-width bins from min to max; each bin holds start <= x < end, the last one also x == end."""

    column: str
    count: int
    missing: int
    min: float
    max: float
    bins: list[Bin]


def _cell(value: str) -> Cell:
    value = value.strip()
    return None if value.lower() in _MISSING else value


def _parse_csv(text: str) -> Table:
    try:
        delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|").delimiter
    except csv.Error:  # a single column has no delimiter to find
        delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        rows = [row for row in reader if row]  # blank lines come through as []
    except csv.Error as exc:
        raise ValueError(f"unparsable CSV at line {reader.line_num}: {exc}") from exc
    if not rows:
        raise ValueError("the CSV is empty: expected a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    if "" in header:
        raise ValueError(f"unparsable CSV: header field {header.index('') + 1} is empty")
    if len(set(header)) != len(header):
        duplicates = sorted({name for name in header if header.count(name) > 1})
        raise ValueError(f"unparsable CSV: duplicate column names {duplicates}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"unparsable CSV: row {line} has {len(row)} fields, the header has {len(header)}")
    if len(rows) < 2:
        raise ValueError("the CSV has a header but no data rows")
    columns = {name: [_cell(row[i]) for row in rows[1:]] for i, name in enumerate(header)}
    return Table(columns, len(rows) - 1)


def _json_cell(value: object) -> Cell:
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass, but true/false are categories, not numbers
        return "true" if value else "false"
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return _cell(value)
    return json.dumps(value, sort_keys=True)  # nested lists/objects are compared as text


def _parse_json(text: str) -> Table:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"unparsable JSON: {exc}") from exc
    if not isinstance(document, list) or not document:
        raise ValueError("expected a non-empty JSON array of records (objects) or of numbers")
    if all(isinstance(item, dict) for item in document):
        names: dict[str, None] = {}  # ordered set: columns in order of first appearance
        for record in document:
            names.update(dict.fromkeys(record))
        columns = {name: [_json_cell(record.get(name)) for record in document] for name in names}
        return Table(columns, len(document))
    if all(item is None or (isinstance(item, int | float) and not isinstance(item, bool)) for item in document):
        return Table({"value": [_json_cell(item) for item in document]}, len(document))
    raise ValueError("a JSON array must hold only records (objects) or only numbers (and nulls)")


def parse_table(data: str, fmt: Format = "auto") -> Table:
    """Parse CSV or JSON text into a ``Table``; ``auto`` picks JSON when the text starts with ``[`` or ``{``.

    Raises ValueError with the reason when the input cannot be parsed.
    """
    if not data.strip():
        raise ValueError("no data: the input is empty")
    if fmt == "json" or (fmt == "auto" and data.lstrip()[0] in "[{"):
        return _parse_json(data)
    return _parse_csv(data)


def describe(data: str, fmt: Format = "auto") -> DescribeResult:
    """Statistics per column: count, mean, sample std, min, quartiles and max if numeric, else count, unique and top."""
    table = parse_table(data, fmt)
    numeric: dict[str, NumericSummary] = {}
    text: dict[str, TextSummary] = {}
    for name, cells in table.columns.items():
        values = table.numeric(name)
        if values is not None:
            q25, median, q75 = (float(q) for q in np.percentile(values, [25, 50, 75]))
            numeric[name] = {
                "count": len(values),
                "missing": table.rows - len(values),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "min": float(values.min()),
                "q25": q25,
                "median": median,
                "q75": q75,
                "max": float(values.max()),
            }
        else:
            present = [str(cell) for cell in cells if cell is not None]
            # most_common sorts stably: on a tie the value seen first is the top one.
            top = Counter(present).most_common(1)
            text[name] = {
                "count": len(present),
                "missing": table.rows - len(present),
                "unique": len(set(present)),
                "top": top[0][0] if top else None,
                "top_count": top[0][1] if top else 0,
            }
    return {"rows": table.rows, "numeric": numeric, "text": text}


def correlate(data: str, columns: list[str] | None = None, fmt: Format = "auto") -> CorrelationResult:
    """Pearson correlation matrix over ``columns`` (default: every numeric column).

    Only rows where all chosen columns have a value are used. Raises ValueError for unknown or
    non-numeric columns, fewer than two numeric columns, or fewer than two complete rows.
    """
    table = parse_table(data, fmt)
    if columns is None:
        columns = [name for name in table.columns if table.numeric(name) is not None]
    for name in columns:
        table.require_numeric(name)
    if len(columns) < 2:
        raise ValueError(f"need at least two numeric columns to correlate, found {columns}")
    complete = [
        [float(cell) for cell in row]
        for row in zip(*(table.columns[name] for name in columns), strict=True)
        if all(cell is not None for cell in row)
    ]
    if len(complete) < 2:
        raise ValueError(f"need at least two rows with a value in every column, found {len(complete)}")
    matrix = np.array(complete)
    centered = matrix - matrix.mean(axis=0)
    norms = np.sqrt((centered**2).sum(axis=0))
    denominator = np.outer(norms, norms)
    defined = denominator > 0  # a constant column has no correlation with anything
    r = np.divide(centered.T @ centered, denominator, out=np.zeros_like(denominator), where=defined)
    r = np.clip(r, -1.0, 1.0)  # rounding can land a hair outside [-1, 1]
    np.fill_diagonal(r, 1.0)  # exact, where the division gives 0.9999999999999998 (undefined ones stay null)
    size = len(columns)
    return {
        "columns": list(columns),
        "matrix": [[float(r[i, j]) if defined[i, j] else None for j in range(size)] for i in range(size)],
        "rows_used": len(complete),
    }


def histogram(data: str, column: str, bins: int = 10, fmt: Format = "auto") -> HistogramResult:
    """Counts of ``column``'s values in ``bins`` equal-width bins.

    Raises ValueError for an unknown or non-numeric column.
    """
    table = parse_table(data, fmt)
    values = table.require_numeric(column)
    counts, edges = np.histogram(values, bins=bins)
    return {
        "column": column,
        "count": len(values),
        "missing": table.rows - len(values),
        "min": float(values.min()),
        "max": float(values.max()),
        "bins": [{"start": float(edges[i]), "end": float(edges[i + 1]), "count": int(c)} for i, c in enumerate(counts)],
    }


agent = Agent(
    "data",
    description="Descriptive statistics, correlations and histograms over CSV or JSON data.",
    version="1.0.0",
)

_READ_ONLY = ToolAnnotations(readOnlyHint=True, idempotentHint=True, destructiveHint=False, openWorldHint=False)
_DATA_HELP = "CSV text with a header row, or a JSON array of records (objects) or of numbers."
Data = Annotated[str, Field(min_length=1, max_length=5_000_000, description=_DATA_HELP)]
FormatParam = Annotated[Format, Field(description="Input format; 'auto' reads JSON if the data starts with [ or {.")]


@agent.tool("describe", annotations=_READ_ONLY)
async def describe_tool(data: Data, format: FormatParam = "auto") -> DescribeResult:
    """Summarise every column of a table, like a spreadsheet's descriptive statistics.

    Numeric columns get count, missing, mean, sample standard deviation, min, 25%/50%/75%
    quartiles and max; other columns get count, missing, number of unique values and the most
    frequent value. Empty cells, null, NA, N/A, NaN and None count as missing.
    """
    with input_errors():
        return describe(data, format)


@agent.tool("correlate", annotations=_READ_ONLY)
async def correlate_tool(
    data: Data,
    columns: Annotated[
        list[str] | None,
        Field(min_length=2, description="Numeric columns to correlate; default: all numeric columns."),
    ] = None,
    format: FormatParam = "auto",
) -> CorrelationResult:
    """Compute the Pearson correlation matrix of numeric columns (from -1 to 1).

    Rows missing a value in any chosen column are skipped; rows_used says how many remained.
    A constant column has no defined correlation: its entries are null.
    """
    with input_errors():
        return correlate(data, columns, format)


@agent.tool("histogram", annotations=_READ_ONLY)
async def histogram_tool(
    data: Data,
    column: Annotated[str, Field(min_length=1, description="The numeric column to bin.")],
    bins: Annotated[int, Field(ge=1, le=200, description="Number of equal-width bins.")] = 10,
    format: FormatParam = "auto",
) -> HistogramResult:
    """Bin one numeric column into equal-width bins between its min and max and count the values in each."""
    with input_errors():
        return histogram(data, column, bins, format)


if __name__ == "__main__":
    agent.main()
