"""The bulk upload's CSV, parsed as it streams in: bytes in, one validated row at a time out.

The format (docs/api.md, "Batches and bulk CSV upload"): UTF-8 (a BOM is allowed), commas,
RFC 4180 quoting (a field holding a comma, a quote or a line break is quoted; a quote inside
it is doubled), lines ending in LF or CRLF. The first row is a header naming the columns:

    user_id            required: the recipient
    email, phone,      optional recipient fields; an empty cell is no value
    locale, timezone
    data.<name>        a template variable `name` (a string); an empty cell leaves it unset

Nothing is held but the current line and the row being assembled (at most MAX_ROW_CHARS),
so a file of any size streams through in constant memory.

    CsvFormatError   the file cannot be read on: bad quoting, not UTF-8, a bad header.
                     Stops the upload (400 naming the row).
    RowError         one row is invalid (missing user_id, wrong number of fields, a field
                     too long, ...). Reported with its row number; the upload goes on.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from api_shim.models import NotificationCreate

RECIPIENT_COLUMNS = ("user_id", "email", "phone", "locale", "timezone")
DATA_PREFIX = "data."
MAX_ROW_CHARS = 64 * 1024  # under csv's own field limit (128 KiB), so ours speaks first
_DATA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COLUMNS_HELP = "user_id, email, phone, locale, timezone, data.<name>"


class CsvFormatError(Exception):
    """The CSV is malformed at `row` (header = row 1; line = where that row starts)."""

    def __init__(self, row: int, line: int, problem: str) -> None:
        super().__init__(f"row {row} (line {line}): {problem}")
        self.row = row
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    line: int
    message: str


@dataclass(frozen=True, slots=True)
class Row:
    row: int
    line: int
    request: NotificationCreate


@dataclass(frozen=True, slots=True)
class _Record:
    text: str
    row: int
    line: int


class _RecordSplitter:
    """Bytes -> complete CSV records (one or more lines: a quoted field may span lines).

    A record is complete at a line end where its quotes balance: a doubled quote counts
    twice, so only an unclosed quoted field leaves the count odd. A stray quote in an
    unquoted field unbalances it too; csv then refuses the record it merged into.
    """

    def __init__(self) -> None:
        self._undecoded = b""
        self._started = False
        self._pending = ""  # the current line, not yet ended
        self._parts: list[str] = []  # lines of the record in progress
        self._quotes = 0
        self._size = 0
        self._lines = 0  # lines completed
        self._records = 0  # records completed
        self._record_line = 1

    def feed(self, data: bytes, *, final: bool = False) -> list[_Record]:
        out: list[_Record] = []
        try:
            text = self._decode(data, final)
        except _BadBytes as bad:
            self._split(bad.good, out)
            line = self._lines + 1
            raise CsvFormatError(
                self._records + 1,
                self._record_line if self._parts else line,
                f"not UTF-8 text (byte 0x{bad.byte:02x} on line {line}); save the file as UTF-8",
            ) from None
        self._split(text, out)
        if final:
            if self._pending:
                self._take(self._pending, out)
                self._pending = ""
            if self._parts:
                raise CsvFormatError(
                    self._records + 1,
                    self._record_line,
                    "a quoted field is not closed before the end of the file",
                )
        return out

    def _decode(self, data: bytes, final: bool) -> str:
        buffer = self._undecoded + data
        try:
            text = buffer.decode("utf-8")
            self._undecoded = b""
        except UnicodeDecodeError as exc:
            truncated = exc.reason == "unexpected end of data" and exc.end == len(buffer)
            if final or not truncated:  # a character cut by the chunk boundary is waited for
                raise _BadBytes(buffer[: exc.start].decode("utf-8"), buffer[exc.start]) from None
            text = buffer[: exc.start].decode("utf-8")
            self._undecoded = buffer[exc.start :]
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return text

    def _split(self, text: str, out: list[_Record]) -> None:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._take(line + "\n", out)
        if self._size + len(self._pending) > MAX_ROW_CHARS:
            self._too_long()

    def _take(self, line: str, out: list[_Record]) -> None:
        if not self._parts:
            self._record_line = self._lines + 1
        self._lines += 1
        if "\x00" in line:
            raise CsvFormatError(
                self._records + 1,
                self._lines,
                "a NUL character: not a text file (a spreadsheet, or UTF-16?); save it as CSV "
                "in UTF-8",
            )
        self._parts.append(line)
        self._quotes += line.count('"')
        self._size += len(line)
        if self._size > MAX_ROW_CHARS:
            self._too_long()
        if self._quotes % 2 == 0:
            self._records += 1
            out.append(_Record("".join(self._parts), self._records, self._record_line))
            self._parts, self._quotes, self._size = [], 0, 0

    def _too_long(self) -> None:
        raise CsvFormatError(
            self._records + 1,
            self._record_line if self._parts else self._lines + 1,
            f"a row longer than {MAX_ROW_CHARS} characters (a quoted field not closed?)",
        )


class _BadBytes(Exception):
    def __init__(self, good: str, byte: int) -> None:
        self.good = good
        self.byte = byte


@dataclass(frozen=True, slots=True)
class Header:
    """Column index -> ("recipient", field) or ("data", name)."""

    columns: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, fields: list[str], row: int, line: int) -> Header:
        def bad(problem: str) -> CsvFormatError:
            return CsvFormatError(row, line, f"header: {problem}")

        columns: list[tuple[str, str]] = []
        for index, raw in enumerate(fields, start=1):
            name = raw.strip()
            if name.lower() in RECIPIENT_COLUMNS:
                column = ("recipient", name.lower())
            elif name.lower().startswith(DATA_PREFIX):
                variable = name[len(DATA_PREFIX) :]
                if not _DATA_NAME.fullmatch(variable):
                    raise bad(
                        f"column {index} ({name!r}): a data column is data.<name>, the name "
                        "of letters, digits and _"
                    )
                column = ("data", variable)
            elif not name:
                raise bad(f"column {index} has no name")
            else:
                raise bad(
                    f"unknown column {name!r}; the first row must name the columns "
                    f"({_COLUMNS_HELP})"
                )
            if column in columns:
                raise bad(f"column {name!r} appears twice")
            columns.append(column)
        if ("recipient", "user_id") not in columns:
            raise bad(f"there is no user_id column (columns: {_COLUMNS_HELP})")
        return cls(tuple(columns))


def _problem(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        field = loc[2] if loc[:2] == ["recipients", "0"] and len(loc) > 2 else ".".join(loc)
        parts.append(f"{field}: {str(error['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


class RowParser:
    """Feeds bytes; returns rows (valid requests) and row errors, in file order.

    `base` holds what every row shares (channels, template_id or content, priority, ...):
    validate it once before streaming, so a row error is about the row's own cells.
    """

    def __init__(self, base: dict[str, Any]) -> None:
        self._base = base
        self._splitter = _RecordSplitter()
        self.header: Header | None = None

    def feed(self, data: bytes) -> list[Row | RowError]:
        return self._parse(self._splitter.feed(data))

    def finish(self) -> list[Row | RowError]:
        """The last row (a file need not end with a line break); raises if the file ended
        mid-row or had no header."""
        rows = self._parse(self._splitter.feed(b"", final=True))
        if self.header is None:
            raise CsvFormatError(
                1,
                1,
                f"the file is empty; the first row must be a header "
                f"naming the columns ({_COLUMNS_HELP})",
            )
        return rows

    def _parse(self, records: list[_Record]) -> list[Row | RowError]:
        out: list[Row | RowError] = []
        for record in records:
            try:
                fields = next(csv.reader([record.text], strict=True))
            except csv.Error as exc:
                problem = str(exc).partition(" - ")[0]
                raise CsvFormatError(
                    record.row,
                    record.line,
                    f"malformed quoting ({problem}): a field holding "
                    'a quote must be quoted, and a quote inside it doubled ("")',
                ) from None
            except StopIteration:
                continue
            if not fields:
                continue  # a blank line
            if self.header is None:
                self.header = Header.parse(fields, record.row, record.line)
                continue
            out.append(self._row(fields, record))
        return out

    def _row(self, fields: list[str], record: _Record) -> Row | RowError:
        assert self.header is not None
        columns = self.header.columns
        if len(fields) != len(columns):
            return RowError(
                record.row,
                record.line,
                f"{len(fields)} fields where the header names {len(columns)} columns",
            )
        recipient: dict[str, str] = {}
        data: dict[str, str] = {}
        for (kind, name), value in zip(columns, fields, strict=True):
            if kind == "recipient":
                value = value.strip()
                if value:
                    recipient[name] = value
            elif value:
                data[name] = value
        if "user_id" not in recipient:
            return RowError(record.row, record.line, "user_id is empty")
        try:
            request = NotificationCreate.model_validate(
                {**self._base, "recipients": [recipient], "data": data}
            )
        except ValidationError as exc:
            return RowError(record.row, record.line, _problem(exc))
        return Row(record.row, record.line, request)
