"""edison-node: keeps an outbound MQTT connection and drives GPIO outputs on command.

Importing this package needs neither mraa nor amqtt: hardware and broker
libraries are imported where they are used.
"""

__version__ = "0.1.0"
