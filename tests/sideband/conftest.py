"""Shared fixtures for the sideband tests: key pairs, secrets and a live basic node."""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys, MemoryTagKeys
from qkdnet.keystore import KeyStore
from qkdnet.sideband import BasicNode, serve_basic_node


@pytest.fixture
def key_pair() -> tuple[MemoryTagKeys, MemoryTagKeys]:
    """Mirrored in-memory tag key sources (a = initiator, b = responder)."""
    return MemoryTagKeys.pair()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A bootstrap secret file."""
    path = tmp_path / "bootstrap.secret"
    path.write_bytes(secrets.token_bytes(8192))
    return path


@pytest.fixture
def node_store(tmp_path: Path, secret: Path) -> Iterator[KeyStore]:
    """The node's key store, holding the secret for peers 'conformance' and 'alice'."""
    store = KeyStore(tmp_path / "node.db")
    store.import_bootstrap("conformance", secret.read_bytes(), initiator=False)
    yield store
    store.close()


def store_resolver(store: KeyStore):  # type: ignore[no-untyped-def]
    """auth_for_peer on a key store: peers with a bootstrap secret are known."""
    def resolve(name: str) -> FrameAuthenticator | None:
        if not store.has_bootstrap(name):
            return None
        return FrameAuthenticator(KeyStoreTagKeys(store, name))
    return resolve


@pytest.fixture
async def basic_node(node_store: KeyStore) -> AsyncIterator[BasicNode]:
    """A live basic node on loopback that knows peer 'conformance'."""
    async with trio.open_nursery() as nursery:
        node: BasicNode = await nursery.start(functools.partial(
            serve_basic_node, "hub", store_resolver(node_store), 0,
            max_frame_size=1 << 16))
        yield node
        nursery.cancel_scope.cancel()
