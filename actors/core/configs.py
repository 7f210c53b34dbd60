"""How a TraceConfig file is recognized and where a textproto goes wrong; one
rule for the record CLI, consumer scripts and topology files alike."""

from __future__ import annotations

from google.protobuf import text_format
from google.protobuf.message import Message
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

TEXT_SUFFIXES = (".pbtxt", ".txt", ".textproto", ".cfg")  # a textproto; else binary


class TextprotoError(ValueError):
    """The first problem in a TraceConfig textproto: where (1-based; None when the
    parser cannot say) and what, without protobuf's own location prefix."""

    def __init__(self, line: int | None, column: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message


def parse_textproto(text: str) -> pb.TraceConfig:
    """A TraceConfig from its textproto; TextprotoError says where it goes wrong."""
    try:
        return text_format.Parse(text, pb.TraceConfig())
    except text_format.ParseError as e:
        raise TextprotoError(e.GetLine(), e.GetColumn(), str(e).split(" : ", 1)[-1]) from None


def textproto_error(text: str) -> tuple[int | None, int | None, str] | None:
    """(line, column, message) of the first problem in a TraceConfig textproto,
    or None if it parses."""
    try:
        parse_textproto(text)
    except TextprotoError as e:
        return e.line, e.column, e.message
    return None


def looks_like_textproto(data: bytes) -> bool:
    """Printable text that parses as a TraceConfig textproto: a file someone
    meant as text, whatever its name says."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    if not text.strip() or not all(c.isprintable() or c.isspace() for c in text):
        return False
    return textproto_error(text) is None


def first_non_text_string(message: Message, path: str = "") -> str | None:
    """The first string field of `message` (at any depth) that is not valid UTF-8,
    by its path, or None. Perfetto's schema is proto2, whose parser hands such a
    string over as bytes: the service refuses the config rather than meet bytes
    where it compares and reports names."""
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        values = value if field.is_repeated else [value]
        for item in values:
            if field.type == field.TYPE_STRING and not isinstance(item, str):
                return name
            if field.type == field.TYPE_MESSAGE:
                found = first_non_text_string(item, name)
                if found is not None:
                    return found
    return None
