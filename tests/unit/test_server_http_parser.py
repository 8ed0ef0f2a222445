"""The server's HTTP/1.1 request parser: what arrives in pieces, pipelined or chunked, and what is refused."""

from __future__ import annotations

import pytest

from workloads.server.errors import HttpError
from workloads.server.http import CLOSE, KEEP_ALIVE_10, Request, RequestParser, build_response

BODY = b'{"rows": [[1, 2, 3]]}'
POST = (
    b"POST /v1/predict?proba=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def requests_from(parser: RequestParser, *pieces: bytes) -> list[Request | HttpError]:
    out: list[Request | HttpError] = []
    for piece in pieces:
        out += parser.feed(piece)
    return out


def only_request(items: list[Request | HttpError]) -> Request:
    assert len(items) == 1 and isinstance(items[0], Request), items
    return items[0]


def test_a_request_in_one_piece_gives_method_path_query_type_and_body() -> None:
    request = only_request(RequestParser(1024).feed(POST))
    assert (request.method, request.path, request.query) == (b"POST", b"/v1/predict", b"proba=1")
    assert (request.content_type, request.body, request.keep_alive) == (b"application/json", BODY, True)
    assert request.connection == b""


@pytest.mark.parametrize("cut", range(1, len(POST)))
def test_a_request_split_anywhere_is_reassembled(cut: int) -> None:
    parser = RequestParser(1024)
    assert only_request(requests_from(parser, POST[:cut], POST[cut:])).body == BODY
    assert not parser.in_progress


def test_pipelined_requests_come_out_in_order() -> None:
    get = b"GET /healthz HTTP/1.1\r\n\r\n"
    items = RequestParser(1024).feed(POST + get + b"\r\n" + POST)
    assert [item.path for item in items if isinstance(item, Request)] == [b"/v1/predict", b"/healthz", b"/v1/predict"]


def test_chunked_bodies_are_decoded_even_byte_by_byte() -> None:
    raw = (
        b"POST /v1/predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    )
    assert only_request(RequestParser(1024).feed(raw)).body == b"hello world"
    parser = RequestParser(1024)
    assert only_request(requests_from(parser, *(raw[i : i + 1] for i in range(len(raw))))).body == b"hello world"


def test_connection_header_and_http10_decide_keep_alive() -> None:
    close = only_request(RequestParser(64).feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"))
    old = only_request(RequestParser(64).feed(b"GET / HTTP/1.0\r\n\r\n"))
    old_kept = only_request(RequestParser(64).feed(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"))
    assert (close.keep_alive, close.connection) == (False, CLOSE)
    assert (old.keep_alive, old.connection) == (False, CLOSE)
    assert (old_kept.keep_alive, old_kept.connection) == (True, KEEP_ALIVE_10)


def test_expect_100_continue_is_flagged_only_while_the_body_is_missing() -> None:
    head = b"POST /v1/predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    parser = RequestParser(64)
    assert parser.feed(head) == [] and parser.needs_continue
    parser.needs_continue = False
    assert only_request(parser.feed(b"hello")).body == b"hello"
    whole = RequestParser(64)
    assert only_request(whole.feed(head + b"hello")).body == b"hello" and not whole.needs_continue


def test_absolute_form_targets_are_reduced_to_their_path() -> None:
    request = only_request(RequestParser(64).feed(b"GET http://host:80/readyz?x=1 HTTP/1.1\r\n\r\n"))
    assert (request.path, request.query) == (b"/readyz", b"x=1")


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 400, "expected HTTP/1.1 or HTTP/1.0"),
        (b"GET nopath HTTP/1.1\r\n\r\n", 400, "starting with '/'"),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400, "malformed header line"),
        (b"GET / HTTP/1.1\r\nBad Name : x\r\n\r\n", 400, "malformed header line"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "bad Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "only one"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "expected chunked"),
        (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413, "at most 100"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad chunk size"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"a" * 101, 413, "at most 100"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400, "longer than its declared size"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 17000, 431, "over 16384"),
    ],
)
def test_untrustworthy_input_is_refused_with_a_reason_and_closes(raw: bytes, status: int, says: str) -> None:
    items = RequestParser(100).feed(raw)
    error = items[-1]
    assert isinstance(error, HttpError), items
    assert (error.status, error.close) == (status, True)
    assert says in error.message


def test_requests_before_an_error_are_still_returned_first() -> None:
    items = RequestParser(1024).feed(POST + b"BROKEN\r\n\r\n")
    assert isinstance(items[0], Request) and isinstance(items[1], HttpError)


def test_responses_carry_length_date_and_connection_lines() -> None:
    response = build_response(422, b'{"error":"x"}', b"application/json", CLOSE, b"Allow: POST\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 422 Unprocessable Content"
    assert b"Content-Length: 13" in lines and b"Connection: close" in lines and b"Allow: POST" in lines
    assert any(line.startswith(b"Date: ") and line.endswith(b" GMT") for line in lines)
    assert body == b'{"error":"x"}'
