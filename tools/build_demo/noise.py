"""The generated noise: :class:`NoiseMaker` and :func:`inject`.

Owns: making noise blocks of five kinds (boilerplate, tables of random numbers, code dumps,
garbled text, unrelated hashes / URLs / logs / tracking ids), composing them into whole noise
documents, and inserting blocks into a document at paragraph boundaries while recording their
``[start, end)`` spans.
"""

from __future__ import annotations

import base64
import random
import re
import string

from .boilerplate import _BOILERPLATE, _WORDS, _date, _hex, _slug, _url
from .sources import _CONTROL

_COLUMNS = [
    "id", "value", "count", "mean", "std", "min", "max", "price", "change", "volume", "score",
    "rank", "lat", "lon", "temp", "date", "x", "y", "z", "weight", "total", "ratio", "pct",
    "open", "close", "high", "low", "qty", "code", "sku", "n", "delta", "err", "freq",
]  # fmt: skip
_COLUMN_KINDS = {
    "id": "int", "count": "int", "rank": "int", "qty": "int", "n": "int", "volume": "int",
    "date": "date", "code": "code", "sku": "code", "pct": "pct", "change": "pct",
}  # fmt: skip
_UNICODE_BLOCKS = [
    (0x00A1, 0x00FF), (0x0100, 0x017F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x05D0, 0x05EA),
    (0x0600, 0x064A), (0x2190, 0x21FF), (0x2500, 0x257F), (0x25A0, 0x25FF), (0x3041, 0x3096),
    (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF01, 0xFF5E),
]  # fmt: skip


