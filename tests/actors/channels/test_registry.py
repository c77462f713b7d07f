"""The channel registry: names, the enabled set built from a config, and adding a channel."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

import actors.channels as channels
from actors.channels import (
    REGISTRY,
    Channel,
    ChannelConfig,
    Notification,
    build_channels,
    register,
)

SMS = {"sms_url": "http://127.0.0.1:9", "sms_account": "AC1", "sms_token": "t", "sms_from": "+15005550006"}


def test_email_webhook_and_log_are_always_built_and_sms_not_without_a_gateway() -> None:
    assert set(build_channels(ChannelConfig())) == {"email", "webhook", "log"}


def test_sms_is_built_when_a_gateway_is_configured() -> None:
    built = build_channels(ChannelConfig(**SMS))  # type: ignore[arg-type]

    assert set(built) == {"email", "webhook", "log", "sms"}


@pytest.mark.parametrize(
    ("setting", "variable"),
    [("sms_account", "WJP_SMS_ACCOUNT"), ("sms_token", "WJP_SMS_TOKEN"), ("sms_from", "WJP_SMS_FROM")],
)
def test_a_gateway_with_a_missing_setting_is_refused_naming_the_variable(setting: str, variable: str) -> None:
    config = ChannelConfig(**{**SMS, setting: None})  # type: ignore[arg-type]

    with pytest.raises(ValueError, match=variable):
        build_channels(config)


def test_every_channel_is_registered_under_its_own_name() -> None:
    assert {name: cls.name for name, cls in REGISTRY.items()} == {
        "email": "email",
        "webhook": "webhook",
        "sms": "sms",
        "log": "log",
    }


def test_a_new_channel_is_one_registered_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels, "REGISTRY", dict(REGISTRY))

    @register
    class Pigeon(Channel):
        name = "pigeon"

        def check_recipient(self, recipient: str) -> str | None:
            return None

        def deliver(self, notification: Notification) -> str:
            return "flown"

    built = build_channels(ChannelConfig())

    assert isinstance(built["pigeon"], Pigeon)
    assert "pigeon" not in REGISTRY  # the real registry is untouched


def test_a_second_class_under_a_taken_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels, "REGISTRY", dict(REGISTRY))

    with pytest.raises(ValueError, match="already taken"):

        @register
        class Impostor(Channel):
            name = "email"

            def check_recipient(self, recipient: str) -> str | None:
                return None

            def deliver(self, notification: Notification) -> str:
                return ""


def test_the_package_exports_the_interface() -> None:
    for name in ["Notification", "Channel", "ChannelConfig", "DeliveryError", "TransientError", "PermanentError"]:
        assert name in channels.__all__
        assert hasattr(channels, name)


def test_a_channel_in_a_module_named_by_the_config_is_imported_and_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(channels, "REGISTRY", dict(REGISTRY))
    (tmp_path / "wjp_test_carrier_pigeon.py").write_text(
        '"""A channel from outside the package."""\n'
        "from actors.channels import Channel, register\n\n\n"
        "@register\n"
        "class CarrierPigeon(Channel):\n"
        '    name = "carrier-pigeon"\n\n'
        "    def check_recipient(self, recipient):\n"
        "        return None\n\n"
        "    def deliver(self, notification):\n"
        '        return "flown"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "wjp_test_carrier_pigeon", raising=False)

    built = build_channels(ChannelConfig(extra_modules=("wjp_test_carrier_pigeon",)))

    assert built["carrier-pigeon"].deliver(Notification(uuid.uuid4(), "coop", "hi")) == "flown"
    sys.modules.pop("wjp_test_carrier_pigeon", None)


def test_a_channel_module_that_cannot_be_imported_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="WJP_CHANNEL_MODULES"):
        build_channels(ChannelConfig(extra_modules=("wjp_no_such_module_anywhere",)))
