"""The one redactor: URL userinfo and EVERY query value are masked wherever text leaves the process."""

from __future__ import annotations

import logging

import pytest

from deid_sidecar.config import Go2rtcConfig
from deid_sidecar.core.redact import RedactingFormatter, inline_password, mask_secrets, mask_url
from deid_sidecar.sources.spec import parse_source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # every query value, whatever its key is called
        ("http://h/x?a=1&b=2", "http://h/x?a=***&b=***"),
        ("http://h/streams/a.ts?token=abc&x=1", "http://h/streams/a.ts?token=***&x=***"),
        ("rtsp://cam/live?channel=1&auth=Zm9vOmJhcg", "rtsp://cam/live?channel=***&auth=***"),
        ("http://h/x?key=a=b=c", "http://h/x?key=***"),
        ("http://h/x?a=&b=2#frag", "http://h/x?a=***&b=***#frag"),
        ("GET /streams/a_anon.ts?token=s3cret HTTP/1.1", "GET /streams/a_anon.ts?token=*** HTTP/1.1"),
        # a bare flag has no value to hide
        ("rtsp://go2rtc:8554/front?video", "rtsp://go2rtc:8554/front?video"),
        # every userinfo, with or without a password
        ("rtsp://admin:pw@cam:554/x", "rtsp://***@cam:554/x"),
        ("rtsp://admin@cam/x", "rtsp://***@cam/x"),
        ("rtsp://admin:p@ss@cam/x", "rtsp://***@cam/x"),  # an unencoded '@' in the password
        ("http://u:p@[fe80::1]:8080/x?t=1", "http://***@[fe80::1]:8080/x?t=***"),
        ("error opening 'rtsp://a:b@c/d': 401", "error opening 'rtsp://***@c/d': 401"),
        ("two: rtsp://a:b@c/d and http://e:f@g/?h=i", "two: rtsp://***@c/d and http://***@g/?h=***"),
        # nothing to hide
        ("rtsp://cam/x", "rtsp://cam/x"),
        ("user@example.com", "user@example.com"),
        ("event_threshold must be >= threshold", "event_threshold must be >= threshold"),
    ],
)
def test_mask_url(text: str, expected: str) -> None:
    assert mask_url(text) == expected


def test_mask_url_is_idempotent() -> None:
    once = mask_url("rtsp://admin:pw@cam/x?token=abc")
    assert mask_url(once) == once == "rtsp://***@cam/x?token=***"


def test_mask_secrets_masks_urls_and_the_literal_secrets_given() -> None:
    assert mask_secrets("bad password hunter2 for http://h/?t=1", "hunter2", None, "") == (
        "bad password *** for http://h/?t=***"
    )


@pytest.mark.parametrize(
    ("url", "inline"),
    [
        ("rtsp://admin:hunter2@cam/x", True),
        ("http://admin:hunter2@cam/x", True),
        ("rtsp://admin:${CAM_PW:-hunter2}@cam/x", True),  # the default is written in the file
        ("rtsp://admin:pre${CAM_PW}@cam/x", True),
        ("rtsp://admin:${CAM_PW}@cam/x", False),
        ("rtsp://${CAM_USER}:${CAM_PW}@cam/x", False),
        ("rtsp://${CAM_CREDENTIALS}@cam/x", False),
        ("rtsp://admin@cam/x", False),
        ("rtsp://admin:@cam/x", False),
        ("rtsp://cam:554/x", False),
        ("go2rtc:front", False),
    ],
)
def test_inline_password(url: str, inline: bool) -> None:
    assert inline_password(url) is inline


def test_the_log_formatter_masks_message_arguments_and_tracebacks() -> None:
    formatter = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise OSError("cannot open rtsp://admin:hunter2@cam/x?token=t0k3n")
    except OSError as exc:
        record = logging.LogRecord(
            "deid_sidecar",
            logging.WARNING,
            __file__,
            1,
            "%s failed",
            ("http://u:p@h/?k=v",),
            (type(exc), exc, None),
        )
    text = formatter.format(record)
    assert text.startswith("WARNING http://***@h/?k=*** failed")
    assert "OSError: cannot open rtsp://***@cam/x?token=***" in text
    for secret in ("hunter2", "t0k3n", "u:p", "k=v"):
        assert secret not in text


def test_a_source_is_displayed_with_its_credentials_masked() -> None:
    go2rtc = Go2rtcConfig.model_validate({"username": "admin", "password": "hunter2"})
    spec = parse_source("go2rtc:front", go2rtc)
    assert spec.url == "rtsp://admin:hunter2@go2rtc:8554/front?video"
    assert spec.display == "rtsp://***@go2rtc:8554/front?video"
    assert parse_source("http://cam/x.ts?user=a&pwd=b", go2rtc).display == "http://cam/x.ts?user=***&pwd=***"


def test_a_quoted_url_keeps_the_rest_of_the_line() -> None:
    assert mask_url("open 'rtsp://h/s?token=abc' failed") == "open 'rtsp://h/s?token=***' failed"
    assert mask_url('{"url": "http://h/?k=v", "fps": 1}') == '{"url": "http://h/?k=***", "fps": 1}'


def test_literal_secrets_go_before_the_url_patterns_cut_them() -> None:
    text = "rtsp://cam:pa@ss/w0rd@10.0.0.2/live refused"
    assert "ss/w0rd" not in mask_secrets(text, "pa@ss/w0rd")
