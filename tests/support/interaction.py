"""Random widget actions on a Streamlit AppTest, as a user takes them in the browser.

`random_session(data, at, steps)` draws, one after another, an action on whatever the page shows now
(which widgets exist depends on the earlier actions), performs it, reruns the page and checks that no
exception element appeared. Actions: every option of selectboxes, radios, select sliders and
multiselects; checkboxes and toggles; number inputs at, inside and past their bounds; junk in text
inputs; buttons (form submit buttons too); following a page link; a plain rerun (time passes: live
views redraw, queued runs start).

The one thing AppTest does not do that the browser does: for a widget with `bind="query-params"`, the
browser's widget manager writes the widget's new value into the URL (the value as sent over the
wire: for a selectbox, its *formatted label*), and the rerun the change triggers reads it back from
`st.query_params`; a value equal to the widget's default removes the parameter instead. AppTest
leaves the URL alone (widget -> URL writes never show in `at.query_params`). `mirror_url_write`
does what the frontend does (streamlit/static/.../useBasicWidgetState: `shouldClearUrlParam`,
`updateUrlParam`), so a page that cannot read its own widget's URL value fails here as it fails in
the browser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

# Text a user might type or paste: empty, spaces, separators, numbers past every range, markup, control
# characters, very long input; and arbitrary unicode on top.
JUNK_TEXT = [
    "",
    " ",
    ",",
    ", ,",
    "0",
    "-1",
    "1, 2, 3",
    "10, x",
    "1,,2",
    "1e309",
    "-0",
    "nan",
    "inf",
    "9" * 40,
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "\x00",
    "\n\t",
    "émoji 🧪",
    "x" * 2000,
]
JUNK_LINK = [
    "",
    "junk",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "%00",
    "x" * 300,
    "1e999",
    "NaN",
    "-1",
    "true",
    " ",
]
# Download buttons are left out: with on_click="ignore" they do not rerun, and their data is made only
# when the browser fetches it (the browser journeys check the files).
WIDGET_KINDS = (
    "selectbox",
    "multiselect",
    "radio",
    "select_slider",
    "checkbox",
    "toggle",
    "number_input",
    "text_input",
    "text_area",
    "button",
)


@dataclass
class Action:
    describe: str
    perform: Callable[[], None]


def _page_files(main_script: Path) -> dict[str, str]:
    """url path name -> script path relative to the main script, as Streamlit names pages/ files."""
    pages = sorted((main_script.parent / "pages").glob("*.py"))
    return {re.sub(r"^\d+_", "", p.stem): str(p.relative_to(main_script.parent)) for p in pages}


def interactive_widgets(at: AppTest) -> list:
    """The widgets on the page now that a user can act on (not disabled), in page order per kind."""
    found = []
    for kind in WIDGET_KINDS:
        found.extend(w for w in getattr(at, kind) if not getattr(w.proto, "disabled", False))
    return found


@dataclass(frozen=True)
class Draw:
    """The raw choices behind one action. Their shape never depends on the page: the pages change between
    sequences (runs start, end, get stopped), and Hypothesis requires the same choices to draw alike."""

    pick: int
    number: float
    text: str


def spread(pick: int) -> int:
    """`pick` scattered over 16 bits (the high half of Knuth's multiplicative hash). Hypothesis favours small
    and boundary integers; `pick % n` would then favour the first widgets and the first options."""
    return (pick * 2654435761 % 2**32) >> 16


DRAW = st.builds(
    Draw,
    st.integers(min_value=0, max_value=2**16 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=60),
)


def draw_link(data, candidates: dict[str, list[str]]) -> dict[str, str]:
    """Query parameters to open the page with: each present or not, any of its candidate values."""
    picks = data.draw(
        st.lists(st.integers(min_value=0, max_value=2**16 - 1), min_size=len(candidates), max_size=len(candidates)),
        label="link",
    )
    chosen = {}
    for (name, values), pick in zip(candidates.items(), picks):
        mixed = spread(pick)
        if mixed % 2:
            chosen[name] = values[(mixed >> 1) % len(values)]
    return chosen


def _number_value(w, d: Draw) -> int | float:
    """At a bound, one step past it, the current value, zero, extremes, or anywhere inside the bounds."""
    is_int = w.proto.data_type == w.proto.DataType.INT
    step = w.step or 1
    lo, hi = w.min, w.max
    edges = [
        w.value,
        0,
        1,
        -1,
        *([lo, lo - step, lo + step] if lo is not None else []),
        *([hi, hi + step, hi - step] if hi is not None else []),
    ]
    edges += [2**63, -(2**63)] if is_int else [1e308, -1e308, 1e-300, 5e-324, 65504.0, 65520.0, 1e-8]
    edges = [v for v in edges if v is not None and math.isfinite(v)]
    if d.pick % (len(edges) + 1) < len(edges):
        value = edges[d.pick % (len(edges) + 1)]
    elif lo is not None and hi is not None:
        value = lo + (hi - lo) * (abs(d.number) % 1.0)
    else:
        value = d.number if lo is None or d.number >= lo else lo + abs(d.number)
    return int(value) if is_int else float(value)


def value_for(w, d: Draw) -> Any:
    """What the user sets this widget to (None: the widget is a button, it is clicked)."""
    options = list(getattr(w, "options", []))
    if w.type in ("selectbox", "radio", "select_slider"):
        return options[d.pick % len(options)] if options else None
    if w.type == "multiselect":
        chosen = [o for i, o in enumerate(options) if d.pick >> (i % 24) & 1]
        return chosen[: w.proto.max_selections] if w.proto.max_selections else chosen
    if w.type in ("checkbox", "toggle"):
        return bool(d.pick % 2)
    if w.type == "number_input":
        return _number_value(w, d)
    if w.type in ("text_input", "text_area"):
        text = JUNK_TEXT[d.pick % len(JUNK_TEXT)] if d.pick % 3 else d.text  # two thirds the junk list, else any text
        return text[: w.proto.max_chars] if w.proto.max_chars else text
    assert w.type == "button", f"no value for a {w.type}"
    return None


def _frontend_default(w) -> Any:
    """The default the browser compares a bound widget's value with (its value on the wire)."""
    if w.type in ("selectbox", "radio"):
        return w.options[w.proto.default] if w.options else None
    if w.type == "multiselect":
        return [w.options[i] for i in w.proto.default]
    if w.type in ("checkbox", "toggle", "number_input"):
        return w.proto.default
    raise NotImplementedError(f"mirror_url_write does not know how the browser writes a bound {w.type} into the URL")


def js_string(value: Any) -> str:
    """JavaScript's String(value) for what a widget sends: the frontend writes numbers into the URL so.

    (1e-8 -> "1e-8", 16.0 -> "16", 1e21 -> "1e+21", True -> "true"; Python's str differs for all four.)
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    x = float(value)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x) or x == 0:
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(x, "0")
    if x < 0:
        return "-" + js_string(-x)
    # ECMAScript Number::toString: the shortest digits (Python's repr finds the same ones), k of them,
    # worth digits x 10^(n-k); plain notation for 1e-7 < x < 1e21, exponent notation outside.
    sign, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    d = "".join(map(str, digits))
    k, n = len(d), exponent + len(d)
    if k <= n <= 21:
        return d + "0" * (n - k)
    if 0 < n <= 21:
        return f"{d[:n]}.{d[n:]}"
    if -6 < n <= 0:
        return "0." + "0" * -n + d
    e = f"e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return d + e if k == 1 else f"{d[0]}.{d[1:]}{e}"


def _url_value(value: Any) -> str | list[str]:
    return [js_string(v) for v in value] if isinstance(value, list) else js_string(value)


def _frontend_accepts(w) -> bool:
    """The browser commits a number input only inside its bounds (else it shows "Number is outside the
    allowed range" and sends nothing): such a value is still sent here, to the server, but not to the URL."""
    if w.type != "number_input" or w.value is None:
        return True
    return (w.min is None or w.value >= w.min) and (w.max is None or w.value <= w.max)


def mirror_url_write(at: AppTest, w) -> None:
    """Write a bound widget's new value into the URL, or remove it at the default, as the browser does."""
    key = getattr(w.proto, "query_param_key", "")
    if not key or not _frontend_accepts(w):
        return
    ws = w._widget_state
    field = ws.WhichOneof("value")
    value = getattr(ws, field) if field else None
    if field and field.endswith("_array_value"):
        value = [v for v in value.data if v != ""]
    if value is None or value in ("", []) or _url_value(value) == _url_value(_frontend_default(w)):
        at.query_params.pop(key, None)
    else:
        at.query_params[key] = _url_value(value)


def _set_widget(at: AppTest, w, value: Any) -> None:
    if value is None:
        w.click()
    else:
        w.set_value(value)
    mirror_url_write(at, w)
    at.run()


def draw_action(data, at: AppTest, main_script: Path) -> Action:
    """One action on the page as it is now, drawn from what it shows."""
    widgets = interactive_widgets(at)
    pages = _page_files(main_script)
    links = [link.proto.page for link in at.get("page_link") if link.proto.page in pages]
    choices = ["rerun"] + [f"link:{p}" for p in links] + list(range(len(widgets)))
    d = data.draw(DRAW)
    mixed = spread(d.pick)
    choice = choices[mixed % len(choices)]
    if choice == "rerun":
        return Action("rerun", lambda: at.run())
    if isinstance(choice, str):
        target = pages[choice.removeprefix("link:")]
        return Action(f"follow the page link to {target}", lambda: at.switch_page(target).run())
    w = widgets[choice]
    value = value_for(w, Draw(mixed // len(choices), d.number, d.text))
    if value is None and w.type != "button":  # a select without options: nothing to choose
        return Action(f"{w.type} {w.label!r}: no options, rerun", lambda: at.run())
    verb = "click" if value is None else f"set to {value!r:.120}"
    return Action(f"{w.type} {w.label!r}: {verb}", lambda: _set_widget(at, w, value))


def exception_texts(at: AppTest) -> list[str]:
    return [f"{e.proto.type}: {e.value}" for e in at.exception]


def random_session(data, at: AppTest, main_script: Path, steps: int, log: list[str]) -> None:
    """Perform `steps` random actions, each followed by a rerun; fail at the first exception element."""
    for _ in range(steps):
        action = draw_action(data, at, main_script)
        log.append(action.describe)
        action.perform()
        shown = exception_texts(at)
        assert not shown, "exception after: " + " -> ".join(log) + "\n" + "\n".join(shown)


# page script -> {"sequences", "actions", "seconds", "outcome"}: filled by the random-interaction tests,
# printed in pytest's terminal summary (tests/app/conftest.py), with or without -s.
REPORT: dict[str, dict] = {}


def report_lines() -> list[str]:
    if not REPORT:
        return []
    lines = [
        f"{page}: {r['sequences']} sequences, {r['actions']} actions, {r['seconds']:.0f} s, {r['outcome']}"
        + (f"; runs it started, by state now: {r['runs started']}" if r.get("runs started") else "")
        for page, r in REPORT.items()
    ]
    total = sum(r["sequences"] for r in REPORT.values())
    lines.append(
        f"total: {total} random sequences, {sum(r['actions'] for r in REPORT.values())} actions, "
        f"{sum(r['seconds'] for r in REPORT.values()):.0f} s"
    )
    return lines
