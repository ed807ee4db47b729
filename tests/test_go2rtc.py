"""go2rtc client, Registrar and YAML snippets against the go2rtc stand-in on loopback."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from go2rtc_standin import Go2rtcStandin
from pydantic import SecretStr

from deid_sidecar.config import load_yaml_strict, parse_config
from deid_sidecar.core.redact import mask_secrets, mask_url
from deid_sidecar.outputs import go2rtc, go2rtc_api, retry
from deid_sidecar.outputs.go2rtc import Registrar, registrar_for, registration_sources, render_yaml_snippets
from deid_sidecar.outputs.go2rtc_api import FrigateGo2rtcClient, Go2rtcClient, Go2rtcError

SRC = "http://deid-sidecar:8080/streams/front_anon.ts"
Scenario = Callable[[Go2rtcStandin, aiohttp.ClientSession], Awaitable[None]]


def with_standin(scenario: Scenario, **options: Any) -> None:
    async def main() -> None:
        standin = Go2rtcStandin(**options)
        await standin.start()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(standin, session)
        finally:
            await standin.stop()
        assert "PATCH" not in standin.methods, "the client must never PATCH (alias leak)"

    run(main())


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BACKOFF_S", (0.05, 0.05, 0.1))
    monkeypatch.setattr(go2rtc_api, "REQUEST_TIMEOUT_S", 2.0)


# --- the stand-in behaves as observed on go2rtc 1.9.14 --------------------------------------------


def test_standin_matches_observed_go2rtc() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        api = f"{standin.url}/api/streams"
        async with session.put(f"{api}?name=x") as r:  # no src: 200 + list, nothing created
            assert r.status == 200 and await r.json() == {}
        async with session.put(f"{api}?src=rtsp://cam/1") as r:  # no name: named after the URL
            assert r.status == 200 and "rtsp://cam/1" in standin.streams
        async with session.put(f"{api}?name=a&src=rtsp://cam/a+b") as r:  # raw '+' is a space
            assert r.status == 400 and "spaces" in await r.text()
        async with session.put(f"{api}?name=a&src=exec:ffmpeg") as r:
            assert r.status == 400 and "insecure producer" in await r.text()
        async with session.put(f"{api}?name=a&src=magic://x") as r:
            assert r.status == 400 and "not supported" in await r.text()
        async with session.delete(f"{api}?name=rtsp://cam/1") as r:  # ?name= deletes nothing
            assert r.status == 200 and "rtsp://cam/1" in standin.streams
        async with session.delete(f"{api}?src=nothing") as r:
            assert r.status == 200
        async with session.get(f"{api}?src=nothing") as r:
            assert r.status == 404
        async with session.patch(f"{api}?name=leak&src=rtsp://cam/1") as r:
            assert r.status == 200 and standin.aliases == {"leak": "rtsp://cam/1"}
        assert "leak" not in standin.file
        standin.requests.clear()  # the PATCH above was the stand-in's own check, not the client's

    with_standin(scenario)


# --- client -------------------------------------------------------------------------------------------


def test_put_get_delete_and_file_write_back() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        client = Go2rtcClient(standin.url, None, None, session)
        assert await client.put_stream("front_anon", [SRC]) == "saved"
        assert standin.file == {"front_anon": [SRC]}
        stream = await client.get_stream("front_anon")
        assert stream is not None and stream["producers"] == [{"url": SRC}]
        assert await client.get_stream("missing") is None
        assert set(await client.list_streams()) == {"front_anon"}
        await client.delete_stream("front_anon")
        assert standin.streams == {} and standin.file == {}
        for method, _, query in standin.requests:
            if method == "PUT":
                assert query.startswith("name=front_anon&src="), "always both name and src"

    with_standin(scenario)


@pytest.mark.parametrize(
    "source",
    [
        f"{SRC}?token=a+b/c=d",  # '+' must not become a space
        "ffmpeg:rtsp://cam/x#video=h264#hardware",  # '#' must not end the URL
        f"{SRC}?token=%41&x=1",  # '%' and '&' stay literal
    ],
)
def test_sources_are_percent_encoded(source: str) -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        client = Go2rtcClient(standin.url, None, None, session)
        await client.put_stream("front_anon", [source, SRC])
        assert standin.streams["front_anon"] == [source, SRC]

    with_standin(scenario)


def test_refusal_quotes_go2rtc() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        client = Go2rtcClient(standin.url, None, None, session)
        with pytest.raises(Go2rtcError, match="insecure producer"):
            await client.put_stream("front_anon", ["exec:ffmpeg"])
        with pytest.raises(ValueError, match="src"):
            await client.put_stream("front_anon", [])

    with_standin(scenario)


def test_config_file_disabled_is_applied_not_persisted(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        client = Go2rtcClient(standin.url, None, None, session)
        with caplog.at_level(logging.WARNING, logger=go2rtc_api.__name__):
            assert await client.put_stream("front_anon", [SRC]) == "not_persisted"
            assert await client.put_stream("back_anon", [SRC]) == "not_persisted"
        assert set(standin.streams) == {"front_anon", "back_anon"} and standin.file == {}
        assert len([r for r in caplog.records if "in memory only" in r.message]) == 1, "warned once"
        await client.delete_stream("front_anon")
        assert "front_anon" not in standin.streams

    with_standin(scenario, config_file_disabled=True)


def test_basic_auth_sent_and_never_leaked() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        good = Go2rtcClient(standin.url, "admin", SecretStr("hunter2"), session)
        assert await good.put_stream("front_anon", [SRC]) == "saved"
        bad = Go2rtcClient(standin.url, "admin", SecretStr("wrong-pw"), session)
        with pytest.raises(Go2rtcError) as refused:
            await bad.list_streams()
        assert "401" in str(refused.value) and "wrong-pw" not in str(refused.value)
        anonymous = Go2rtcClient(standin.url, None, None, session)
        with pytest.raises(Go2rtcError, match=r"go2rtc\.username"):
            await anonymous.list_streams()
        # Credentials in the URL move to the header and stay out of error text.
        in_url = Go2rtcClient(standin.url.replace("//", "//admin:hunter2@"), None, None, session)
        assert "front_anon" in await in_url.list_streams()
        await standin.stop()
        with pytest.raises(Go2rtcError) as down:
            await in_url.list_streams()
        assert "hunter2" not in str(down.value) and "admin" not in str(down.value)

    with_standin(scenario, username="admin", password="hunter2", require_auth=True)


def test_frigate_proxy() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        client = FrigateGo2rtcClient(standin.url, None, None, session)
        assert await client.put_stream("front_anon", [f"{SRC}?token=a+b"]) == "saved"
        assert standin.streams == {"front_anon": [f"{SRC}?token=a+b"]}
        assert (await client.get_stream("front_anon")) is not None
        await client.delete_stream("front_anon")
        assert standin.streams == {}
        assert {path for _, path, _ in standin.requests} <= {
            "/api/go2rtc/streams",
            "/api/go2rtc/streams/front_anon",
        }

    with_standin(scenario)


def test_client_code_has_no_patch() -> None:
    source = inspect.getsource(go2rtc)
    assert '"PATCH"' not in source and ".patch(" not in source


# --- registrar ------------------------------------------------------------------------------------


def test_registrar_registers_and_repairs_after_restart() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        wanted = {"front_anon": [SRC], "back_anon": [SRC.replace("front", "back")]}
        registrar = Registrar(Go2rtcClient(standin.url, None, None, session), wanted, interval_s=0.2)
        task = asyncio.create_task(registrar.run())
        await eventually(lambda: standin.file == wanted)
        puts = registrar.status.puts
        await asyncio.sleep(0.5)
        assert registrar.status.puts == puts, "nothing re-sent while registrations hold"
        standin.restart(keep_file=False)  # Frigate rewrote go2rtc's file on start
        assert standin.streams == {}
        await eventually(lambda: standin.streams == wanted, 2.0)
        standin.streams["front_anon"] = ["rtsp://someone/else"]  # changed behind our back
        await eventually(lambda: standin.streams["front_anon"] == [SRC], 2.0)
        assert registrar.status.last_error == "" and registrar.status.last_ok is not None
        await registrar.close(remove=True)
        await asyncio.wait_for(task, 2)  # the loop exits after close
        assert standin.streams == {} and standin.file == {}

    with_standin(scenario)


def test_a_stream_added_while_running_is_registered_at_once_and_a_removed_one_deleted() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        front = {"front_anon": [SRC]}
        registrar = Registrar(Go2rtcClient(standin.url, None, None, session), front, interval_s=60)
        task = asyncio.create_task(registrar.run())
        await eventually(lambda: standin.streams == front)
        yard = SRC.replace("front", "yard")
        registrar.add("yard_anon", [yard])  # a camera added in the web UI
        await eventually(lambda: standin.streams.get("yard_anon") == [yard], 2.0)  # not after 60 s
        await registrar.remove("yard_anon")
        assert standin.streams == front and "yard_anon" not in standin.file
        standin.restart(keep_file=False)
        registrar.wake()
        await eventually(lambda: standin.streams == front, 2.0)  # the removed one stays removed
        await registrar.close(remove=False)
        await asyncio.wait_for(task, 2)

    with_standin(scenario)


def test_a_go2rtc_restarted_without_our_streams_serves_them_again_within_5_s_by_default() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        config = parse_config(
            {"go2rtc": {"url": standin.url}, "cameras": {"front": {"source": "go2rtc:front"}}}
        )
        registrar = registrar_for(config, session)
        task = asyncio.create_task(registrar.run())
        await eventually(lambda: "front_anon" in standin.streams)
        await asyncio.sleep(0.5)  # between two checks, as a restart would be
        standin.restart(keep_file=False)  # Frigate rewrote go2rtc's config on its start
        lost = time.monotonic()
        await eventually(lambda: "front_anon" in standin.streams, 6.0)
        assert time.monotonic() - lost <= 5.0
        await registrar.close(remove=False)
        await asyncio.wait_for(task, 2)

    with_standin(scenario)


def test_each_streams_registration_state_is_reported() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        states: list[tuple[str, str]] = []
        registrar = Registrar(Go2rtcClient(standin.url, None, None, session), {"front_anon": [SRC]}, 0.2)
        registrar.on_state = lambda name, state: states.append((name, state))
        registrar.add("bad_anon", ["exec:ffmpeg"])  # go2rtc refuses exec: through its API
        task = asyncio.create_task(registrar.run())
        await eventually(lambda: ("front_anon", "registered") in states and ("bad_anon", "refused") in states)
        assert "front_anon" in standin.streams, "a refused stream does not hold up the others"
        port = standin.port
        await standin.stop()
        await eventually(lambda: states[-1][1] == "unreachable", 3.0)
        await standin.start(port)
        await eventually(
            lambda: states[-1] == ("front_anon", "registered") or states[-1][1] == "refused", 3.0
        )
        await registrar.close(remove=False)
        await asyncio.wait_for(task, 2)
        assert [s for s in states if s[0] == "front_anon"][-1] == ("front_anon", "registered")

    with_standin(scenario)


def test_registrar_backs_off_while_go2rtc_is_down_and_masks_errors() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        port = standin.port
        await standin.stop()
        url = f"http://user:sekret@127.0.0.1:{port}"
        registrar = Registrar(Go2rtcClient(url, None, None, session), {"front_anon": [SRC]}, interval_s=60)
        task = asyncio.create_task(registrar.run())
        await eventually(lambda: "unreachable" in registrar.status.last_error)
        assert "sekret" not in registrar.status.last_error
        await standin.start(port)  # go2rtc is back: the stepped backoff (patched short) retries soon
        await eventually(lambda: "front_anon" in standin.streams, 3.0)
        await registrar.close(remove=False)
        await asyncio.wait_for(task, 2)
        assert "front_anon" in standin.file, "remove=False keeps the registration"

    with_standin(scenario)


def test_a_newer_run_retires_the_old_loop() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        registrar = Registrar(Go2rtcClient(standin.url, None, None, session), {"a_anon": [SRC]}, 0.1)
        first = asyncio.create_task(registrar.run())
        await eventually(lambda: "a_anon" in standin.streams)
        second = asyncio.create_task(registrar.run())
        await asyncio.wait_for(first, 2)  # stale generation exits on its own
        assert not second.done()
        await registrar.close(remove=False)
        await asyncio.wait_for(second, 2)

    with_standin(scenario)


# --- from the config ------------------------------------------------------------------------------

CONFIG = {
    "server": {"stream_token": "tok+en/1-0123456789"},
    "go2rtc": {"sidecar_url": "http://deid:8080/", "username": "u", "password": "pw-secret"},
    "cameras": {
        "front": {"source": "rtsp://admin:cam-secret@10.0.0.5:554/h264"},
        "back": {"source": "go2rtc:back", "output": {"name": "back_private"}},
        "off": {"source": "go2rtc:off", "enabled": False},
    },
}


def test_registration_sources() -> None:
    config = parse_config(CONFIG)
    assert registration_sources(config) == {
        "front_anon": ["http://deid:8080/streams/front_anon.ts?token=tok%2Ben%2F1-0123456789"],
        "back_private": ["http://deid:8080/streams/back_private.ts?token=tok%2Ben%2F1-0123456789"],
    }


def test_registrar_for_config_registers_through_the_standin() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        config = parse_config({**CONFIG, "go2rtc": {**CONFIG["go2rtc"], "url": standin.url}})
        registrar = registrar_for(config, session)
        await registrar.reconcile()
        assert standin.streams["front_anon"] == registration_sources(config)["front_anon"]
        assert set(standin.streams) == {"front_anon", "back_private"}

    with_standin(scenario, username="u", password="pw-secret", require_auth=True)


def test_registrar_for_config_masks_the_stream_token_in_any_form() -> None:
    async def scenario(standin: Go2rtcStandin, session: aiohttp.ClientSession) -> None:
        registrar = registrar_for(parse_config(CONFIG), session)
        # go2rtc echoing the source percent-encoded (no `?token=` for mask_url to see) or decoded.
        registrar._record_error(
            "register failed: src=http%3A%2F%2Fdeid%3A8080%2Fstreams%2Ffront_anon.ts%3Ftoken%3D"
            "tok%2Ben%2F1-0123456789 (token tok+en/1-0123456789)",
            logging.DEBUG,
        )
        assert registrar.status.last_error == (
            "register failed: src=http%3A%2F%2Fdeid%3A8080%2Fstreams%2Ffront_anon.ts%3Ftoken%3D***"
            " (token ***)"
        )

    with_standin(scenario)


def strict_yaml(text: str) -> Any:
    """Parsed as go2rtc and Frigate parse it: a key given twice refuses the whole file."""
    return load_yaml_strict(text, "snippet")


def test_go2rtc_snippet_is_one_valid_file_with_only_the_anonymized_streams() -> None:
    text = render_yaml_snippets(parse_config(CONFIG), "go2rtc")
    assert text.startswith("#")
    for secret in ("cam-secret", "admin:", "pw-secret", "tok+en", "tok%2Ben"):
        assert secret not in text
    document = strict_yaml(text)
    assert document == {
        "streams": {
            "front_anon": "http://deid:8080/streams/front_anon.ts?token=${DEID_STREAM_TOKEN}",
            "back_private": "http://deid:8080/streams/back_private.ts?token=${DEID_STREAM_TOKEN}",
        }
    }


def test_frigate_snippet_is_one_valid_file_whose_cameras_see_only_the_anonymized_restream() -> None:
    text = render_yaml_snippets(parse_config(CONFIG), "frigate")
    for secret in ("cam-secret", "admin:", "pw-secret", "tok+en", "tok%2Ben"):
        assert secret not in text
    document = strict_yaml(text)  # one `cameras:` key, which the pasted old output had twice
    assert set(document) == {"go2rtc", "cameras"}
    assert set(document["go2rtc"]["streams"]) == {"front_anon", "back_private"}  # no raw stream
    assert "{FRIGATE_DEID_STREAM_TOKEN}" in document["go2rtc"]["streams"]["front_anon"]
    back = document["cameras"]["back"]
    assert back["live"]["streams"] == {"Anonymized": "back_private"}
    (restream,) = back["ffmpeg"]["inputs"]
    assert restream["path"] == "rtsp://127.0.0.1:8554/back_private"
    assert restream["input_args"] == "preset-rtsp-restream" and restream["roles"] == ["record", "detect"]


def test_yaml_without_token() -> None:
    config = parse_config({"cameras": {"gate": {"source": "go2rtc:gate"}}})
    assert strict_yaml(render_yaml_snippets(config)) == {
        "streams": {"gate_anon": "http://deid-sidecar:8080/streams/gate_anon.ts"}
    }


# --- redaction ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:pw@cam:554/x", "rtsp://***@cam:554/x"),
        ("rtsp://admin@cam/x", "rtsp://***@cam/x"),
        ("error opening 'rtsp://a:b@c/d': 401", "error opening 'rtsp://***@c/d': 401"),
        ("http://h/streams/a.ts?token=abc&x=1", "http://h/streams/a.ts?token=***&x=***"),
        ("http://h/x?a=1&password=p", "http://h/x?a=***&password=***"),
        ("rtsp://cam/x", "rtsp://cam/x"),
        ("user@example.com", "user@example.com"),
    ],
)
def test_mask_url(text: str, expected: str) -> None:
    assert mask_url(text) == expected


def test_mask_secrets() -> None:
    assert mask_secrets("bad password hunter2", "hunter2", None) == "bad password ***"
