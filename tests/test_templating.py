"""sidecar.core.templating: one table per position (path, query, headers, body), then properties."""

from __future__ import annotations

import json
import math
import string
import urllib.parse
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sidecar.core.templating as templating
from sidecar.core.model import Connector, Reason
from sidecar.core.model.exchange import OutboundRequest
from sidecar.core.model.failures import RenderError
from sidecar.core.templating import compile_request
from sidecar.core.values import normalise_numbers, scalar_text

ORIGIN = "https://api.example.com:8443"


def make_connector(url: str = f"{ORIGIN}/orders/{{{{id}}}}", **fields: Any) -> Connector:
    return Connector.model_validate({"id": "c", "status": "LIVE", "url_template": url, **fields})


def render(
    variables: dict[str, Any], url: str = f"{ORIGIN}/orders/{{{{id}}}}", **fields: Any
) -> OutboundRequest:
    return compile_request(make_connector(url, **fields)).render(variables)


def render_error(variables: dict[str, Any], url: str = f"{ORIGIN}/x", **fields: Any) -> RenderError:
    with pytest.raises(RenderError) as caught:
        render(variables, url, **fields)
    return caught.value


def body_of(variables: dict[str, Any], body_template: Any) -> Any:
    body = render(variables, f"{ORIGIN}/x", method="POST", body_template=body_template).body
    assert body is not None
    return json.loads(body)


# ---------------------------------------------------------------------------------------------
# Compiling once
# ---------------------------------------------------------------------------------------------


def test_render_never_parses_a_template_again(monkeypatch: pytest.MonkeyPatch) -> None:
    template = compile_request(
        make_connector(
            query={"q": "a {{q}}"}, headers={"X-Q": "{{q}}"}, method="POST", body_template="{{q}}"
        )
    )

    def forbidden(text: str) -> Any:
        raise AssertionError(f"parse_template called at render time on {text!r}")

    monkeypatch.setattr(templating, "parse_template", forbidden)
    assert template.render({"id": 1.0, "q": "x"}).url == f"{ORIGIN}/orders/1?q=a%20x"


def test_every_dotted_name_in_every_position_is_required_at_render() -> None:
    template = compile_request(
        make_connector(
            f"{ORIGIN}/a/{{{{path_var}}}}",
            query={"q": "{{query.var}}"},
            headers={"X-H": "pre {{header_var}}"},
            method="POST",
            body_template={"k": ["{{body.whole}}", "x {{body.text}}"], "n": 1},
        )
    )
    complete = {
        "path_var": "p",
        "query": {"var": "q"},
        "header_var": "h",
        "body": {"whole": "w", "text": "t"},
    }
    dotted = ("path_var", "query.var", "header_var", "body.whole", "body.text")
    named = []
    for name in dotted:
        variables = json.loads(json.dumps(complete))
        *parents, leaf = name.split(".")
        holder = variables
        for parent in parents:
            holder = holder[parent]
        del holder[leaf]
        with pytest.raises(RenderError) as missing:
            template.render(variables)
        named.append((missing.value.reason, missing.value.variable))

    assert template.render(complete).url == f"{ORIGIN}/a/p?q=q"
    assert named == [(Reason.MISSING_VARIABLE, name) for name in dotted]


def test_method_is_the_connectors_method() -> None:
    assert render({"id": "1"}, method="DELETE").method == "DELETE"


def test_render_returns_the_same_request_for_the_same_variables() -> None:
    template = compile_request(
        make_connector(
            query={"b": "{{id}}", "a": "{{id}}"},
            headers={"X-B": "{{id}}", "x-a": "1"},
            method="POST",
            body_template={"z": "{{id}}", "a": ["{{id}}"]},
        )
    )
    assert template.render({"id": 7.0}) == template.render({"id": 7.0})


def test_connectors_differing_only_in_declaration_order_render_identically() -> None:
    first = render(
        {"id": "1"}, query={"b": "2", "a": "1"}, headers={"X-B": "2", "x-a": "1", "Accept": "*/*"}
    )
    second = render(
        {"id": "1"}, query={"a": "1", "b": "2"}, headers={"Accept": "*/*", "x-a": "1", "X-B": "2"}
    )
    assert first == second


