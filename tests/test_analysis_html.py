"""rho.analysis.html: rendering, escaping and passage choice, on hand-made passages."""

from __future__ import annotations

import re

import pytest

from rho.analysis import html as page


def passage(pieces, selected=None, excess=None, noise=None, domain=None):
    n = len(pieces)
    return {
        "pieces": pieces,
        "excess": excess if excess is not None else [float(i) for i in range(n)],
        "selected": selected if selected is not None else [True] * n,
        "noise": noise,
        "domain": domain,
    }


def test_render_escapes_script_and_ampersand_everywhere():
    pieces = ["<script>", "alert('x')", "</script>", " & ", "a<b", '"q"']
    text = page.render_page(
        [passage(pieces, domain="<i>web</i> & co")],
        title="<script>alert(1)</script> & title",
        ratio=0.6,
        score="<b>excess</b>",
        note="note with <img src=x> & more",
    )
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text and "&lt;/script&gt;" in text
    assert "&amp;" in text and " &amp; " in text
    assert "<img" not in text and "<i>web" not in text and "<b>excess" not in text
    assert "a&lt;b" in text and "&quot;q&quot;" in text


def test_render_marks_selection_noise_scale_and_legend():
    p = passage(
        ["\n", "alpha", " beta", " gamma", "\tdelta"],
        selected=[False, True, False, True, True],
        excess=[float("nan"), 0.5, -1.0, 2.0, 1.0],
        noise=[False, False, True, True, False],
        domain="math",
    )
    text = page.render_page([p], title="T", ratio=0.6, score="excess")
    assert "ratio <b>60%</b>" in text and "excess loss (learner − reference)" in text
    assert "white-space: pre-wrap" in text
    assert len(re.findall(r'class="t s[ "]', text)) == 3 and text.count("background:#") == 3
    assert 'class="t u n"' in text  # " beta": unselected noise
    assert 'class="t na"' in text  # no score: window start
    assert "injected noise" in text  # legend entry only when ground truth exists
    assert "domain: math" in text
    assert "injected noise" not in page.render_page([passage(["x"])], title="T", ratio=1, score="x")
    with pytest.raises(ValueError, match="lengths differ"):
        page.render_page([passage(["a", "b"], selected=[True])], title="T", ratio=1, score="x")


def test_reference_score_colours_lowest_loss_darkest():
    p = passage(["lo", "hi"], selected=[True, True], excess=[0.0, 10.0])
    text = page.render_page([p], title="T", ratio=1.0, score="reference")
    lo_colour = text.split(">lo<")[0].rsplit("background:", 1)[1][:7]
    assert lo_colour == page._colour(1.0)


def test_pick_windows_spreads_over_the_store_and_domains():
    assert page.pick_windows(10, 3) == [0, 4, 9]
    assert page.pick_windows(2, 5) == [0, 1]
    domains = ["a"] * 8 + ["b"] * 2
    picked = page.pick_windows(10, 4, domains)
    assert len(picked) == 4 and {domains[i] for i in picked} == {"a", "b"}
