"""Debian's Chromium for Playwright, as the control page's tests and benchmark start it."""

from playwright.sync_api import ViewportSize

CHROMIUM = "/usr/bin/chromium"
# As root, with nothing that reaches out (updates, sync, field trials) or needs a GPU.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE: ViewportSize = {"width": 390, "height": 844}  # the viewport of a phone held upright