# ---------------------------------------------------------------------------------------------
# Variable lookup
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345.0, "12345"),
        (2.5, "2.5"),
        (-3.0, "-3"),
        (0.0, "0"),
        (7, "7"),
        (True, "true"),
        (False, "false"),
        ("A-17", "A-17"),
    ],
)
def test_scalars_render_as_canonical_text_in_path_query_and_header(
    value: Any, expected: str
) -> None:
    request = render({"id": value}, query={"q": "{{id}}"}, headers={"X-Id": "{{id}}"})
    assert request.url == f"{ORIGIN}/orders/{expected}?q={expected}"
    assert ("X-Id", expected) in request.headers


def test_nested_variable_is_found_in_every_position() -> None:
    variables = {"customer": {"email": "jane@example.com", "id": 42.0}}
    request = render(
        variables,
        f"{ORIGIN}/customers/{{{{customer.id}}}}",
        query={"email": "{{customer.email}}"},
        headers={"X-Email": "{{ customer.email }}"},
        method="POST",
        body_template={"email": "{{customer.email}}", "id": "{{customer.id}}"},
    )
    assert request.url == f"{ORIGIN}/customers/42?email=jane%40example.com"
    assert ("X-Email", "jane@example.com") in request.headers
    assert request.body == b'{"email":"jane@example.com","id":42}'


@pytest.mark.parametrize(
    ("fields", "url", "position"),
    [
        ({}, f"{ORIGIN}/customers/{{{{customer.email}}}}", "url path"),
        ({"query": {"email": "{{customer.email}}"}}, f"{ORIGIN}/x", "query 'email'"),
        ({"headers": {"X-Email": "<{{customer.email}}>"}}, f"{ORIGIN}/x", "header 'X-Email'"),
        ({"body_template": "{{customer.email}}"}, f"{ORIGIN}/x", "body"),
        ({"body_template": {"to": ["{{customer.email}}"]}}, f"{ORIGIN}/x", "body at /to/0"),
        ({"body_template": {"a/b": "x {{customer.email}}"}}, f"{ORIGIN}/x", "body at /a~1b"),
    ],
)
@pytest.mark.parametrize("customer", [{}, {"customer": {"name": "Jane"}}, {"customer": "Jane"}])
def test_missing_variable_names_the_dotted_name_and_position(
    fields: dict[str, Any], url: str, position: str, customer: dict[str, Any]
) -> None:
    error = render_error(customer, url, **fields)
    assert error.reason is Reason.MISSING_VARIABLE
    assert error.variable == "customer.email"
    assert error.position == position
    assert "'customer.email'" in str(error)
    assert position in str(error)


def test_present_null_is_not_missing() -> None:
    assert body_of({"x": None}, {"x": "{{x}}"}) == {"x": None}


def test_an_error_anywhere_produces_no_request_at_all() -> None:
    # Path, query and headers all render; only the body's variable is missing.
    error = render_error(
        {"id": "1"},
        f"{ORIGIN}/orders/{{{{id}}}}",
        query={"q": "{{id}}"},
        headers={"X-Id": "{{id}}"},
        method="POST",
        body_template={"ok": "{{id}}", "late": "{{absent}}"},
    )
    assert error.variable == "absent"


PERSONAL = "jane.doe@example.com 123-45-6789"


@pytest.mark.parametrize(
    ("url", "fields", "variables"),
    [
        (f"{ORIGIN}/{{{{v}}}}", {}, {"v": {"ssn": PERSONAL}}),
        (f"{ORIGIN}/{{{{v}}}}", {}, {"v": [PERSONAL]}),
        (f"{ORIGIN}/x", {"query": {"q": "{{v}}"}}, {"v": {"ssn": PERSONAL}}),
        (f"{ORIGIN}/x", {"headers": {"X-V": "{{v}}"}}, {"v": PERSONAL + "\r\nX-Evil: 1"}),
        (f"{ORIGIN}/x", {"headers": {"X-V": "{{v}}"}}, {"v": PERSONAL + "\x00"}),
        (f"{ORIGIN}/x", {"headers": {"X-V": "{{v}}"}}, {"v": PERSONAL + " é"}),
        (f"{ORIGIN}/x", {"body_template": "{{v}}"}, {"v": [PERSONAL, math.nan]}),
        (f"{ORIGIN}/x", {"body_template": "a {{v}}"}, {"v": {PERSONAL: math.inf}}),
    ],
)
def test_error_message_never_contains_the_value(
    url: str, fields: dict[str, Any], variables: dict[str, Any]
) -> None:
    error = render_error(variables, url, **fields)
    assert error.reason is Reason.INVALID_VARIABLE
    assert error.variable == "v"
    for fragment in ("jane", "123-45", "Evil"):
        assert fragment not in str(error)
        assert fragment not in repr(error.args)


