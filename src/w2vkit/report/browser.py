"""Render a report in a real browser (headless Chromium) and check that the screenshot shows something.

    python -m w2vkit.report.browser runs/demo/report.html shot.png

exits 1 if Chromium is missing or the screenshot is blank. Chromium: `apt-get install chromium`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(
    page: str | Path,
    out_png: str | Path,
    *,
    width: int = 1200,
    height: int = 2000,
    timeout_s: float = 120,
) -> Path:
    """Screenshot of `page` (an HTML file) as rendered by headless Chromium, written to `out_png`."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(BROWSERS)})")
    out_png = Path(out_png).resolve()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={out_png}",
                f"--window-size={width},{height}",
                Path(page).resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
    if not out_png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot to {out_png}")
    return out_png


def ink_fraction(png: str | Path) -> float:
    """Share of pixels that are not (near) white: 0 for a blank page."""
    from matplotlib.image import imread

    pixels = imread(str(png))[..., :3]  # (H, W, 3) floats in [0, 1]
    return float(np.mean(pixels.min(axis=-1) < 0.9))


def main(argv: list[str] | None = None) -> int:
    page, out = (argv if argv is not None else sys.argv[1:])[:2]
    try:
        fraction = ink_fraction(screenshot(page, out))
    except (FileNotFoundError, RuntimeError, subprocess.SubprocessError) as err:
        print(f"screenshot failed: {err}", file=sys.stderr)
        return 1
    print(f"{out}: {100 * fraction:.1f}% of the pixels are not white")
    return 0 if fraction > 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
