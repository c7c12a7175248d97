"""The master key (configured, or generated once into a 0600 file) and the per-probe key ring."""

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from legator_mcp.fleet.keys import MASTER_KEY_FILE, KeyRing, MasterKeyError, load_or_create_master_key
from legator_mcp.settings import Settings
from legator_probe.protocol.signing import derive_probe_keypair, encode_public_key

MASTER = bytes(range(32))


def _settings(tmp_path: Path, master_key: str | None = None) -> Settings:
    secret = None if master_key is None else SecretStr(master_key)
    return Settings(_env_file=None, data_dir=tmp_path / "data", master_key=secret)  # pyright: ignore[reportCallIssue]


def test_a_master_key_is_generated_once_into_a_private_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = load_or_create_master_key(settings)
    path = settings.data_dir / MASTER_KEY_FILE
    assert len(first) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert base64.b64decode(path.read_text(encoding="ascii")) == first
    assert load_or_create_master_key(settings) == first
    assert [p.name for p in settings.data_dir.iterdir()] == [MASTER_KEY_FILE], "no temporary file is left behind"


def test_the_configured_master_key_wins_and_accepts_either_base64_alphabet(tmp_path: Path) -> None:
    standard = base64.b64encode(b"\xfb" * 32).decode()
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")
    assert load_or_create_master_key(_settings(tmp_path, standard)) == b"\xfb" * 32
    assert load_or_create_master_key(_settings(tmp_path, urlsafe)) == b"\xfb" * 32
    assert not (tmp_path / "data" / MASTER_KEY_FILE).exists()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("not base64 at all!", id="not-base64"),
        pytest.param(base64.b64encode(b"short").decode(), id="too-short"),
    ],
)
def test_a_malformed_master_key_is_a_clear_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(MasterKeyError, match="LEGATOR_MASTER_KEY"):
        load_or_create_master_key(_settings(tmp_path, value))


def test_a_corrupted_key_file_is_a_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / MASTER_KEY_FILE).write_text("garbage!!", encoding="ascii")
    with pytest.raises(MasterKeyError, match="master.key"):
        load_or_create_master_key(settings)


def test_the_key_ring_derives_the_same_keys_as_the_protocol() -> None:
    ring = KeyRing(MASTER)
    key_id, private = derive_probe_keypair(MASTER, "prb-00000001", 3)
    assert ring.key_id("prb-00000001", 3) == key_id
    assert ring.encoded_public_key("prb-00000001", 3) == encode_public_key(private.public_key())
    assert ring.private_key("prb-00000001", 3) is ring.private_key("prb-00000001", 3), "pairs are cached"
    assert ring.key_id("prb-00000001", 4) != key_id


def test_a_deferred_key_ring_loads_its_master_key_once_on_first_use() -> None:
    calls: list[int] = []

    def loader() -> bytes:
        calls.append(1)
        return MASTER

    ring = KeyRing(loader)
    assert calls == []
    ring.load()
    ring.key_id("prb-00000001", 1)
    assert calls == [1]


def test_the_key_ring_cache_is_bounded_and_forgets_deleted_probes() -> None:
    ring = KeyRing(MASTER, cache_size=2)
    first = ring.private_key("prb-00000001", 1)
    ring.private_key("prb-00000002", 1)
    ring.private_key("prb-00000003", 1)
    assert ring.private_key("prb-00000001", 1) is not first
    ring.forget("prb-00000001")
    assert ring.private_key("prb-00000001", 1) is not first


def test_a_short_master_key_is_refused() -> None:
    with pytest.raises(MasterKeyError):
        KeyRing(b"short")
    with pytest.raises(MasterKeyError):
        KeyRing(lambda: b"short").load()
