"""The log channel: one INFO line per notification on the `wjp.channels.log` logger."""

from __future__ import annotations

import logging
import sys
import unicodedata
import uuid

import pytest

from actors.channels import ChannelConfig, Notification, PermanentError
from actors.channels.log import MAX_LOGGED_CHARS, LogChannel, has_control_characters

JOB = uuid.UUID("2d4f6a8c-1b3e-4c5d-9e7f-0a1b2c3d4e5f")


def test_a_notification_is_written_as_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wjp.channels.log")

    receipt = LogChannel(ChannelConfig()).deliver(Notification(JOB, "dev-team", "Build finished"))

    [record] = caplog.records
    assert record.name == "wjp.channels.log"
    assert record.levelno == logging.INFO
    line = record.getMessage()
    assert str(JOB) in line
    assert "dev-team" in line
    assert "Build finished" in line
    assert receipt == "logged"


def test_a_very_long_message_is_cut_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wjp.channels.log")

    LogChannel(ChannelConfig()).deliver(Notification(JOB, "dev-team", "x" * 100_000))

    line = caplog.records[0].getMessage()
    assert len(line) < MAX_LOGGED_CHARS + 200
    assert f"({100_000 - MAX_LOGGED_CHARS} more)" in line


def test_line_breaks_in_the_message_stay_on_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wjp.channels.log")

    LogChannel(ChannelConfig()).deliver(Notification(JOB, "dev-team", "one\nFAKE RECORD two"))

    assert "\n" not in caplog.records[0].getMessage()


@pytest.mark.parametrize("recipient", ["dev-team", "anyone at all", "ops@example.com", "#alerts"])
def test_any_non_empty_recipient_without_control_characters_is_accepted(recipient: str) -> None:
    assert LogChannel(ChannelConfig()).check_recipient(recipient) is None


@pytest.mark.parametrize("recipient", ["", "   ", "dev\nteam", "dev\x00team", "\x1b[31mred"])
def test_empty_recipients_and_control_characters_are_refused(recipient: str) -> None:
    channel = LogChannel(ChannelConfig())

    assert channel.check_recipient(recipient) is not None
    with pytest.raises(PermanentError):
        channel.deliver(Notification(JOB, recipient, "hello"))


def test_control_characters_are_exactly_unicodes_category_cc():
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert has_control_characters(f"a{char}b") is (unicodedata.category(char) == "Cc"), hex(code)
