"""What the tests and the benchmarks share: real processes and brokers on 127.0.0.1, an MQTT client that waits
for what arrives, the test users, the NATS cluster, the fault scenarios, and stand-ins for what cannot exist here.

Not installed with the programs: node/, broker/ and bridge/ never import it.
"""
