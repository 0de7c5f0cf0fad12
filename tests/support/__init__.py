"""What the suites share, one copy each: sidecars under test, upstreams, builders.

The conftest.py files hold only fixtures (and pytest hooks) built from these modules; a test
imports a builder from here, never from a conftest.

- `sidecars`: the real sidecar in-process (a background thread) or as a `rules-sidecar serve`
  subprocess, and the loopback egress settings the tests open.
- `upstreams`: real loopback HTTP upstreams, the business APIs the sidecar calls.
- `configmap_volume`: a directory updated the way the kubelet writes a ConfigMap volume.
- `network`: the security suite's recording connector and fake resolvers (loopback only).
- `raw_servers`: raw asyncio servers for answers no HTTP framework will produce.
- `calls`: connectors, nodes and RPCs to a running sidecar, built from plain data.
"""
