"""Rendered (email-style) HTML reduced to the subset Telegram's HTML parse mode accepts.

Telegram rejects the whole message ("can't parse entities") on any tag outside its list,
such as <p> or <div>, and on unbalanced tags. So: keep the tags it supports (links only
with a safe scheme), turn block ends and <br> into line breaks, drop every other tag but
keep its text, drop <script>/<style> content, escape all text, and close what is left open.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

KEPT_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a"}
    | {"blockquote", "tg-spoiler"}
)
LINE_BREAK_AFTER = frozenset(
    {"p", "div", "li", "tr", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6"}
)
DROPPED_WITH_CONTENT = frozenset({"script", "style", "head", "title"})
LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")


def telegram_html(source: str) -> str:
    parser = _Reducer()
    parser.feed(source)
    parser.close()
    return parser.result()


def visible_length(telegram_markup: str) -> int:
    """Characters Telegram counts against its limit: the text after entity parsing."""
    return len(html.unescape(re.sub(r"<[^>]*>", "", telegram_markup)))


class _Reducer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._open: list[str] = []
        self._dropping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROPPED_WITH_CONTENT:
            self._dropping += 1
        elif tag == "br":
            self._out.append("\n")
        elif tag == "li":
            self._out.append("• ")
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            if href.startswith(LINK_SCHEMES):  # other links keep their text, lose the link
                self._out.append(f'<a href="{html.escape(href)}">')
                self._open.append(tag)
        elif tag in KEPT_TAGS:
            self._out.append(f"<{tag}>")
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in DROPPED_WITH_CONTENT:
            self._dropping = max(0, self._dropping - 1)
        elif tag in self._open:
            # Close everything opened inside it too, so the output stays balanced.
            while self._open:
                closed = self._open.pop()
                self._out.append(f"</{closed}>")
                if closed == tag:
                    break
        elif tag in LINE_BREAK_AFTER:
            self._out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._dropping:
            return
        if "pre" not in self._open:
            data = re.sub(r"\s+", " ", data)  # HTML collapses whitespace; <pre> keeps it
        self._out.append(html.escape(data, quote=False))

    def result(self) -> str:
        self._out.extend(f"</{tag}>" for tag in reversed(self._open))
        self._open.clear()
        text = "".join(self._out)
        text = re.sub(r" *\n *", "\n", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip()