# ---------------------------------------------------------------------------------------------
# URL path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("a/b", "a%2Fb"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("100%", "100%25"),
        ("%2F", "%252F"),
        ("a b", "a%20b"),
        ("a+b", "a%2Bb"),
        ("a&b=c;d", "a%26b%3Dc%3Bd"),
        ("café", "caf%C3%A9"),
        ("😀", "%F0%9F%98%80"),
        ("~a_b-c.d", "~a_b-c.d"),
        ("...", "..."),
        ("./..", ".%2F.."),
        ("\r\n\x00", "%0D%0A%00"),
        ("{{id}}", "%7B%7Bid%7D%7D"),
    ],
)
def test_path_value_is_encoded_as_one_segment(value: str, segment: str) -> None:
    request = render({"id": value}, f"{ORIGIN}/orders/{{{{id}}}}/items")
    assert request.url == f"{ORIGIN}/orders/{segment}/items"
    assert unquote(urlsplit(request.url).path.split("/")[2]) == value


@pytest.mark.parametrize(
    ("url", "variables", "blamed"),
    [
        (f"{ORIGIN}/orders/{{{{a}}}}", {"a": "."}, "a"),
        (f"{ORIGIN}/orders/{{{{a}}}}/items", {"a": ".."}, "a"),
        (f"{ORIGIN}/orders/v{{{{a}}}}", {"a": ".."}, "a"),
        (f"{ORIGIN}/orders/.{{{{a}}}}", {"a": ""}, "a"),
        (f"{ORIGIN}/orders/{{{{a}}}}.{{{{b}}}}", {"a": "", "b": ""}, "a"),
        (f"{ORIGIN}/orders/%2E{{{{a}}}}", {"a": ""}, "a"),
    ],
)
def test_dot_segments_are_refused(url: str, variables: dict[str, Any], blamed: str) -> None:
    error = render_error(variables, url)
    assert error.reason is Reason.INVALID_VARIABLE
    assert error.variable == blamed
    assert error.position == "url path"


@pytest.mark.parametrize(
    ("url", "value", "expected"),
    [
        (f"{ORIGIN}/orders/{{{{id}}}}", "", None),
        (f"{ORIGIN}/orders/{{{{id}}}}/items", "", None),
        (f"{ORIGIN}/orders/x{{{{id}}}}", "", f"{ORIGIN}/orders/x"),
        (f"{ORIGIN}/orders/{{{{id}}}}.json", "", f"{ORIGIN}/orders/.json"),
    ],
)
def test_empty_path_value_is_refused_only_when_it_empties_the_segment(
    url: str, value: str, expected: str | None
) -> None:
    if expected is None:
        assert render_error({"id": value}, url).reason is Reason.INVALID_VARIABLE
    else:
        assert render({"id": value}, url).url == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "null"), ([], "a list"), (["a"], "a list"), ({}, "an object"), ({"a": 1}, "an object")],
)
@pytest.mark.parametrize(
    ("url", "fields"),
    [
        (f"{ORIGIN}/orders/{{{{id}}}}", {}),
        (f"{ORIGIN}/x", {"query": {"q": "{{id}}"}}),
        (f"{ORIGIN}/x", {"headers": {"X-Id": "{{id}}"}}),
    ],
)
def test_only_scalars_go_in_path_query_and_headers(
    value: Any, kind: str, url: str, fields: dict[str, Any]
) -> None:
    error = render_error({"id": value}, url, **fields)
    assert error.reason is Reason.INVALID_VARIABLE
    assert f"is {kind};" in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/a%20b/caf%C3%A9/{{id}}",
        "https://api.example.com/v1;matrix=1/~user/{{id}}/",
        "http://API.Example.com:80/{{id}}",
        "https://api.example.com/a//{{id}}?fixed=1%202&flag",
    ],
)
def test_literal_url_text_is_kept_as_written(url: str) -> None:
    assert render({"id": "7"}, url).url == url.replace("{{id}}", "7")


