"""The vendored uPlot is the one web/package.json pins (scripts/vendor-web copies it from npm),
ships with its licence, and is among the files the page serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pulse.api import _page

ROOT = Path(__file__).resolve().parents[3]
VENDOR = ROOT / "pulse" / "api" / "static" / "vendor"


def _pinned(name: str) -> str:
    manifest = json.loads((ROOT / "web" / "package.json").read_text())
    return str(manifest["dependencies"][name])


def test_the_pin_is_exact_and_the_lock_holds_it() -> None:
    pinned = _pinned("uplot")
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"uplot {pinned!r} is not an exact version"
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/uplot"]["version"] == pinned
    assert lock["packages"]["node_modules/uplot"]["license"] == "MIT"


def test_the_vendored_files_are_the_pinned_version() -> None:
    pinned = _pinned("uplot")
    script = (VENDOR / "uPlot.iife.min.js").read_text()
    assert script.startswith(f"/*! https://github.com/leeoniya/uPlot (v{pinned}) */\n")
    assert (VENDOR / "uPlot.min.css").read_text().startswith(".uplot, .uplot *")
    licence = (VENDOR / "uPlot.LICENSE").read_text()
    assert licence.startswith("The MIT License (MIT)")
    assert "Leon Sorokin" in licence


def test_the_page_serves_exactly_its_files() -> None:
    assert set(_page.FILES) == {
        "index.html",
        "app.js",
        "app.css",
        "vendor/uPlot.iife.min.js",
        "vendor/uPlot.min.css",
        "vendor/uPlot.LICENSE",
    }
    page = _page.FILES["index.html"].body.decode()
    for name in ("app.js", "app.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"):
        assert f'"static/{name}"' in page
    assert "http://" not in page and "https://" not in page
