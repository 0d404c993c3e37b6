"""The rules a slot request must follow (slot.make_request), and what a Slot may carry."""

from __future__ import annotations

import pytest
from slixmpp import JID

from slixmpp_http_upload.slot import BadRequest, FileTooLarge, Slot, make_request


def request(filename="f.txt", size="10", content_type=None, max_file_size=None):
    return make_request(filename, size, content_type, domain="example.org", max_file_size=max_file_size)


@pytest.mark.parametrize(
    "filename",
    ["f.txt", "...", ".hidden", "a/b", "my file (1).tar.gz", "Grüße 日本 😀.png", "a" * 255, "é" * 127, "\xa0x"],
)
def test_filename_accepted(filename):
    assert request(filename=filename).filename == filename


@pytest.mark.parametrize(
    "filename, message",
    [
        (None, "The filename is missing or empty."),
        ("", "The filename is missing or empty."),
        ("a\x00b", "The filename contains control characters."),
        ("a\nb", "The filename contains control characters."),
        ("a\rb", "The filename contains control characters."),
        ("a\tb", "The filename contains control characters."),
        ("a\x7fb", "The filename contains control characters."),
        ("a\x85b", "The filename contains control characters."),
        (".", "The filename cannot be '.' or '..'."),
        ("..", "The filename cannot be '.' or '..'."),
        ("a" * 256, "The filename is longer than 255 bytes."),
        ("é" * 128, "The filename is longer than 255 bytes."),
        ("😀" * 64, "The filename is longer than 255 bytes."),
        ("a\ud800b", "The filename is not valid Unicode."),
        # the length is checked before the encoding (as 3 bytes a lone surrogate): the first rule broken
        ("a" * 300 + "\ud800", "The filename is longer than 255 bytes."),
        ("\ud800" * 86, "The filename is longer than 255 bytes."),
        ("\ud800" * 85, "The filename is not valid Unicode."),
    ],
)
def test_filename_refused(filename, message):
    with pytest.raises(BadRequest) as error:
        request(filename=filename)
    assert str(error.value) == message


@pytest.mark.parametrize("size, value", [("1", 1), ("01", 1), ("007", 7), ("10485760", 10485760), (42, 42)])
def test_size_accepted(size, value):
    assert request(size=size).size == value


@pytest.mark.parametrize("size", [None, "", "0", "00", "-1", "+1", " 1", "1 ", "1.5", "1e3", "0x10", "1_000", "abc",
                                  "１", "²", "٣", 0, -1, True, 1.0])
def test_size_refused(size):
    with pytest.raises(BadRequest, match="^The size is missing or not a positive decimal integer.$"):
        request(size=size)


@pytest.mark.parametrize(
    "content_type, value",
    [(None, None), ("", None), ("image/png", "image/png"), ("text/plain; charset=utf-8", "text/plain; charset=utf-8")],
)
def test_content_type_accepted(content_type, value):
    assert request(content_type=content_type).content_type == value


@pytest.mark.parametrize(
    "content_type, message",
    [
        ("text/plain\r\nX-Evil: 1", "The content-type contains a line break."),
        ("text/plain\n", "The content-type contains a line break."),
        ("text/plain\r", "The content-type contains a line break."),
        ("text/plain\tx", "The content-type must be printable ASCII."),
        ("text/plain; name=é", "The content-type must be printable ASCII."),
        ("text/\x7f", "The content-type must be printable ASCII."),
    ],
)
def test_content_type_refused(content_type, message):
    with pytest.raises(BadRequest) as error:
        request(content_type=content_type)
    assert str(error.value) == message


def test_content_type_length():
    assert request(content_type="a/" + "b" * 253).content_type == "a/" + "b" * 253
    with pytest.raises(BadRequest, match="^The content-type is longer than 255 characters.$"):
        request(content_type="a/" + "b" * 254)


@pytest.mark.parametrize("size", ["9" * 21, "9" * 5000])
def test_size_with_too_many_digits_is_a_bad_request(size):
    with pytest.raises(BadRequest, match="^The size has more than 20 digits.$"):
        request(size=size, max_file_size=10)


@pytest.mark.parametrize("size", [str(2**63), "9" * 20, 2**63])
def test_size_larger_than_any_file_is_a_bad_request(size):
    # the ledger stores sizes as SQLite integers: 2^63-1 at most, whatever max_file_size
    with pytest.raises(BadRequest, match="^The size is larger than any file can be.$"):
        request(size=size, max_file_size=None)
    assert request(size=str(2**63 - 1)).size == 2**63 - 1


def test_max_file_size():
    assert request(size="1000", max_file_size=1000).size == 1000
    assert request(size=str(10**18), max_file_size=None).size == 10**18
    with pytest.raises(FileTooLarge) as error:
        request(size="1001", max_file_size=1000)
    assert str(error.value) == "Declared file size exceeds the host's maximum file size."
    assert error.value.max_file_size == 1000


def test_request_keeps_domain_and_requester():
    alice = JID("alice@example.org/phone")
    made = make_request("f", 1, None, domain="example.org", max_file_size=None, requester=alice)
    assert (made.domain, made.requester) == ("example.org", alice)


@pytest.mark.parametrize("name", ["Authorization", "cookie", "EXPIRES"])
def test_slot_allows_xep0363_headers(name):
    assert Slot("https://h/p?q", "https://h/p", ((name, "value"),)).put_headers == ((name, "value"),)


@pytest.mark.parametrize(
    "header, message",
    [
        (("x-amz-acl", "public-read"), "forbids handing the header 'x-amz-acl'"),
        (("Content-Type", "text/plain"), "forbids handing the header 'Content-Type'"),
        (("Host", "h"), "forbids handing the header 'Host'"),
        (("Authorization", "a\r\nX-Evil: 1"), "contains a line break"),
        (("Cookie", "a\nb"), "contains a line break"),
    ],
)
def test_slot_refuses_other_headers(header, message):
    with pytest.raises(ValueError, match=message):
        Slot("https://h/p?q", "https://h/p", (header,))


@pytest.mark.parametrize("url", ["https://h/a b", "https://h/\x00", "https://h/é", "https://h/\n", ""])
def test_slot_refuses_urls_that_are_not_printable_ascii(url):
    with pytest.raises(ValueError, match="a slot URL must be printable ASCII without spaces"):
        Slot(url, "https://h/p")
    with pytest.raises(ValueError, match="a slot URL must be printable ASCII without spaces"):
        Slot("https://h/p", url)
    with pytest.raises(ValueError, match="a slot URL must be printable ASCII without spaces"):
        Slot(url, url)  # the same URL for both: still checked
    with pytest.raises(ValueError, match="a slot URL must be printable ASCII without spaces"):
        Slot(url + "?q", url)  # a GET URL where the PUT URL starts: checked through it
