"""The bulk upload's streaming CSV parser: rows, row errors with their numbers, malformed files."""

from __future__ import annotations

import pytest

from api_shim.bulk_csv import MAX_ROW_CHARS, CsvFormatError, Row, RowError, RowParser

BASE = {"channels": ["email"], "template_id": "welcome"}


def parse(data: bytes, *, step: int | None = None) -> list[Row | RowError]:
    """Feeds `data` in pieces of `step` bytes (all at once without), as a stream arrives."""
    parser = RowParser(BASE)
    step = step or len(data) or 1
    out: list[Row | RowError] = []
    for start in range(0, len(data), step):
        out += parser.feed(data[start : start + step])
    return out + parser.finish()


def malformed(data: bytes) -> CsvFormatError:
    with pytest.raises(CsvFormatError) as caught:
        parse(data)
    return caught.value


def test_rows_become_requests_with_recipient_fields_and_data() -> None:
    data = (
        b"User_ID, email ,phone,locale,timezone,data.name,data.order_id\r\n"
        b"u1, u1@example.com ,+441234,en-GB,Europe/London,Ada,A-1\r\n"
        b"u2,,,,,Bob,\r\n"
    )
    first, second = parse(data)
    assert isinstance(first, Row) and isinstance(second, Row)
    assert (first.row, first.line, second.row) == (2, 2, 3)
    [recipient] = first.request.recipients
    assert recipient.model_dump(exclude={"addresses"}) == {
        "user_id": "u1",
        "email": "u1@example.com",
        "phone": "+441234",
        "locale": "en-GB",
        "timezone": "Europe/London",
    }
    assert first.request.data == {"name": "Ada", "order_id": "A-1"}
    assert first.request.template_id == "welcome"
    assert [c.value for c in first.request.channels] == ["email"]
    # Empty cells are no value: no email, and the data variable is left unset.
    assert second.request.recipients[0].email is None
    assert second.request.data == {"name": "Bob"}


def test_quoted_fields_commas_doubled_quotes_and_line_breaks() -> None:
    data = b'user_id,data.note\nu1,"a, ""quoted"" b"\nu2,"two\nlines"\nu3,plain\n'
    rows = parse(data)
    assert [r.request.data["note"] for r in rows if isinstance(r, Row)] == [
        'a, "quoted" b',
        "two\nlines",
        "plain",
    ]
    # Row numbers count records; lines count physical lines (u2's record spans two).
    assert [(r.row, r.line) for r in rows] == [(2, 2), (3, 3), (4, 5)]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_the_result_does_not_depend_on_where_the_stream_is_cut(step: int) -> None:
    data = 'user_id,data.name\nu1,"Zoë, ""Z"""\nu2,"multi\nline é"\n,missing\nu4,ü\n'.encode()
    assert parse(data, step=step) == parse(data)


def test_bad_rows_are_reported_with_their_number_and_the_rest_goes_on() -> None:
    long_email = "x" * 400 + "@example.com"
    data = (
        "user_id,email,data.n\n"
        "u1,u1@example.com,1\n"
        ",nobody@example.com,2\n"  # row 3: no user_id
        "u3,u3@example.com\n"  # row 4: a field short
        f"u4,{long_email},4\n"  # row 5: email too long
        "\n"  # row 6: blank, skipped
        "u6,u6@example.com,6,extra\n"  # row 7: a field too many
        "u7,u7@example.com,7"  # row 8: no final line break
    ).encode()
    rows = parse(data)
    assert [(r.row, type(r).__name__) for r in rows] == [
        (2, "Row"),
        (3, "RowError"),
        (4, "RowError"),
        (5, "RowError"),
        (7, "RowError"),
        (8, "Row"),
    ]
    errors = {r.row: r.message for r in rows if isinstance(r, RowError)}
    assert errors[3] == "user_id is empty"
    assert errors[4] == "2 fields where the header names 3 columns"
    assert errors[5].startswith("email: String should have at most 320 characters")
    assert errors[7] == "4 fields where the header names 3 columns"


def test_a_bom_is_ignored() -> None:
    [row] = parse("\ufeffuser_id\nu1\n".encode())
    assert isinstance(row, Row) and row.request.recipients[0].user_id == "u1"


@pytest.mark.parametrize(
    ("data", "row", "line", "problem"),
    [
        (b"", 1, 1, "the file is empty"),
        (b"\n\n", 1, 1, "the file is empty"),
        (b"email,data.x\na@b.c,1\n", 1, 1, "header: there is no user_id column"),
        (b"u1,ada@example.com\n", 1, 1, "header: unknown column 'u1'"),
        (b"user_id,emial\n", 1, 1, "header: unknown column 'emial'"),
        (b"user_id,,email\n", 1, 1, "header: column 2 has no name"),
        (b"user_id,data.first name\n", 1, 1, "header: column 2 ('data.first name')"),
        (b"user_id,email,EMAIL\n", 1, 1, "header: column 'EMAIL' appears twice"),
        # A quote after a closing quote; a stray quote in an unquoted field.
        (b'user_id,data.n\nu1,1\nu2,"ab"c\nu3,3\n', 3, 3, "malformed quoting"),
        (b'user_id,data.n\nu1,5" screen\nu2,x\nu3,"y\n', 2, 2, "malformed quoting"),
        (b'user_id,data.n\nu1,1\nu2,"never closed\nu3,3\n', 3, 3, "a quoted field is not closed"),
        (b"user_id,data.n\nu1,caf\xc3\xa9\nu2,caf\xe9\n", 3, 3, "not UTF-8 text (byte 0xe9"),
        (b"user_id,data.n\nu1,x\x00y\n", 2, 2, "a NUL character: not a text file"),
        ("user_id\nu1\n".encode("utf-16"), 1, 1, "not UTF-8 text (byte 0xff"),
    ],
)
def test_malformed_files_name_the_row(data: bytes, row: int, line: int, problem: str) -> None:
    error = malformed(data)
    assert (error.row, error.line) == (row, line), error
    assert error.problem.startswith(problem), error.problem
    assert str(error).startswith(f"row {row} (line {line}): ")


def test_a_truncated_utf8_character_at_the_end_is_malformed() -> None:
    error = malformed(b"user_id\nu1\nZo" + "ë".encode()[:1])
    assert (error.row, error.problem[:18]) == (3, "not UTF-8 text (by")


def test_an_unclosed_quote_cannot_make_the_parser_hold_the_rest_of_the_file() -> None:
    parser = RowParser(BASE)
    parser.feed(b'user_id,data.n\nu1,"opens\n')
    with pytest.raises(CsvFormatError) as caught:
        for _ in range(MAX_ROW_CHARS // 1000 + 2):
            parser.feed(b"u," + b"x" * 1000 + b"\n")
    assert caught.value.row == 2
    assert "longer than" in caught.value.problem


def test_a_line_without_line_breaks_cannot_grow_without_bound() -> None:
    parser = RowParser(BASE)
    with pytest.raises(CsvFormatError, match="longer than"):
        for _ in range(MAX_ROW_CHARS // 1000 + 2):
            parser.feed(b"user_id" * 150)
