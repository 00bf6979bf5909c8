"""loss.png beside log.jsonl: the losses of a run against the step, drawn with Pillow (no plotting library),
so a user sees at a glance whether training works.

    save_loss_plot(records, "runs/x/loss.png")   # records: the dicts of log.jsonl
"""
import math

from PIL import Image, ImageDraw

from dnd_sdk.images import save_png

SIZE, MARGIN = (720, 420), (64, 24, 150, 40)  # left, top, right (legend), bottom
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def loss_series(records: list) -> dict:
    """name -> [(step, value)] of every finite `loss*` metric, in log order ("loss" first)."""
    names = sorted({k for r in records for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    return {name: [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))
                   and math.isfinite(r[name])] for name in names}


def _ticks(lo: float, hi: float, count: int = 5) -> list:
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def draw_loss_plot(records: list) -> Image.Image:
    """Every loss curve of `records` on one pair of linear axes, with a legend; a blank plot without records."""
    series = {k: v for k, v in loss_series(records).items() if v}
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]
    draw.rectangle((left, top, right, bottom), outline="black")
    if not series:
        draw.text((left + 10, top + 10), "no losses logged yet", fill="black")
        return image
    points = [p for s in series.values() for p in s]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(step, value):
        return (left + (step - x0) / (x1 - x0) * (right - left), bottom - (value - y0) / (y1 - y0) * (bottom - top))

    for step in _ticks(x0, x1):
        x = at(step, y0)[0]
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 12, bottom + 6), f"{step:.0f}", fill="black")
    for value in _ticks(y0, y1):
        y = at(x0, value)[1]
        draw.line((left - 4, y, left, y), fill="black")
        draw.line((left + 1, y, right - 1, y), fill="#e8e8e8")
        draw.text((4, y - 6), f"{value:.3g}", fill="black")
    draw.text(((left + right) // 2 - 12, SIZE[1] - 16), "step", fill="black")
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        xy = [at(s, v) for s, v in values]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2 if name == "loss" else 1)
        else:
            draw.ellipse((xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2), fill=colour)
        y = top + 4 + 16 * i
        draw.line((right + 10, y + 6, right + 30, y + 6), fill=colour, width=2)
        draw.text((right + 36, y), f"{name} {values[-1][1]:.3g}", fill="black")
    return image


def save_loss_plot(records: list, path) -> None:
    save_png(draw_loss_plot(records), path)
