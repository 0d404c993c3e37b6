"""The XML of XEP-0363 in its three dialects: reading a request, writing a slot or a
``<file-too-large/>`` error, each in the namespace the client asked in.

=====================================  ===================================  ===================
namespace                              request fields                       slot URLs
=====================================  ===================================  ===================
``urn:xmpp:http:upload:0``             attributes (child elements accepted)  ``url`` attributes
``urn:xmpp:http:upload`` (v0.2)        child elements                       element text
``eu:siacs:conversations:http:upload`` child elements                       element text
=====================================  ===================================  ===================

These are plain ElementTree builders, not slixmpp stanza plugins: a request can come in any of
three namespaces and the built-in *client* plugin (``xep_0363``) already claims the ``:0``
stanza classes on ``Iq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple
from xml.etree import ElementTree as ET

from .purposes import NS_PURPOSE
from .replies import escape_attribute, escape_text
from .slot import Slot

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_LEGACY = "urn:xmpp:http:upload"
NS_SIACS = "eu:siacs:conversations:http:upload"
FIELDS = ("filename", "size", "content-type")
_PURPOSE_PREFIX = f"{{{NS_PURPOSE}}}"


class RawRequest(NamedTuple):
    """The request's fields as sent, not yet checked (None where absent)."""

    filename: str | None
    size: str | None
    content_type: str | None
    purpose: str | None = None
    """The local name of the purpose element (``:0`` only), None when there is none."""
    expire_before: str | None = None


@dataclass(frozen=True)
class Dialect:
    """One namespace of XEP-0363 and how it spells requests and slots."""

    namespace: str
    attributes: bool
    """True for ``:0``: fields as attributes, URLs as ``url`` attributes, headers allowed."""

    @property
    def request_tag(self) -> str:
        return f"{{{self.namespace}}}request"

    def read_request(self, request: ET.Element) -> RawRequest:
        filename = request.get("filename") if self.attributes else None
        if filename is not None:
            size, content_type = request.get("size"), request.get("content-type")
        else:  # legacy dialects, and old clients that sent child elements under ``:0``
            filename, size, content_type = (request.findtext(f"{{{self.namespace}}}{name}") for name in FIELDS)
        if self.attributes and len(request):  # purposes came with XEP-0363 1.2, in ``:0`` only
            for child in request:
                if child.tag.startswith(_PURPOSE_PREFIX):
                    purpose, expire_before = child.tag[len(_PURPOSE_PREFIX) :], child.get("expire-before")
                    return RawRequest(filename, size, content_type, purpose, expire_before)
        return RawRequest(filename, size, content_type)

    def slot_xml(self, slot: Slot) -> str:
        """The ``<slot/>`` element as text, as slixmpp's ``tostring`` writes it inside a reply."""
        if self.attributes:  # URLs are printable ASCII (``Slot`` checks): no tab, LF or CR to write as references
            put_url = escape_text(slot.put_url)
            get = f'<get url="{escape_text(slot.get_url)}" />'
            if not slot.put_headers:
                return f'<slot xmlns="{self.namespace}"><put url="{put_url}" />{get}</slot>'
            headers = "".join(
                f'<header name="{escape_attribute(name)}">{escape_text(value)}</header>' for name, value in slot.put_headers
            )
            return f'<slot xmlns="{self.namespace}"><put url="{put_url}">{headers}</put>{get}</slot>'
        if slot.put_headers:
            raise ValueError(f"the slot needs PUT headers, which {self.namespace} cannot carry")
        return (
            f'<slot xmlns="{self.namespace}"><put>{escape_text(slot.put_url)}</put>'
            f"<get>{escape_text(slot.get_url)}</get></slot>"
        )

    def retry_element(self, when: datetime) -> ET.Element:
        """``<retry stamp=…/>``: when a temporarily refused requester may ask again (XEP-0082 UTC)."""
        stamp = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return ET.Element(f"{{{self.namespace}}}retry", stamp=stamp)

    def file_too_large_element(self, max_file_size: int) -> ET.Element:
        element = ET.Element(f"{{{self.namespace}}}file-too-large")
        ET.SubElement(element, f"{{{self.namespace}}}max-file-size").text = str(max_file_size)
        return element


CURRENT = Dialect(NS_UPLOAD, attributes=True)
LEGACY = (Dialect(NS_LEGACY, attributes=False), Dialect(NS_SIACS, attributes=False))
