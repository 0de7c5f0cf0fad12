"""The `{{name}}` placeholder grammar: what parses, into what parts, and what is refused."""

from __future__ import annotations

import re

import pytest

from sidecar.core.placeholders import (
    Literal,
    Placeholder,
    TemplateSyntaxError,
    has_placeholder,
    parse_template,
    parse_variable_path,
)


@pytest.mark.parametrize(
    ("template", "parts"),
    [
        ("", ()),
        ("plain text", (Literal("plain text"),)),
        ("{{order_number}}", (Placeholder(("order_number",)),)),
        ("{{ order_number }}", (Placeholder(("order_number",)),)),
        ("{{\torder_number\n}}", (Placeholder(("order_number",)),)),
        ("{{customer.email}}", (Placeholder(("customer", "email")),)),
        ("{{ a.b.c }}", (Placeholder(("a", "b", "c")),)),
        ("{{_private}}", (Placeholder(("_private",)),)),
        ("{{order-number}}", (Placeholder(("order-number",)),)),
        ("{{a1_B2}}", (Placeholder(("a1_B2",)),)),
        (
            "/orders/{{id}}/items/{{item.sku}}",
            (
                Literal("/orders/"),
                Placeholder(("id",)),
                Literal("/items/"),
                Placeholder(("item", "sku")),
            ),
        ),
        ("{{a}}{{b}}", (Placeholder(("a",)), Placeholder(("b",)))),
        ("x{{a}}", (Literal("x"), Placeholder(("a",)))),
        ("{{a}}x", (Placeholder(("a",)), Literal("x"))),
        ("{single} braces", (Literal("{single} braces"),)),
        ("{{{a}}}", (Literal("{"), Placeholder(("a",)), Literal("}"))),
    ],
)
def test_template_splits_into_literals_and_placeholders(template, parts):
    assert parse_template(template) == parts


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{}}", "invalid variable path"),
        ("{{ }}", "invalid variable path"),
        ("{{1abc}}", "invalid variable path '1abc'"),
        ("{{a b}}", "invalid variable path 'a b'"),
        ("{{a..b}}", "invalid variable path 'a..b'"),
        ("{{.a}}", "invalid variable path '.a'"),
        ("{{a.}}", "invalid variable path 'a.'"),
        ("{{a.1}}", "invalid variable path 'a.1'"),
        ("{{a$}}", "invalid variable path 'a$'"),
        ("{{\u00e9t\u00e9}}", "invalid variable path"),
        ("{{a", "unbalanced placeholder braces"),
        ("a}}", "unbalanced placeholder braces"),
        ("{{a}", "unbalanced placeholder braces"),
        ("{{a}}}}", "unbalanced placeholder braces"),
        ("{{{{a}}", "unbalanced placeholder braces"),
        ("/x/{{a}}/{{b", "unbalanced placeholder braces"),
    ],
)
def test_malformed_template_is_refused_with_a_reason(template, message):
    with pytest.raises(TemplateSyntaxError, match=re.escape(message)):
        parse_template(template)


def test_template_syntax_error_is_a_value_error_so_validators_can_report_it():
    assert issubclass(TemplateSyntaxError, ValueError)


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("location", ("location",)),
        ("customer.tier", ("customer", "tier")),
        ("a.b-c._d", ("a", "b-c", "_d")),
    ],
)
def test_variable_path_splits_on_dots(path, segments):
    assert parse_variable_path(path) == segments


@pytest.mark.parametrize("path", ["", " a", "a b", "a..b", "a.", "9lives", "a/b", "{{a}}"])
def test_invalid_variable_path_is_refused(path):
    with pytest.raises(TemplateSyntaxError, match="use identifiers joined by dots"):
        parse_variable_path(path)


def test_placeholder_name_is_the_dotted_path():
    assert Placeholder(("customer", "email")).name == "customer.email"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", False),
        ("{one}", False),
        ("{{a}}", True),
        ("{{", True),
        ("}}", True),
        ("x{{ broken", True),
    ],
)
def test_has_placeholder_detects_well_formed_and_broken_braces(text, expected):
    assert has_placeholder(text) is expected
