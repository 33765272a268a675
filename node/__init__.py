"""edison-node: keeps an outbound MQTT connection and drives GPIO outputs on command.

Importing this package needs neither mraa nor amqtt: hardware and broker
libraries are imported where they are used.

`__version__` is the one place the version is written: setup.cfg reads it (`attr:`),
and every program, the discovery payload and the bridge's User-Agent import it.
"""

__version__ = "0.1.0"
