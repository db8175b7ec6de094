"""`evo plot` writes the progress chart and the archive heatmap as valid PNG and SVG files."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

from tests.conftest import evo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_png_and_svg(short_run, tmp_path):
    db, name = short_run
    out = evo("plot", "--db", db, "--run", name, "-o", tmp_path / "plots").stdout
    for stem in ("progress", "heatmap"):
        png, svg = tmp_path / "plots" / f"{stem}.png", tmp_path / "plots" / f"{stem}.svg"
        assert str(png) in out and str(svg) in out
        head = png.read_bytes()[:24]
        width, height = struct.unpack(">II", head[16:24])  # the IHDR chunk
        assert head[:8] == PNG_MAGIC and width > 800 and height > 600
        root = ET.parse(svg).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        text = svg.read_text()
        assert name in text  # the title names the run (matplotlib keeps SVG text as text)