def test_url_without_path_gets_only_the_query() -> None:
    assert render({"v": "1"}, "https://api.example.com", query={"v": "{{v}}"}).url == (
        "https://api.example.com?v=1"
    )


# ---------------------------------------------------------------------------------------------
# Query
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a b", "a%20b"),
        ("a+b", "a%2Bb"),
        ("a&b=c", "a%26b%3Dc"),
        ("#frag", "%23frag"),
        ("100%", "100%25"),
        ("a/b?", "a%2Fb%3F"),
        ("é😀", "%C3%A9%F0%9F%98%80"),
        ("", ""),
        ("{{q}}", "%7B%7Bq%7D%7D"),
    ],
)
def test_query_value_is_percent_encoded_with_space_as_20(value: str, encoded: str) -> None:
    request = render({"q": value}, f"{ORIGIN}/x", query={"q": "{{q}}"})
    assert request.url == f"{ORIGIN}/x?q={encoded}"


def test_query_keeps_the_templates_own_query_then_adds_parameters_sorted_by_name() -> None:
    request = render(
        {"a": "1", "b": "2"},
        f"{ORIGIN}/x?lang=en&v=2",
        query={"zeta": "{{b}}", "alpha": "{{a}}", "Mid": "m"},
    )
    assert request.url == f"{ORIGIN}/x?lang=en&v=2&Mid=m&alpha=1&zeta=2"


def test_query_names_and_literal_text_are_encoded() -> None:
    request = render({"v": "1"}, f"{ORIGIN}/x", query={"a b&c": "x y {{v}}/z"})
    assert request.url == f"{ORIGIN}/x?a%20b%26c=x%20y%201%2Fz"


def test_url_without_query_has_no_question_mark() -> None:
    assert "?" not in render({"id": "1"}).url


# ---------------------------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("a\rb", "control"),
        ("a\nb", "control"),
        ("a\r\nX-Injected: 1", "control"),
        ("a\x00b", "control"),
        ("a\x1bb", "control"),
        ("a\x0bb", "control"),
        ("a\x7fb", "control"),
        ("café", "non-ASCII"),
        ("a\x85b", "non-ASCII"),
        ("😀", "non-ASCII"),
    ],
)
def test_header_value_with_control_or_non_ascii_character_is_refused(value: str, what: str) -> None:
    error = render_error({"v": value}, headers={"X-V": "{{v}}"})
    assert error.reason is Reason.INVALID_VARIABLE
    assert error.position == "header 'X-V'"
    assert what in str(error)


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        ("{{v}}", "a\tb c", "a\tb c"),
        ("{{v}}", "  padded \t", "padded"),
        ("Bearer-ish {{v}}", " x ", "Bearer-ish  x"),
        ("{{v}}", "", ""),
        ("{{v}}", "{{other}}", "{{other}}"),
    ],
)
def test_header_value_keeps_inner_whitespace_and_strips_the_ends(
    template: str, value: str, expected: str
) -> None:
    request = render({"v": value, "other": "nope"}, f"{ORIGIN}/x", headers={"X-V": template})
    assert request.headers == (("X-V", expected),)


def test_headers_are_sorted_by_lower_cased_name_keeping_their_case() -> None:
    request = render(
        {"id": "1"}, headers={"x-b": "2", "X-C": "3", "Accept": "*/*", "X-A": "{{id}}"}
    )
    assert request.headers == (("Accept", "*/*"), ("X-A", "1"), ("x-b", "2"), ("X-C", "3"))


