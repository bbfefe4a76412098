"""Example app: the server-side SVG charts are well-formed, scaled and escape their labels."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import app_support  # noqa: F401  (puts the repository root on sys.path)
from examples.app import charts

NS = "{http://www.w3.org/2000/svg}"


def parse(svg):
    return ET.fromstring(str(svg))


def test_hbar_scales_bars_to_the_largest_value():
    root = parse(charts.hbar([("a", 10), ("b", 5)], "t"))
    widths = [float(r.get("width")) for r in root.iter(NS + "rect")]
    assert widths[0] == 2 * widths[1]


def test_labels_are_escaped():
    svg = str(charts.hbar([("<script>alert(1)</script>", 3)], "x & <y>"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    parse(svg)


def test_empty_data_says_so():
    for svg in (charts.hbar([], "t"), charts.grouped([], {"a": []}, "t"), charts.line([], "t"), charts.histogram([], [0, 1], "t")):
        assert "No data yet" in str(svg)
        parse(svg)


def test_grouped_has_one_bar_per_category_and_series_plus_legend():
    root = parse(charts.grouped(["m1", "m2", "m3"], {"estimated": [1, 2, 3], "actual": [2, 2, 2]}, "t"))
    bars = [r for r in root.iter(NS + "rect") if r.find(NS + "title") is not None]
    assert len(bars) == 6


def test_histogram_counts_into_buckets():
    root = parse(charts.histogram([0.05, 0.2, 0.3, 7, 500], [0, 0.1, 1, 5, 60], "t"))
    titles = [r.find(NS + "title").text for r in root.iter(NS + "rect") if r.find(NS + "title") is not None]
    counts = [int(t.rsplit(": ", 1)[1]) for t in titles]
    assert counts == [1, 2, 0, 1, 1]


def test_line_has_a_point_per_value():
    root = parse(charts.line([("d1", 0), ("d2", 1.5), ("d3", 0.5)], "spend"))
    assert len(list(root.iter(NS + "circle"))) == 3
