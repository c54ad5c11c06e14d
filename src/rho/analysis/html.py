"""Token highlighting as a self-contained HTML page (Rho-1, Figure 13): pure, no I/O.

:func:`passages_from_arrays` turns token ids and per-token values into passages of decoded
pieces (one per token, so token boundaries show); :func:`render_page` turns passages into one
HTML string with inline CSS and no scripts. Every piece of text that reaches the page (tokens,
title, note, score, domains) goes through ``html.escape``: a corpus holding ``<script>`` renders
as text.

A passage is ``{"pieces": list[str], "excess": list[float], "selected": list[bool],
"noise": list[bool] | None, "domain": str | None}`` and may carry ``"special": list[bool]``
(special tokens such as EOS, drawn as a small box followed by a line break).
"""

from __future__ import annotations

import codecs
import html
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SCORE_LABELS = {
    "excess": "excess loss (learner − reference), nats",
    "learner": "learner loss, nats",
    "reference": "reference loss, nats (lowest selected first)",
    "random": "random score",
}
# Sequential colour ramp for selected tokens: light yellow (low) to deep orange (high).
LOW_RGB = (255, 234, 170)
HIGH_RGB = (236, 104, 20)
GENERATOR = "rho analyze html"  # marks a page rho wrote, so a rerun may replace it


# --- Decoding tokens one by one ----------------------------------------------------------------


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-unicode table used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += [*range(ord("®"), ord("ÿ") + 1)]
    bytes_, chars, extra = list(keep), list(keep), 0
    for b in range(256):
        if b not in keep:
            bytes_.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bytes_, chars, strict=True)}


def _is_byte_level(tokenizer) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


def decode_pieces(tokenizer, ids) -> tuple[list[str], list[bool]]:
    """The text of each token, and whether it is a special token.

    Byte-level BPE tokens are turned back into bytes and decoded with an incremental UTF-8
    decoder, so the pieces concatenate to exactly the decoded text (a character split over two
    tokens appears with the second). Other tokenizers decode each id on its own.
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    special = [i in special_ids for i in ids]
    table = _byte_decoder()
    names = tokenizer.convert_ids_to_tokens(ids)
    byte_level = _is_byte_level(tokenizer) and all(
        s or (n is not None and all(ch in table for ch in n))
        for n, s in zip(names, special, strict=True)
    )
    if not byte_level:
        return [tokenizer.decode([i]) for i in ids], special
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for name, is_special in zip(names, special, strict=True):
        if is_special:
            pieces.append(utf8.decode(b"", final=True) + name)
            utf8.reset()
        else:
            pieces.append(utf8.decode(bytes(table[ch] for ch in name)))
    if pieces:
        pieces[-1] += utf8.decode(b"", final=True)
    return pieces, special


def pick_windows(
    n_windows: int, n_passages: int, window_domains: list[str | None] | None = None
) -> list[int]:
    """``n_passages`` window indices spread evenly over the store; with domains (of each window),
    an even share of each domain, spread within it, listed in turn (one of each domain, then
    the next of each) so passages of different domains sit side by side."""
    if n_windows <= 0 or n_passages <= 0:
        return []
    n_passages = min(n_passages, n_windows)
    if window_domains is None or not len(window_domains):
        return sorted({int(i) for i in np.linspace(0, n_windows - 1, n_passages).round()})
    labels = np.asarray([str(d) for d in window_domains[:n_windows]])
    names, first = np.unique(labels, return_index=True)
    names = names[np.argsort(first)]  # in order of first appearance
    columns = []
    for k, domain in enumerate(names):
        members = np.flatnonzero(labels == domain)
        share = n_passages // len(names) + (k < n_passages % len(names))
        take = min(share, len(members))
        spots = np.linspace(0, len(members) - 1, take).round().astype(int) if take else []
        columns.append([int(members[i]) for i in spots])
    picked = [c[row] for row in range(max(map(len, columns))) for c in columns if row < len(c)]
    if len(picked) < n_passages:  # a small domain left room: fill evenly from the rest
        rest = np.setdiff1d(np.arange(n_windows), picked)
        extra = np.linspace(0, len(rest) - 1, min(len(rest), n_passages - len(picked)))
        picked += [int(rest[int(i)]) for i in np.unique(extra.round())]
    return picked


def passages_from_arrays(
    tokenizer,
    token_ids: np.ndarray,
    excess: np.ndarray,
    selected: np.ndarray,
    noise: np.ndarray | None,
    starts: list[int],
    length: int,
    domains: list[str | None] | None = None,
) -> list[dict]:
    """Cut passages ``[start, start + length)`` out of flat per-token arrays (the token stream,
    the value to colour by, the selection, the noise ground truth) and decode their tokens."""
    passages = []
    for k, start in enumerate(starts):
        end = min(int(start) + int(length), len(token_ids))
        start = int(start)
        pieces, special = decode_pieces(tokenizer, token_ids[start:end])
        passages.append(
            {
                "pieces": pieces,
                "excess": [float(v) for v in np.asarray(excess[start:end], dtype=np.float64)],
                "selected": [bool(v) for v in np.asarray(selected[start:end])],
                "noise": None if noise is None else [bool(v) for v in np.asarray(noise[start:end])],
                "domain": None if domains is None else domains[k],
                "special": special,
            }
        )
    return passages


# --- Rendering ---------------------------------------------------------------------------------


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _scale(passages: list[dict]) -> tuple[float, float]:
    """The colour scale's ends: 5th and 95th percentile of the selected tokens' values."""
    values = _finite(
        v for p in passages for v, s in zip(p["excess"], p["selected"], strict=True) if s
    )
    values = values or _finite(v for p in passages for v in p["excess"])
    if not values:
        return 0.0, 1.0
    lo, hi = (float(q) for q in np.percentile(values, [5, 95]))
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _colour(t: float) -> str:
    t = min(1.0, max(0.0, t))
    rgb = (round(a + (b - a) * t) for a, b in zip(LOW_RGB, HIGH_RGB, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _fmt(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 6px; }
.meta, .note { color: #444; margin: 4px 0; }
.note { background: #f4f6fb; border-left: 3px solid #8aa0d0; padding: 6px 10px; }
.legend { display: flex; flex-wrap: wrap; gap: 10px 22px; align-items: center;
          border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 12px 0 18px; }
.legend .item { display: flex; align-items: center; gap: 8px; }
.ramp { width: 160px; height: 14px; border-radius: 3px; border: 1px solid #ccc; }
.passage { border: 1px solid #e3e3e3; border-radius: 6px; margin: 0 0 16px; }
.passage h2 { font-size: 13px; font-weight: 600; color: #555; background: #fafafa;
              margin: 0; padding: 6px 12px; border-bottom: 1px solid #eee; }
.text { font: 13px/1.75 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
        white-space: pre-wrap; word-break: break-word; padding: 10px 12px; }
.t { border-radius: 2px; }
.s { color: #111; box-shadow: inset -1px 0 0 rgba(255, 255, 255, 0.9); }
.u { color: #9a9a9a; }
.na { color: #b0b0b0; }
.n { text-decoration: underline wavy #d0202a; text-decoration-skip-ink: none;
     text-underline-offset: 3px; }
.sp { font-size: 10px; color: #777; border: 1px solid #bbb; border-radius: 3px;
      padding: 0 3px; margin: 0 2px; }
.stats td, .stats th { padding: 2px 10px 2px 0; text-align: left; font-size: 13px; }
"""