@pytest.mark.parametrize(
    ("headers", "body_template", "expected"),
    [
        ({}, {"a": 1}, (("Content-Type", "application/json"),)),
        ({}, "{{id}}", (("Content-Type", "application/json"),)),
        ({}, None, ()),
        (
            {"content-type": "application/vnd.api+json"},
            {},
            (("content-type", "application/vnd.api+json"),),
        ),
        (
            {"Zed": "z", "Accept": "a"},
            [],
            (("Accept", "a"), ("Content-Type", "application/json"), ("Zed", "z")),
        ),
    ],
)
def test_content_type_json_is_added_only_when_a_body_has_none(
    headers: dict[str, str], body_template: Any, expected: tuple[tuple[str, str], ...]
) -> None:
    request = render({"id": "1"}, headers=headers, method="POST", body_template=body_template)
    assert request.headers == expected


# ---------------------------------------------------------------------------------------------
# JSON body
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345.0, 12345),
        (2.5, 2.5),
        (True, True),
        (False, False),
        (None, None),
        ("text", "text"),
        ("", ""),
        ({"n": 1.0, "deep": {"m": [2.0, 2.5]}}, {"n": 1, "deep": {"m": [2, 2.5]}}),
        ([1.0, "a", None, [True]], [1, "a", None, [True]]),
        ({}, {}),
    ],
)
@pytest.mark.parametrize("template", ["{{v}}", "{{ v }}", "{{\tv  }}"])
def test_whole_placeholder_keeps_the_json_type(value: Any, expected: Any, template: str) -> None:
    assert body_of({"v": value}, {"field": template}) == {"field": expected}


def test_whole_placeholder_number_is_serialised_without_fraction() -> None:
    body = render({"n": 12345.0}, f"{ORIGIN}/x", method="POST", body_template="{{n}}").body
    assert body == b"12345"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345.0, "id-12345!"),
        (2.5, "id-2.5!"),
        (True, "id-true!"),
        (None, "id-null!"),
        ("x", "id-x!"),
        ({"a": 1.0, "b": [True, None]}, 'id-{"a":1,"b":[true,null]}!'),
        ([1.0, "é"], 'id-[1,"é"]!'),
    ],
)
def test_placeholder_inside_text_is_replaced_by_the_values_text(value: Any, expected: str) -> None:
    assert body_of({"v": value}, {"s": "id-{{v}}!"}) == {"s": expected}


def test_whitespace_outside_the_braces_makes_it_text_not_a_typed_value() -> None:
    assert body_of({"v": 5.0}, {"s": " {{v}} "}) == {"s": " 5 "}


@pytest.mark.parametrize(
    "template",
    [{"a": "{{v}}"}, {"a": "pre {{v}}"}, ["{{v}}"]],
)
def test_substitution_is_single_pass_in_the_body(template: Any) -> None:
    body = render(
        {"v": "{{secret}}", "secret": "LEAKED"},
        f"{ORIGIN}/x",
        method="POST",
        body_template=template,
    ).body
    assert body is not None
    assert b"LEAKED" not in body
    assert b"{{secret}}" in body


def test_substitution_is_single_pass_in_path_query_and_headers() -> None:
    request = render(
        {"id": "{{secret}}", "secret": "LEAKED"},
        query={"q": "{{id}}"},
        headers={"X-Id": "{{id}}"},
    )
    assert "LEAKED" not in request.url
    assert ("X-Id", "{{secret}}") in request.headers


def test_object_keys_are_never_templated() -> None:
    assert body_of({"k": "key", "v": 1.0}, {"{{k}}": "{{v}}"}) == {"{{k}}": 1}


def test_body_literals_are_kept_and_integral_numbers_normalised() -> None:
    template = {"n": 1.0, "f": 1.5, "s": "plain", "t": True, "z": None, "l": [2.0, {"x": "y"}]}
    body = render({}, f"{ORIGIN}/x", method="POST", body_template=template).body
    assert body == b'{"n":1,"f":1.5,"s":"plain","t":true,"z":null,"l":[2,{"x":"y"}]}'


def test_body_is_compact_utf8_json() -> None:
    body = render({"v": "café 😀"}, f"{ORIGIN}/x", method="POST", body_template={"a": "{{v}}"}).body
    assert body == '{"a":"café 😀"}'.encode()


