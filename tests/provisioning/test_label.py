"""Case labels: PNG and SVG with a QR code that decodes back to the device."""

from __future__ import annotations

import re

from PIL import Image

from provisioning.label import DPI, QUIET, make_label, qr_matrix


def test_png_label_decodes_and_fits_a_sticker(tmp_path):
    import zxingcpp  # decoder with its native library in the wheel (pyzbar would need libzbar)

    lbl = make_label("bliiida-2-14-a", "bliiida", "2.14", tmp_path, date="2025-05-01", name="Salle 2.14 CO2")
    img = Image.open(lbl.png)
    assert img.size == (591, 295) and round(img.info["dpi"][0]) == DPI  # 50 x 25 mm at 300 dpi
    assert [r.text for r in zxingcpp.read_barcodes(img)] == ["maille:device/bliiida-2-14-a"]
    assert lbl.lines == ["bliiida-2-14-a", "Salle 2.14 CO2", "site bliiida", "room 2.14", "2025-05-01"]


def test_svg_label_holds_the_same_qr_matrix(tmp_path):
    lbl = make_label("dev-7", "school", "B-12", tmp_path, date="2025-05-01")
    svg = lbl.svg.read_text()
    assert 'width="50.0mm" height="25.0mm"' in svg
    for text in ("dev-7", "site school", "room B-12", "2025-05-01"):
        assert f">{text}</text>" in svg
    # re-encode the payload and compare module by module with what the SVG draws
    matrix = qr_matrix("maille:device/dev-7")
    dark = {tuple(map(int, m.split(","))) for m in re.findall(r'data-rc="(\d+,\d+)"', svg)}
    assert dark == {(r, c) for r, row in enumerate(matrix) for c, v in enumerate(row) if v}
    assert QUIET >= 2
