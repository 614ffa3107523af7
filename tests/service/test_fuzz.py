"""Fuzzing the upload parsers: random and mutated files never crash a decoder or yield a 500."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.decode import DecodeError, decode_audio, decode_image

from .conftest import audio_bytes, image_bytes, tone

SEEDS = [image_bytes(fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP")] + [
    audio_bytes(tone(seconds=0.2, sr=8000), sr=8000, fmt=fmt, subtype=sub)
    for fmt, sub in (("WAV", None), ("FLAC", None), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III"))]


@st.composite
def uploads(draw) -> bytes:
    """Random bytes, or a valid file of some format with a few bytes overwritten and/or cut short."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for pos, value in draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)):
        data[pos % len(data)] = value
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VIA_HTTP = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FAST
@given(uploads())
def test_decoders_raise_only_decode_errors(data):
    for decode in (lambda: decode_image(data, (8, 8), 10**6), lambda: decode_audio(data, 10.0)):
        try:
            out = decode()
        except DecodeError as e:
            assert e.status_code in (400, 413, 415) and e.detail
        else:
            if isinstance(out, tuple):
                assert out[0].ndim == 1 and out[0].size > 0 and out[1] > 0
            else:
                assert tuple(out.shape) == (3, 8, 8)


@VIA_HTTP
@given(data=uploads(), name=st.text(max_size=20))
def test_routes_never_500(client, data, name):
    for route in ("/classify", "/transcribe"):
        r = client.post(route, files={"file": (name or "f", data)})
        assert r.status_code in (200, 400, 413, 415), (route, r.status_code, r.text)
        if r.status_code != 200:
            assert r.json()["detail"]


@VIA_HTTP
@given(body=st.binary(max_size=300), boundary=st.sampled_from(["x", "dcn", ""]))
def test_malformed_multipart_never_500(client, body, boundary):
    r = client.post("/classify", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code in (400, 413, 415, 422) and r.json()["detail"]