def _token_span(
    piece: str,
    value: float,
    selected: bool,
    noise: bool,
    special: bool,
    colour: str | None,
    label: str = "score",
    signed: bool = True,
) -> str:
    classes = ["t"]
    if not math.isfinite(value):
        classes.append("na")
        state = "not scored (no context)"
    elif selected:
        classes.append("s")
        state = "selected"
    else:
        classes.append("u")
        state = "not selected"
    if noise:
        classes.append("n")
    if special:
        classes.append("sp")
    tip = f"{piece!r} · {label} {_fmt(value, signed)} · {state}" + (" · noise" if noise else "")
    style = f' style="background:{colour}"' if colour and selected else ""
    text = html.escape(piece, quote=True)
    span = f'<span class="{" ".join(classes)}"{style} title="{html.escape(tip, quote=True)}">'
    return span + text + "</span>" + ("\n" if special else "")


def render_page(
    passages: list[dict], *, title: str, ratio: float, score: str, note: str = ""
) -> str:
    """One self-contained HTML page: the passages with selected tokens highlighted (background
    colour by the passages' ``excess`` values), a legend, the ratio and the score named."""
    _check_lengths(passages)
    lo, hi = _scale(passages)
    inverted = score == "reference"  # lower reference loss = selected first = darker
    signed = score == "excess"  # excess is a difference: show its sign
    all_values, all_selected, all_noise = [], [], []
    body = []
    for number, passage in enumerate(passages, 1):
        tokens = _Tokens.of(passage)
        colours = [
            _colour_of(value, lo, hi, inverted) if sel else None
            for value, sel in zip(tokens.values, tokens.selected, strict=True)
        ]
        body.append(_passage_section(number, passage, tokens, colours, score, signed))
        all_values += tokens.values
        all_selected += tokens.selected
        all_noise += tokens.noise if passage.get("noise") is not None else [None] * len(colours)
    score_label = SCORE_LABELS.get(score, score)
    legend = _legend(lo, hi, inverted, signed, score_label, any(v is not None for v in all_noise))
    meta = (
        f"Score: <b>{html.escape(score_label)}</b> · ratio <b>{ratio:.0%}</b> of tokens "
        f"selected · {len(passages)} passages · hover a token for its value"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="{GENERATOR}">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{meta}</p>',
    ]
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    stats = _stats_table(all_values, all_selected, all_noise)
    parts += [f'<div class="legend">{legend}</div>', stats, *body, "</body></html>"]
    return "\n".join(parts) + "\n"


