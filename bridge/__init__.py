"""edison-bridge: posts on X, Bluesky and Mastodon in, device commands over MQTT out.

One pipeline (pipeline.py) after one source module per network (sources/).
Needs the `bridge` extra (httpx, websockets); the device never imports this package.
"""
