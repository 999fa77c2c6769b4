"""The progress line train.py draws on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """One line on stderr: steps, SPS, recent return. Redrawn in place on a terminal; a plain
    line every 10% otherwise (logs stay readable)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.last_draw, self.last_decile = 0.0, -1

    def update(self, step: int, sps: float, ret: float | None, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.time()
        decile = int(10 * step / self.total)
        if self.tty and now - self.last_draw < 0.5 and step < self.total:
            return
        if not self.tty and decile == self.last_decile and step < self.total:
            return
        self.last_draw, self.last_decile = now, decile
        frac = min(step / self.total, 1.0)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        r = "  n/a" if ret is None else f"{ret:7.3f}"
        line = f"[{bar}] {step:>10,}/{self.total:,} steps | {sps:7.0f} SPS | return {r}{extra}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)
