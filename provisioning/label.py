"""The case sticker: a QR code (maille:device/<id>) and the device id, site, room and date.

`make_label(device_id, site, room, out_dir)` writes `<id>.png` (300 dpi, for label printers) and
`<id>.svg` (vector, in millimetres) of a 50 x 25 mm sticker: QR code on the left (about 21 mm, quiet
zone included: scans from a phone at arm's length), text on the right (device id in 3 mm capitals
height, the rest in 2.3 mm; readable at reading distance).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH_MM, HEIGHT_MM = 50.0, 25.0
DPI = 300
QUIET = 2  # modules of quiet zone around the QR code (the standard asks 4; 2 is enough for phones)


def qr_payload(device_id: str) -> str:
    return f"maille:device/{device_id}"


def qr_matrix(payload: str) -> list[list[bool]]:
    """The QR code's modules (True = dark), without quiet zone; error correction M."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=0)
    qr.add_data(payload)
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


@dataclass
class Label:
    png: Path
    svg: Path
    payload: str
    lines: list[str]


def _lines(device_id: str, site: str, room: str, date: str, name: str | None) -> list[str]:
    out = [device_id]
    if name:
        out.append(name)
    out += [f"site {site}", f"room {room}", date]
    return out


def _mm(px_per_mm: float, mm: float) -> int:
    return round(px_per_mm * mm)


def make_label(
    device_id: str,
    site: str,
    room: str,
    out_dir: str | Path,
    date: str | dt.date | None = None,
    name: str | None = None,
) -> Label:
    """Write the PNG and SVG label of a device; returns their paths and the QR payload."""
    from PIL import Image, ImageDraw, ImageFont

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = (date or dt.date.today()).isoformat() if not isinstance(date, str) else date
    payload = qr_payload(device_id)
    matrix = qr_matrix(payload)
    lines = _lines(device_id, site, room, date, name)
    n = len(matrix) + 2 * QUIET
    qr_mm = HEIGHT_MM - 4.0  # 2 mm margin top and bottom
    module_mm = qr_mm / n
    text_x_mm = 2.0 + qr_mm + 1.5
    sizes_mm = [3.2] + [2.4] * (len(lines) - 1)

    # PNG at 300 dpi
    ppm = DPI / 25.4
    w, h = _mm(ppm, WIDTH_MM), _mm(ppm, HEIGHT_MM)
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    module_px = max(1, int(module_mm * ppm))
    x0, y0 = _mm(ppm, 2.0), (h - module_px * n) // 2
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                x, y = x0 + (c + QUIET) * module_px, y0 + (r + QUIET) * module_px
                draw.rectangle([x, y, x + module_px - 1, y + module_px - 1], fill=0)
    y = _mm(ppm, 3.0)
    for text, size in zip(lines, sizes_mm, strict=True):
        font = ImageFont.load_default(size=_mm(ppm, size) * 1.35)
        tx = _mm(ppm, text_x_mm)
        # shrink a long line to the sticker's width
        while draw.textlength(text, font=font) > w - tx - _mm(ppm, 1.0) and font.size > 10:
            font = ImageFont.load_default(size=font.size - 2)
        draw.text((tx, y), text, fill=0, font=font)
        y += int(font.size * 1.25)
    png = out_dir / f"{device_id}.png"
    img.save(png, dpi=(DPI, DPI))

    # SVG in millimetres
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_MM}mm" height="{HEIGHT_MM}mm" '
        f'viewBox="0 0 {WIDTH_MM} {HEIGHT_MM}">',
        f"<title>{escape(payload)}</title>",
        f'<rect width="{WIDTH_MM}" height="{HEIGHT_MM}" fill="#fff"/>',
        f'<g id="qr" fill="#000" data-modules="{len(matrix)}">',
    ]
    qy0 = (HEIGHT_MM - module_mm * n) / 2
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                parts.append(
                    f'<rect x="{2.0 + (c + QUIET) * module_mm:.3f}" y="{qy0 + (r + QUIET) * module_mm:.3f}" '
                    f'width="{module_mm:.3f}" height="{module_mm:.3f}" data-rc="{r},{c}"/>'
                )
    parts.append("</g>")
    ty = 3.0
    for i, (text, size) in enumerate(zip(lines, sizes_mm, strict=True)):
        ty += size * 1.1
        weight = ' font-weight="bold"' if i == 0 else ""
        fit = min(len(text) * size * 0.6, WIDTH_MM - text_x_mm - 1)
        parts.append(
            f'<text x="{text_x_mm}" y="{ty:.2f}" font-family="DejaVu Sans, Arial, sans-serif" '
            f'font-size="{size}"{weight} textLength="{fit:.2f}" '
            f'lengthAdjust="spacingAndGlyphs">{escape(text)}</text>'
        )
        ty += size * 0.35
    parts.append("</svg>")
    svg = out_dir / f"{device_id}.svg"
    svg.write_text("\n".join(parts) + "\n")
    return Label(png=png, svg=svg, payload=payload, lines=lines)