def test_body_is_json_escaped_not_concatenated() -> None:
    value = '"}, "admin": true, "x": {"'
    assert body_of({"v": value}, {"name": "{{v}}", "note": "n: {{v}}"}) == {
        "name": value,
        "note": f"n: {value}",
    }


def test_connector_without_body_template_sends_no_body() -> None:
    assert render({"id": "1"}).body is None


# ---------------------------------------------------------------------------------------------
# Values that are not JSON
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        10**400,
        "bad \ud800 surrogate",
        b"bytes",
        object(),
        {1: "non-text key"},
        [math.nan],
        {"deep": [[[math.inf]]]},
    ],
    ids=repr,
)
@pytest.mark.parametrize(
    ("url", "fields"),
    [
        (f"{ORIGIN}/{{{{v}}}}", {}),
        (f"{ORIGIN}/x", {"query": {"q": "{{v}}"}}),
        (f"{ORIGIN}/x", {"headers": {"X-V": "{{v}}"}}),
        (f"{ORIGIN}/x", {"method": "POST", "body_template": "{{v}}"}),
        (f"{ORIGIN}/x", {"method": "POST", "body_template": ["a {{v}}"]}),
    ],
)
def test_values_that_are_not_json_are_invalid_everywhere(
    value: Any, url: str, fields: dict[str, Any]
) -> None:
    assert render_error({"v": value}, url, **fields).reason is Reason.INVALID_VARIABLE


def test_values_nested_deeper_than_protobuf_allows_are_invalid() -> None:
    value: Any = "leaf"
    for _ in range(200):
        value = [value]
    error = render_error({"v": value}, method="POST", body_template="{{v}}")
    assert error.reason is Reason.INVALID_VARIABLE
    assert "nested" in str(error)


def test_large_but_representable_integers_are_sent() -> None:
    assert body_of({"v": 2**70}, "{{v}}") == 2**70


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

TRICKY = ["/", "?", "#", "%", ".", "..", "\r\n", "\x00", "\x7f", "😀", "é", " ", "{{a}}", "&", "="]
texts = st.lists(st.sampled_from(TRICKY) | st.characters(codec="utf-8"), max_size=8).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1)
scalars = st.booleans() | st.floats() | st.integers() | texts
not_json = st.binary() | st.sets(st.integers()) | surrogates | st.builds(object)
any_values = st.one_of(scalars, json_values, not_json)
variable_maps = st.fixed_dictionaries(
    {"v": any_values, "n": st.fixed_dictionaries({"v": any_values})}
) | st.dictionaries(st.sampled_from(["v", "n"]), any_values)
ONE_POSITION_TEMPLATES = {  # one position each, so every check is reached
    "url path": compile_request(make_connector(f"{ORIGIN}/x/{{{{v}}}}/y{{{{n.v}}}}")),
    "query": compile_request(make_connector(f"{ORIGIN}/x", query={"q": "{{v}}", "r": "{{n.v}}"})),
    "header": compile_request(
        make_connector(f"{ORIGIN}/x", headers={"X-V": "{{v}}", "X-N": " {{n.v}}"})
    ),
    "body": compile_request(
        make_connector(f"{ORIGIN}/x", method="POST", body_template=["{{v}}", "t {{n.v}}"])
    ),
}

# Values every position accepts: header-safe text (printable ASCII and TAB), finite numbers, bools.
header_safe = st.text(
    st.sampled_from(string.printable.translate({10: None, 11: None, 12: None, 13: None}))
)
placeable = (
    st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**64), 2**64)
    | header_safe.filter(lambda text: text not in ("", ".", ".."))
)
placeable_maps = st.fixed_dictionaries(
    {
        "a": placeable,
        "b": placeable,
        "c": placeable | texts.filter(lambda text: text not in ("", ".", "..")),
        "n": st.fixed_dictionaries({"d": placeable}),
    },
    optional={"d": any_values},  # only ever in an object key, which is never templated
)

