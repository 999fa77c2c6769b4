"""One colour per backbone label, distinct for any number of labels, and the same in every plot.

Each registered backbone has a fixed colour (so lstm is the same blue in every report memrl makes);
a label is drawn in its backbone's colour when it is the only label of that backbone in the report
(``gru:remember_bias=2`` beside plain backbones is still gru's orange). Labels that share a
backbone (``mru:kind=ldu`` and ``mru:kind=plain``) and unknown names take colours from a list of
further hand-picked ones, in sorted order, then from an endless sequence of hues spaced by the
golden ratio with alternating lightness; none repeats a colour already used in the report.
matplotlib's tab10 cycle, which the plots used before, repeats after ten backbones.
"""

from __future__ import annotations

import colorsys
from collections import Counter
from typing import Iterable, Iterator

# The eleven registered backbones (memory.registry): tab10 for the first ten, black for trxl.
FIXED: dict[str, str] = {
    "lstm": "#1f77b4", "gru": "#ff7f0e", "mlstm": "#2ca02c", "mlstm-orth": "#d62728", "mru": "#9467bd",
    "mingru": "#8c564b", "lru": "#e377c2", "mlp": "#7f7f7f", "ffm": "#bcbd22", "ssm": "#17becf",
    "trxl": "#000000",
}
EXTRA: tuple[str, ...] = (
    "#003f5c", "#f4a582", "#1b9e77", "#b2182b", "#6a3d9a", "#a6761d", "#66c2a5", "#fdb462",
    "#e7298a", "#4d9221", "#053061", "#fb9a99", "#cab2d6", "#b15928", "#80b1d3",
)


def base(label: str) -> str:
    """The backbone name of a label: ``mru:kind=ldu`` -> ``mru``."""
    return label.split(":", 1)[0]


def _golden_hues() -> Iterator[str]:
    i = 0
    while True:
        h = (0.13 + i * 0.618033988749895) % 1.0
        light = (0.35, 0.55, 0.45)[i % 3]
        r, g, b = colorsys.hls_to_rgb(h, light, 0.75)
        i += 1
        yield f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def colours(labels: Iterable[str]) -> dict[str, str]:
    """A hex colour for each label, all distinct. Depends only on the set of labels, not their order."""
    labels = list(dict.fromkeys(labels))
    count = Counter(base(lab) for lab in labels)
    out: dict[str, str] = {}
    for lab in labels:
        if base(lab) in FIXED and count[base(lab)] == 1:
            out[lab] = FIXED[base(lab)]
    used = set(out.values())

    def stream() -> Iterator[str]:
        yield from EXTRA
        yield from _golden_hues()

    free = (c for c in stream() if c not in used)
    for lab in sorted(lab for lab in labels if lab not in out):
        c = next(free)
        used.add(c)
        out[lab] = c
    return out
