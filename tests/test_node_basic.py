from tests.helpers import read_trace
from tests.conftest import DEVICE


def test_on_moves_pin_and_reports_state(broker, probe, nodes):
    nodes.start(wait_online=probe)
    probe.publish(f"edison/{DEVICE}/led/set", "ON")
    assert probe.wait_for(f"edison/{DEVICE}/led/state", "ON")
    assert [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20] == [1]
