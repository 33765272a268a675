"""Stand-ins for what cannot exist here: X, Bluesky and Mastodon as local servers following their documented APIs,
faults included, and a board's pin libraries (mraa, the gpiod 2.x bindings) with a sysfs PWM tree.

`PINLIBS` holds only modules named as the real libraries (`mraa`, `gpiod`): put it first on a process's path and
it imports them in place of the real ones.
"""

from pathlib import Path

PINLIBS = Path(__file__).parent / "pinlibs"
# The names of a Raspberry Pi 5's gpiochip0 (pinctrl-rp1): the header's GPIO2..GPIO27, then lines of the board.
PI5_LINES = ["ID_SDA", "ID_SCL"] + [f"GPIO{n}" for n in range(2, 28)] + [""] * 26
