"""The hub conformance checks (``qkdnet conformance``, group hub) against our hub."""

from __future__ import annotations

from pathlib import Path

from qkdnet.auth import KeyStoreTagKeys
from qkdnet.conformance import CheckContext, load_check_modules, run_checks
from qkdnet.hub.node import embedded_network


async def test_hub_passes_its_conformance_checks(tmp_path: Path) -> None:
    load_check_modules()
    async with embedded_network(["alice"], tmp_path, prefill_key=1 << 12,
                                extra_spokes=["conformance"]) as net:
        store = net.stores["conformance"]
        ctx = CheckContext("127.0.0.1", net.hub.port, "spoke", "conformance",
                           keys=lambda: KeyStoreTagKeys(store, "hub"), timeout=3)
        results = await run_checks(ctx, groups=["hub"])
        names = {r.name for r in results}
        assert {"hub.register", "hub.register_other_name", "hub.impersonation",
                "hub.unknown_destination", "hub.data_key_mismatch"} <= names
        failed = [(r.name, r.detail) for r in results if not r.passed]
        assert not failed
        # The hub served alice throughout.
        assert net["alice"].connected
