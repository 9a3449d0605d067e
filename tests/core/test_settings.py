"""Settings: secrets never shown, the bootstrap admin key checked when the settings are read."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from core.crypto import CallbackSigner, MasterKey, callback_signer, master_key, signing_key
from core.settings import Settings

ADMIN_KEY = "lethe_0123456789ab_settings-test-admin-key"


def test_secrets_are_used_but_never_shown(tmp_path: Path):
    secrets = {
        "master_key": Fernet.generate_key().decode(),
        "signing_key": base64.b64encode(os.urandom(32)).decode(),
        "callback_secret": "callback-secret-value",
        "bootstrap_admin_key": ADMIN_KEY,
    }
    settings = Settings(data_dir=tmp_path, **secrets)  # type: ignore[arg-type]
    shown = repr(settings) + str(settings) + settings.model_dump_json() + str(settings.model_dump())
    for value in secrets.values():
        assert value not in shown
    # Every use reads the real value.
    assert MasterKey(secrets["master_key"]).unwrap(master_key(settings).wrap(b"x")) == b"x"
    assert signing_key(settings).key_id == signing_key(Settings(data_dir=tmp_path / "other", **secrets)).key_id  # type: ignore[arg-type]
    assert callback_signer(settings).header(b"{}", 1) == CallbackSigner(b"callback-secret-value").header(b"{}", 1)
    assert not (tmp_path / "secrets").exists()  # nothing generated: the configured keys were used


@pytest.mark.parametrize("bad", ["hunter2-pass", "lethe_short_0123456789abcdef", "lethe_0123456789ab_tooshort"])
def test_a_malformed_bootstrap_admin_key_is_refused_naming_the_setting_not_the_value(bad: str):
    with pytest.raises(ValidationError) as refused:
        Settings(bootstrap_admin_key=bad)  # type: ignore[arg-type]
    assert "LETHE_BOOTSTRAP_ADMIN_KEY must look like lethe_<12 hex>" in str(refused.value)
    assert bad not in str(refused.value)
