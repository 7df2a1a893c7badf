"""API keys at rest and on the command line; the tenant name mapping; the rate limiter."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pertinent.cli import main
from pertinent.errors import ConfigurationError, InvalidInput
from pertinent.server import KeyStore, RateLimiter, Tenant


def test_keys_are_hashed_at_rest_and_verified(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    new = keys.create("acme", ["reader", "writer"], name="ide")
    raw = (tmp_path / "keys.json").read_text()
    secret = new.key.split("_", 2)[2]
    assert secret not in raw and new.key not in raw
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    entry = json.loads(raw)["keys"][0]
    assert entry["tenant"] == "acme" and entry["roles"] == ["reader", "writer"]
    assert len(entry["salt"]) == 32 and len(entry["hash"]) == 64
    got = keys.verify(new.key)
    assert got is not None and got.tenant == "acme" and got.allows("writer")
    assert not got.allows("admin")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),
        lambda k: k.replace("pk_", "pk-"),
        lambda k: k.split("_", 2)[0] + "_" + k.split("_", 2)[1],
        lambda k: "pk_ffffffffffff_" + k.split("_", 2)[2],
        lambda k: "",
    ],
)
def test_any_other_key_is_refused(tmp_path: Path, mangle: object) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    new = keys.create("acme", ["admin"])
    assert keys.verify(mangle(new.key)) is None  # type: ignore[operator]


def test_revoked_keys_fail_and_a_second_store_object_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server_side, cli_side = KeyStore(path), KeyStore(path)
    new = cli_side.create("acme", ["admin"])
    assert server_side.verify(new.key) is not None
    cli_side.revoke(new.record.key_id)
    assert server_side.verify(new.key) is None
    listed = server_side.list("acme")
    assert [k.key_id for k in listed] == [new.record.key_id] and listed[0].revoked is not None
    with pytest.raises(InvalidInput, match="keys list"):
        cli_side.revoke("000000000000")


@pytest.mark.parametrize(
    ("tenant", "roles"),
    [("Acme", ["admin"]), ("a/b", ["admin"]), ("", ["admin"]), ("acme", []), ("acme", ["root"])],
)
def test_bad_tenants_and_roles_are_refused(tmp_path: Path, tenant: str, roles: list[str]) -> None:
    with pytest.raises(InvalidInput):
        KeyStore(tmp_path / "keys.json").create(tenant, roles)
    assert not (tmp_path / "keys.json").exists()


def test_a_corrupt_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        KeyStore(tmp_path / "keys.json").verify("pk_000000000000_x")


def test_keys_cli_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["keys", "create", "--data", data, "--tenant", "acme", "--role", "admin"]) == 0
    key = capsys.readouterr().out.strip()
    store = KeyStore(tmp_path / "data" / "api-keys.json")
    record = store.verify(key)
    assert record is not None and record.roles == {"admin"}
    assert main(["keys", "list", "--data", data]) == 0
    listing = capsys.readouterr().out
    assert record.key_id in listing and "active" in listing and key not in listing
    assert main(["keys", "revoke", "--data", data, record.key_id]) == 0
    assert store.verify(key) is None
    assert main(["keys", "create", "--data", data, "--tenant", "Bad/Name", "--role", "admin"]) == 2
    assert "Tenant name" in capsys.readouterr().err


def test_tenant_mapping_is_reversible_and_never_world_readable() -> None:
    t = Tenant("acme")
    assert t.user("alice") == "acme/alice" and t.doc("faq") == "acme/faq"
    assert t.strip(t.doc("faq") + "#0") == "faq#0"
    assert t.acl([]) == ("tenant:acme",)
    assert t.acl(["role:support", "user:bob"]) == ("role:acme/support", "user:acme/bob")
    assert t.caller_principals(["role:support"]) == ("tenant:acme", "role:acme/support")
    assert t.item("mem:acme%2Falice:s:1") == "mem:acme%2Falice:s:1"
    for bad in ("", "   ", "a\nb", "x" * 300):
        with pytest.raises(InvalidInput):
            t.user(bad)
    with pytest.raises(InvalidInput, match="reserves"):
        t.doc("mem:x")


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.take("k") for _ in range(3)] == [None, None, None]
    wait = rl.take("k")
    assert wait == pytest.approx(0.5)
    assert rl.take("other") is None
    now[0] += 0.5
    assert rl.take("k") is None and rl.take("k") is not None
    now[0] += 100
    assert [rl.take("k") for _ in range(3)] == [None, None, None]  # capped at the burst
    assert rl.take("k") is not None


def test_without_the_server_extra_import_works_and_create_app_names_the_extra() -> None:
    code = (
        "import sys\n"
        "for name in ('fastapi', 'prometheus_client', 'mcp', 'uvicorn'):\n"
        "    sys.modules[name] = None\n"
        "import pertinent, pertinent.cli\n"
        "from pertinent.server import KeyStore, create_app\n"
        "try:\n"
        "    create_app(None, KeyStore('k.json'))\n"
        "except pertinent.MissingDependency as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'pertinent[server]'" in out.stdout
