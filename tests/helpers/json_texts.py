"""JSON texts of readings written by hand, not by orjson.dumps, to hit the edges of the
compact shape Pulse's own producers write (no whitespace, the four members device, metric,
value and ts once each, name strings, float numbers), which the batch path reads without
orjson: member order, repeats, extra members, whitespace, escapes and every number form."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

EDGE_NUMBERS = [
    "1e400", "-1e400", "1e-400", "-0.0", "0.1e1", "00.5", "1.", ".5", "1e", "+1.0", "1E+2",
    "Infinity", "NaN", "1.5x", "9007199254740993.0", "2.2250738585072011e-308",
    "1795315444.2500000000000000001", "4000000000.0000005", "1." + "0" * 70 + "1",
]  # fmt: skip
"""Number texts at the edges of JSON's grammar and of the scan's exact fast path."""
NAMES = ['"dev-1"', '"temperature"', '"dev-2"', '"t"']
"""Name texts as producers write them."""
EDGE_NAMES = ['"dev\\u002d1"', '"dev-1 "', '""', '"dév"', "null", "7", '"a\\"b"']
"""Name texts that are escaped, not names, or not strings."""
OTHER_MEMBERS = ["tags", "other", "dev\\u0069ce"]
"""Member names beyond the compact shape's four (an escaped "device" among them)."""
OTHER_VALUES = ["{}", "1"]

number_texts = st.one_of(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.floats(allow_nan=False).map(repr),
    st.floats(min_value=1e9, max_value=4e9).map(repr),  # event times in seconds
    st.sampled_from(EDGE_NUMBERS),
)
name_texts = st.one_of(st.sampled_from(NAMES), st.sampled_from(EDGE_NAMES))
member_texts = st.one_of(
    st.tuples(st.just("device"), name_texts),
    st.tuples(st.just("metric"), name_texts),
    st.tuples(st.just("value"), number_texts),
    st.tuples(st.just("ts"), number_texts),
    st.tuples(st.sampled_from(OTHER_MEMBERS), st.sampled_from(OTHER_VALUES)),
)
COMMON_MEMBERS = [("device", '"dev-1"'), ("metric", '"temperature"'), ("value", "21.5")]
SEPARATORS = [",", ", ", ",\n"]
"""Between members: the compact one and whitespace."""
COLONS = [":", ": "]
AROUND = [("{", "}"), (" {", "}"), ("{", "} "), ("{", "}}")]
"""The object's braces: compact, with whitespace around, or with text after it."""


@st.composite
def hand_written_json(draw: Any) -> bytes:
    """The value of a record: a JSON object (or nearly one) of generated member texts."""
    members = draw(
        st.one_of(
            # the four members in any order, with number texts of every form
            st.tuples(number_texts, number_texts, st.randoms(use_true_random=False)).map(
                lambda x: x[2].sample([*COMMON_MEMBERS[:2], ("value", x[0]), ("ts", x[1])], 4)
            ),
            st.lists(member_texts, max_size=6),
        )
    )
    separator = draw(st.sampled_from([",", ",", *SEPARATORS]))
    colon = draw(st.sampled_from([":", ":", *COLONS]))
    around = draw(st.sampled_from([("{", "}"), *AROUND]))
    text = separator.join(f'"{name}"{colon}{text}' for name, text in members)
    return (around[0] + text + around[1]).encode()