def _check_lengths(passages: list[dict]) -> None:
    """Every per-token list of a passage has one entry per piece."""
    for number, passage in enumerate(passages, 1):
        n = len(passage["pieces"])
        lengths = [len(passage["excess"]), len(passage["selected"])]
        lengths += [len(passage[k]) for k in ("noise", "special") if passage.get(k) is not None]
        if any(length != n for length in lengths):
            raise ValueError(
                f"passage {number}: pieces, excess, selected, noise lengths differ "
                f"({n} pieces, others {lengths})"
            )


@dataclass(frozen=True)
class _Tokens:
    """A passage's per-token lists, with their defaults filled in."""

    pieces: list[str]
    values: list[float]  # NaN where not scored
    selected: list[bool]
    noise: list[bool]
    special: list[bool]

    @classmethod
    def of(cls, passage: dict) -> _Tokens:
        pieces = passage["pieces"]
        return cls(
            pieces,
            [float("nan") if v is None else float(v) for v in passage["excess"]],
            [bool(s) for s in passage["selected"]],
            passage.get("noise") or [False] * len(pieces),
            passage.get("special") or [False] * len(pieces),
        )


def _colour_of(value: float, lo: float, hi: float, inverted: bool) -> str | None:
    """The background of a selected token on the scale [lo, hi] (None: not scored)."""
    if not math.isfinite(value):
        return None
    t = (value - lo) / (hi - lo)
    return _colour(1.0 - t if inverted else t)


def _passage_section(
    number: int, passage: dict, tokens: _Tokens, colours: list, score: str, signed: bool
) -> str:
    """One passage: a heading (domain, length, selected share, noise) and its token spans."""
    per_token = (tokens.pieces, tokens.values, tokens.selected, tokens.noise, tokens.special)
    spans = [_token_span(*row, score, signed) for row in zip(*per_token, colours, strict=True)]
    scored = [s for s, v in zip(tokens.selected, tokens.values, strict=True) if math.isfinite(v)]
    share = f"{sum(scored) / len(scored):.0%} selected" if scored else "nothing scored"
    head = [f"Passage {number}"]
    if passage.get("domain"):
        head.append(f"domain: {passage['domain']}")
    head.append(f"{len(tokens.pieces)} tokens, {share}")
    if passage.get("noise") is not None and any(tokens.noise):
        head.append(f"{sum(tokens.noise)} noise tokens")
    return (
        f'<section class="passage"><h2>{html.escape(" · ".join(head))}</h2>'
        f'<div class="text">{"".join(spans)}</div></section>'
    )


def _legend(lo, hi, inverted: bool, signed: bool, score_label: str, with_noise: bool) -> str:
    """The colour ramp's ends and what each mark means."""
    ramp = f"linear-gradient(to right, {_colour(0.0)}, {_colour(1.0)})"
    left, right = (hi, lo) if inverted else (lo, hi)
    legend = [
        f'<span class="item"><span>{_fmt(left, signed)}</span><span class="ramp" '
        f'style="background:{ramp}"></span><span>{_fmt(right, signed)}</span>'
        f"<span>selected: background = {html.escape(score_label)}</span></span>",
        '<span class="item"><span class="t u">grey text</span> not selected</span>',
        '<span class="item"><span class="t na">pale</span> not scored (window start)</span>',
        '<span class="item"><span class="t sp">EOS</span> special token</span>',
    ]
    if with_noise:
        legend.append(
            '<span class="item"><span class="t n">wavy red</span> injected noise '
            "(ground truth)</span>"
        )
    return "".join(legend)


def _stats_table(values: list[float], selected: list[bool], noise: list) -> str:
    """Selected share overall and, with ground truth, among noise and clean tokens."""
    scored = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not scored:
        return ""
    rows = [("all scored tokens", scored)]
    if any(n is not None for n in noise):
        rows.append(("noise tokens", [i for i in scored if noise[i]]))
        rows.append(("clean tokens", [i for i in scored if noise[i] is False]))
    cells = []
    for name, members in rows:
        if members:
            share = sum(selected[i] for i in members) / len(members)
            cells.append(f"<tr><td>{name}</td><td>{len(members):,}</td><td>{share:.0%}</td></tr>")
    head = "<tr><th>on this page</th><th>tokens</th><th>selected</th></tr>"
    return f'<table class="stats">{head}{"".join(cells)}</table>'