class NoiseMaker:
    """Seeded generator of noise blocks of several kinds.

    ``code_sources`` are raw module sources (for code dumps), ``text_sources`` real text to
    garble. Every method returns ``(text, where)``: where the block goes in a document
    (``head``, ``tail`` or ``any``)."""

    KINDS = ("boilerplate", "table", "code", "garbled", "unrelated")
    WEIGHTS_DOC = (0.25, 0.2, 0.25, 0.15, 0.15)
    WEIGHTS_INLINE = (0.45, 0.2, 0.1, 0.1, 0.15)

    def __init__(self, rng: random.Random, code_sources: list[str], text_sources: list[str]):
        self.rng = rng
        self.code_sources = code_sources
        self.text_sources = text_sources

    def make(self, kind: str, size: int) -> tuple[str, str]:
        """A block of ``kind`` of roughly ``size`` characters (boilerplate ignores ``size``)."""
        fn = getattr(self, kind)
        return fn(size)

    # -- kinds -----------------------------------------------------------------------------

    def boilerplate(self, size: int) -> tuple[str, str]:
        where, fn = self.rng.choice(_BOILERPLATE)
        return fn(self.rng), where

    def table(self, size: int) -> tuple[str, str]:
        rng = self.rng
        ncol = rng.randint(3, 8)
        cols = rng.sample(_COLUMNS, ncol)
        kinds = [_COLUMN_KINDS.get(c) or rng.choice(["int", "float", "float"]) for c in cols]
        decimals = [rng.randint(1, 6) for _ in cols]
        scales = [10 ** rng.randint(0, 5) for _ in cols]

        def cell(k: str, d: int, s: int) -> str:
            if k == "int":
                return str(
                    rng.randint(-s, 10 * s) if rng.random() < 0.2 else rng.randint(0, 10 * s)
                )
            if k == "float":
                return f"{rng.uniform(-s, s):.{d}f}"
            if k == "pct":
                return f"{rng.uniform(-100, 100):+.{min(d, 2)}f}%"
            if k == "date":
                return _date(rng)
            return rng.choice(string.ascii_uppercase) + str(rng.randint(100, 99999))

        style = rng.choice(["csv", "tsv", "pipe", "fixed"])
        width = max(len(c) for c in cols) + rng.randint(2, 6)
        lines: list[str] = []
        total = 0
        row = cols
        while True:
            if style == "csv":
                line = ",".join(row)
            elif style == "tsv":
                line = "\t".join(row)
            elif style == "pipe":
                line = "| " + " | ".join(row) + " |"
            else:
                line = "".join(c.rjust(max(width, len(c) + 1)) for c in row)
            lines.append(line)
            total += len(line) + 1
            if row is cols and style == "pipe":
                lines.append("|" + "|".join("---" for _ in row) + "|")
            if total >= size and len(lines) >= 4:
                break
            row = [cell(k, d, s) for k, d, s in zip(kinds, decimals, scales, strict=True)]
        if rng.random() < 0.3:
            lines.insert(
                0, rng.choice(["Table", "Results", "Data", "Export"]) + f" {rng.randint(1, 40)}"
            )
        return "\n".join(lines), "any"

    def code(self, size: int) -> tuple[str, str]:
        rng = self.rng
        src = rng.choice(self.code_sources)
        lines = src.split("\n")
        start = rng.randrange(len(lines))
        out: list[str] = []
        total = 0
        for line in lines[start:]:
            if total + len(line) + 1 > size and out:
                break
            out.append(line)
            total += len(line) + 1
        text = "\n".join(out).strip("\n")
        if len(text) < 40:  # landed on the end of a file: take its start instead
            text = src[: max(size, 40)].rsplit("\n", 1)[0]
        return text, "any"

    def _real_text(self, size: int) -> str:
        rng = self.rng
        src = rng.choice(self.text_sources)
        if len(src) <= size:
            return src
        start = rng.randrange(len(src) - size)
        return src[start : start + size]

    def garbled(self, size: int) -> tuple[str, str]:
        rng = self.rng
        mode = rng.choice(
            ["word_shuffle", "char_shuffle", "mojibake", "unicode", "base64", "typos"]
        )
        if mode == "base64":
            data = base64.b64encode(rng.randbytes(max(3 * size // 4, 24))).decode("ascii")
            lines = [data[i : i + 76] for i in range(0, len(data), 76)]
            head = rng.choice(["", "data:image/png;base64,", "-----BEGIN CERTIFICATE-----\n"])
            return head + "\n".join(lines), "any"
        if mode == "unicode":
            chars = []
            for _ in range(size):
                if rng.random() < 0.12:
                    chars.append(rng.choice(" \n"))
                else:
                    lo, hi = rng.choice(_UNICODE_BLOCKS)
                    chars.append(chr(rng.randint(lo, hi)))
            return "".join(chars).strip() or "\ufffd", "any"
        text = self._real_text(size)
        if mode == "word_shuffle":

            def shuffle_word(m: re.Match) -> str:
                w = list(m.group(0))
                rng.shuffle(w)
                return "".join(w)

            out = re.sub(r"[A-Za-z]{2,}", shuffle_word, text)
        elif mode == "char_shuffle":
            chars = list(text)
            rng.shuffle(chars)
            out = "".join(chars)
        elif mode == "mojibake":
            table = {"'": "’", '"': "”", "-": "–", "e": "é", "a": "à", "o": "ö", "u": "ü"}
            styled = "".join(table[c] if c in table and rng.random() < 0.5 else c for c in text)
            out = styled.encode("utf-8").decode("cp1252", errors="replace")
        else:  # typos: random substitutions, deletions and insertions
            chars = []
            for c in text:
                r = rng.random()
                if r < 0.12:
                    chars.append(rng.choice(string.ascii_letters + string.punctuation))
                elif r < 0.18:
                    continue
                elif r < 0.24:
                    chars.append(c + rng.choice(string.ascii_letters + "#@&%"))
                else:
                    chars.append(c)
            out = "".join(chars)
        out = _CONTROL.sub("", out).strip()
        return out or "\ufffd", "any"

    def unrelated(self, size: int) -> tuple[str, str]:
        rng = self.rng
        mode = rng.choice(["hashes", "urls", "log", "tracking"])
        lines: list[str] = []
        total = 0
        while total < size or len(lines) < 2:
            if mode == "hashes":
                line = rng.choice(
                    [
                        f"sha256:{_hex(rng, 64)}",
                        f"{_hex(rng, 40)}  {rng.choice(_WORDS)}_{rng.randint(1, 999)}.bin",
                        f"md5 ({rng.choice(_WORDS)}.tar.gz) = {_hex(rng, 32)}",
                        f"commit {_hex(rng, 40)}",
                        "-".join(_hex(rng, n) for n in (8, 4, 4, 4, 12)),
                    ]
                )
            elif mode == "urls":
                line = _url(rng)
            elif mode == "log":
                ip = f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)}"
                month = rng.choice(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep"])
                when = f"{rng.randint(1, 28):02d}/{month}/{rng.randint(2010, 2024)}"
                when += (
                    f":{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
                )
                method = rng.choice(["GET", "GET", "GET", "POST", "HEAD"])
                path = "/" + _slug(rng, rng.randint(1, 3)).replace("-", "/")
                status = rng.choice([200, 200, 200, 301, 304, 404, 500])
                line = (
                    f'{ip} - - [{when} +0000] "{method} {path} HTTP/1.1" {status} '
                    f"{rng.randint(0, 99999)}"
                )
            else:
                line = "; ".join(
                    [
                        f"_ga=GA1.2.{rng.randint(10**8, 10**9)}.{rng.randint(10**9, 2 * 10**9)}",
                        f"sid={_hex(rng, 32)}",
                        f"uid={rng.randint(10**5, 10**9)}",
                        f"ts={rng.randint(1_100_000_000, 1_700_000_000)}",
                    ][: rng.randint(2, 4)]
                )
            lines.append(line)
            total += len(line) + 1
        return "\n".join(lines), "any"

    # -- composition ---------------------------------------------------------------------

    def inline(self) -> tuple[str, str, str]:
        """A short block to inject into a document: (kind, text, where)."""
        kind = self.rng.choices(self.KINDS, weights=self.WEIGHTS_INLINE)[0]
        size = self.rng.randint(60, 400)
        text, where = self.make(kind, size)
        return kind, text, where

    def document(self, target: int) -> tuple[str, dict[str, int]]:
        """A whole noise document of about ``target`` characters, and its chars per kind."""
        rng = self.rng
        blocks: list[str] = []
        per_kind: dict[str, int] = {}
        total = 0
        page_chrome = rng.random() < 0.3  # a page that is nothing but site chrome
        while total < target:
            if page_chrome:
                kind = "boilerplate"
            else:
                kind = rng.choices(self.KINDS, weights=self.WEIGHTS_DOC)[0]
            if page_chrome and total >= 1200:
                break
            size = min(target - total, rng.randint(200, 2500))
            text, _ = self.make(kind, max(size, 80))
            blocks.append(text)
            per_kind[kind] = per_kind.get(kind, 0) + len(text)
            total += len(text) + 2
        return "\n\n".join(blocks), per_kind


def inject(text: str, blocks: list[tuple[str, str]], rng: random.Random) -> tuple[str, list]:
    """Insert noise ``blocks`` ((text, where) pairs) into ``text`` at paragraph boundaries.

    Returns the new text and the ``[start, end)`` spans of the inserted blocks (sorted,
    separators excluded). Removing the spans and collapsing whitespace gives back ``text``."""
    segments: list[tuple[str, bool]] = [(p, False) for p in text.split("\n\n")]
    for noise, where in blocks:
        n = len(segments)
        if where == "head":
            pos = 0
        elif where == "tail" or n < 2:
            pos = n if (where == "tail" or rng.random() < 0.5) else 0
        else:
            pos = rng.randint(1, n - 1)
        segments.insert(pos, (noise, True))
    parts: list[str] = []
    spans: list[list[int]] = []
    offset = 0
    for i, (segment, is_noise) in enumerate(segments):
        if i:
            parts.append("\n\n")
            offset += 2
        if is_noise:
            spans.append([offset, offset + len(segment)])
        parts.append(segment)
        offset += len(segment)
    return "".join(parts), spans
