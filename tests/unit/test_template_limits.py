"""Template resource limits (issue 21, HIGH 2): work, size and time are bounded in the sandbox.

Each bomb must fail with a template error, quickly: these run on (a thread of) the worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from streams.content.template_limits import Limits
from streams.content.templates import TemplateRenderError, preview, render_content
from streams.stages import render

LIMITS = Limits(max_output_chars=1_000_000, budget_seconds=1.0)
LOOP_30M = "{% for a in range(6000) %}{% for b in range(5000) %}{% endfor %}{% endfor %}"


def refused(source: str, limits: Limits = LIMITS, within: float = 1.0) -> str:
    """The error rendering `source` gives, checked to come within `within` seconds."""
    started = time.monotonic()
    with pytest.raises(TemplateRenderError) as caught:
        render_content({"text": source}, {"name": "Ada"}, limits)
    elapsed = time.monotonic() - started
    assert elapsed < within, f"{source!r} took {elapsed:.2f} s"
    return str(caught.value)


def test_nine_to_the_nine_to_the_nine_fails_within_a_second() -> None:
    # Python's 9**9**9 (right-associative): the old sandbox constant-folded it while compiling,
    # for ever. Jinja's own `9**9**9` is left-associative, (9**9)**9, 78 digits: still fine.
    assert "too large" in refused("{{ 9**(9**9) }}")
    assert len(render_content({"text": "{{ 9**9**9 }}"}, {}, LIMITS)["text"] or "") == 78


def test_seven_to_the_three_million_is_refused_at_once() -> None:
    assert "7 ** 3000000 is too large" in refused("{{ 7 ** 3000000 }}")
    assert "too large" in refused("{% set e = 3000000 %}{{ 7 ** e }}")  # at render time too


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 30000000 }}",
        "{{ 30000000 * 'x' }}",
        "{{ ([0] * 30000000)|length }}",
        "{% set n = 30000000 %}{{ ('x' * n)|length }}",
    ],
)
def test_repetition_over_the_cap_is_refused(source: str) -> None:
    assert "repeating a value 30000000 times" in refused(source)


def test_output_over_the_cap_fails() -> None:
    source = "{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}"  # 2,000,000 characters
    assert "over 1000000 characters" in refused(source)
    small = Limits(max_output_chars=1000, budget_seconds=1.0)
    assert "over 1000 characters" in refused("{{ 'x' * 600 }}{{ 'y' * 600 }}", small)
    # The cap is for all fields together.
    with pytest.raises(TemplateRenderError, match="over 1000 characters"):
        render_content({"subject": "{{ 'x' * 600 }}", "text": "{{ 'y' * 600 }}"}, {}, small)
    assert render_content({"text": "{{ 'x' * 1000 }}"}, {}, small)["text"] == "x" * 1000


def test_a_30_million_iteration_loop_is_stopped_within_the_budget() -> None:
    budget = Limits(max_output_chars=1_000_000, budget_seconds=0.3)
    assert "time budget of 0.3 s" in refused(LOOP_30M, budget, within=1.0)


def test_a_macro_recursion_bomb_stops_within_the_budget() -> None:
    bomb = "{% macro m(n) %}{% if n %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(40) }}"
    budget = Limits(max_output_chars=1_000_000, budget_seconds=0.3)
    assert "time budget" in refused(bomb, budget)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'|center(1000000000) }}",  # a literal: Jinja would call the filter while compiling
        "{{ 'x'.ljust(1000000000) }}",
        "{{ 'x'.zfill(1000000000) }}",
        "{{ '%1000000000d' % 1 }}",
        "{{ '%*d' % (1000000000, 1) }}",
        "{{ '%.1000000000f'|format(1.0) }}",
        "{{ '{:>1000000000}'.format(1) }}",
        "{{ '{:>{}}'.format(1, 1000000000) }}",
        "{{ lipsum(100000) }}",
        "{{ ('x' * 100000)|replace('', 'yyyyyyyyyyyyyyyyyyyy') }}",
        "{{ ('\\n' * 100000)|indent(100000) }}",
        "{{ [1]|batch(1000000000, 'x')|list }}",
        "{{ (1).to_bytes(1000000000, 'big') }}",
        "{{ range(30000000)|length }}",
    ],
)
def test_widths_and_counts_over_the_cap_are_refused(source: str) -> None:
    assert "TemplateLimitError" in refused(source)


@pytest.mark.parametrize(
    "step",
    ["ns.s ~ ns.s", "ns.s + ns.s", "[ns.s, ns.s]|join", "ns.s|replace('x', 'xx')"],
)
def test_growth_by_doubling_is_refused(step: str) -> None:
    source = (
        "{% set ns = namespace(s='x') %}"
        f"{{% for i in range(60) %}}{{% set ns.s = {step} %}}{{% endfor %}}{{{{ ns.s|length }}}}"
    )
    assert "TemplateLimitError" in refused(source)


def test_output_captured_in_a_variable_counts_too() -> None:
    captured = (
        "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa{% endfor %}{% endfor %}{% endset %}{{ x|length }}"
    )
    assert "while rendering" in refused(captured)
    assert "over the size limit" in refused("{{ [('x' * 1000000)] * 100000 }}")


def test_errors_a_template_raises_are_render_errors() -> None:
    assert "ZeroDivisionError" in refused("{{ 1 / 0 }}")
    assert "Exceeds the limit" in refused("{{ 10 ** 5000 }}")  # 5,001 digits cannot print


def test_ordinary_templates_render_as_before() -> None:
    source = (
        "Hi {{ name }} {% for i in range(3) %}{{ i }}{% endfor %} {{ '%05d' % 42 }} "
        "{{ 'a'|center(5) }} {{ 2 ** 10 }} {{ 'ab' * 2 }} {{ [1, 2]|join(',') }} "
        "{{ '{:>3}'.format('x') }} {{ 'a' ~ 'b' }} {{ ('x' * 1000)|length }} {{ 1 + 2 * 3 }}"
    )
    text = render_content({"text": source}, {"name": "Ada"}, LIMITS)["text"]
    assert text == "Hi Ada 012 00042   a   1024 abab 1,2   x ab 1000 7"
    html = render_content({"html": "<b>{{ name }}</b>"}, {"name": "<i>"}, LIMITS)["html"]
    assert html == "<b>&lt;i&gt;</b>"


def test_preview_reports_a_limit_as_its_error() -> None:
    template = {
        "version": 1,
        "default_locale": "en",
        "content": {"subject": None, "text": "{{ 'x' * 30000000 }}", "html": None},
        "variants": [],
        "variables": [],
    }
    result = preview(template, {}, locale=None, channel="email", tenant_default_locale=None)
    assert result.error is not None and "TemplateLimitError" in result.error


def notification(text: str) -> dict[str, Any]:
    return {
        "notification_id": "n-1",
        "tenant_id": "acme",
        "recipient": {"user_id": "ada"},
        "channel": "email",
        "locale": None,
        "template_id": None,
        "content": {"subject": "Hi", "text": text, "html": None},
        "data_json": json.dumps({}),
        "metadata": {},
    }


async def test_the_render_stage_renders_off_the_event_loop() -> None:
    """A template using its whole budget leaves the loop free: a 10 ms ticker keeps ticking."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(render.RenderError, match="time budget"):
            await render.render_off_loop(notification(LOOP_30M))
    finally:
        running.cancel()
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert ticks >= elapsed / 0.01 / 4, (ticks, elapsed)  # the loop ran (GIL shared)
    done = await render.render_off_loop(notification("Hello"))
    assert done["rendered"]["text"] == "Hello"
