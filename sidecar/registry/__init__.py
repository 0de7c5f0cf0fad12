"""Where connectors live: the durable store, the connectors file, and the registry over both."""

from sidecar.registry.backend import Store
from sidecar.registry.connectors_file import load_connectors_file
from sidecar.registry.registry import Registry
from sidecar.registry.store import ConnectorStore

__all__ = ["ConnectorStore", "Registry", "Store", "load_connectors_file"]