PROPERTY_TEMPLATE = compile_request(
    make_connector(
        f"{ORIGIN}/v1/{{{{a}}}}/items/x{{{{b}}}}/{{{{c}}}}.json/{{{{n.d}}}}?fixed=1",
        query={"q": "{{a}}", "r": "pre {{b}} post"},
        headers={"X-A": "{{a}}", "X-B": " {{b}} ", "X-D": "{{n.d}}"},
        method="POST",
        body_template={"a": "{{a}}", "b": ["{{b}}", "t {{c}}"], "{{d}}": {"n": "{{n.d}}"}},
    )
)


def outcome(call: Callable[[], OutboundRequest]) -> OutboundRequest | RenderError:
    """The request, or the RenderError; any other exception fails the test."""
    try:
        return call()
    except RenderError as error:
        return error


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@pytest.mark.parametrize("position", ONE_POSITION_TEMPLATES)
@settings(max_examples=200)
@given(variables=variable_maps)
def test_render_raises_nothing_but_render_error_whatever_the_variables(
    position: str, variables: dict[str, Any]
) -> None:
    template = ONE_POSITION_TEMPLATES[position]
    result = outcome(lambda: template.render(variables))
    if isinstance(result, RenderError):
        assert result.reason in (Reason.MISSING_VARIABLE, Reason.INVALID_VARIABLE)
        assert result.variable in ("v", "n.v")  # the names every ONE_POSITION template uses
        assert result.position.startswith(position)
    else:
        assert urlsplit(result.url).path.count("/") == (3 if position == "url path" else 1)
        assert all(c == "\t" or " " <= c <= "~" for _, value in result.headers for c in value)
        if result.body is not None:
            json.loads(result.body, parse_constant=_refuse_constant)


@settings(max_examples=300)
@given(variables=placeable_maps)
def test_placeable_variables_render_a_well_formed_request(variables: dict[str, Any]) -> None:
    request = PROPERTY_TEMPLATE.render(variables)
    url = urlsplit(request.url)
    assert (url.scheme, url.hostname, url.port) == ("https", "api.example.com", 8443)
    segments = url.path.split("/")
    assert len(segments) == 7
    assert unquote(segments[2]) == scalar_text(variables["a"])
    assert unquote(segments[4]) == "x" + str(scalar_text(variables["b"]))
    assert url.fragment == ""
    assert [part.split("=")[0] for part in url.query.split("&")] == ["fixed", "q", "r"]
    assert [name for name, _ in request.headers] == ["Content-Type", "X-A", "X-B", "X-D"]
    for _, value in request.headers:
        assert all(char == "\t" or " " <= char <= "~" for char in value)
        assert value == value.strip(" \t")
    assert dict(request.headers)["X-A"] == str(scalar_text(variables["a"])).strip(" \t")
    assert request.body is not None
    body = json.loads(request.body, parse_constant=_refuse_constant)
    assert body["a"] == normalise_numbers(variables["a"])
    assert body["{{d}}"] == {"n": normalise_numbers(variables["n"]["d"])}


@given(value=texts.filter(lambda text: text not in ("", ".", "..")))
def test_any_text_round_trips_through_one_path_segment_and_query_value(value: str) -> None:
    request = render({"id": value}, f"{ORIGIN}/orders/{{{{id}}}}/items", query={"q": "{{id}}"})
    url = urlsplit(request.url)
    segments = url.path.split("/")
    assert len(segments) == 4
    assert unquote(segments[2]) == value
    assert url.query.startswith("q=")
    assert unquote(url.query[2:]) == value


@given(value=json_values)
def test_any_json_value_round_trips_through_a_whole_placeholder(value: Any) -> None:
    request = outcome(
        lambda: render({"v": value}, f"{ORIGIN}/x", method="POST", body_template="{{v}}")
    )
    if isinstance(request, RenderError):
        assert request.reason is Reason.INVALID_VARIABLE
        assert "finite" in str(request) or "large" in str(request)
        return
    assert request.body is not None
    assert json.loads(request.body) == json.loads(json.dumps(value))


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=12) | st.text(alphabet=string.ascii_letters + "0123456789_.~-/%"))
def test_a_value_is_encoded_as_quote_encodes_it(text: str) -> None:
    # The unreserved fast path must never differ from quote(text, safe="").
    assert templating._encoded(text) == urllib.parse.quote(text, safe="")
