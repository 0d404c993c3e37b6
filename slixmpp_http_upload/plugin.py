"""The slixmpp plugin ``http_upload_server``: answers XEP-0363 slot requests.

A request goes: :class:`~slixmpp_http_upload.guard.StreamGuard` (a filter on the stream)
answers or drops what would break the stream (malformed addresses, several payloads, too many
elements); the handler :meth:`HttpUploadServer._on_request` checks the IQ type, then, inline and
in stanza order, who asks, the fields and the purpose. When nothing has to be awaited (no policy
hook, a backend whose ``slot_now`` makes the slot at once, and nothing of the same requester's
queued before it under the iqdisc) the slot is made, recorded in the ledger and sent right away;
otherwise :meth:`HttpUploadServer._answer` goes to the iqdisc dispatcher, which asks the policy
hook, the limits (:class:`~slixmpp_http_upload.accounting.Accounting`) and the backend, and does
the same. Every reply is built by :mod:`slixmpp_http_upload.replies`, from the request's
addresses and id alone, and sent by :class:`~slixmpp_http_upload.wire.ReplyWriter`.

Config: every ``[http_upload]`` option (same checks and messages) — or ``settings``, the same
already checked (:class:`~slixmpp_http_upload.config.UploadSettings`) — plus ``domain`` (the
served domain; by default taken from the component's JID through ``host``, or a bot's own
domain), ``backend_instance`` (a ready :class:`~slixmpp_http_upload.backends.Backend`),
``policy`` (see :mod:`slixmpp_http_upload.access`), ``accounting`` (a ready
:class:`~slixmpp_http_upload.accounting.Accounting`, shared by components; by default one of its
own over the ``ledger`` file), and ``own_stream``: True when nothing but slixmpp and this plugin
handles or filters the stream (``serve``'s components): the replies of one turn of the event
loop then leave in one write. ``serve``'s streams
(:class:`~slixmpp_http_upload.serve.UploadComponent`) also hand each plain slot request to
:meth:`HttpUploadServer.take_element` as the element read, before slixmpp builds a stanza object
of it, and write the replies to one read when it is done. A bot's stream keeps slixmpp's road,
so its own handlers and filters see what they saw.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar
from xml.etree import ElementTree as ET

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.plugins import BasePlugin
from slixmpp.stanza import Iq
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from . import replies
from .access import AccessRules, Policy, TryLater
from .accounting import Accounting, open_ledger
from .backends import Backend, create_backend
from .config import UploadSettings, parse_upload_settings
from .dispatch import being_cancelled, make_dispatcher
from .domains import normalise_domain, same_jid
from .guard import StreamGuard
from .limits import OverLimit, Usage
from .metrics import SlotMetrics
from .options import ConfigError
from .pending import PendingRequests
from .purposes import PurposeNotServed, choose
from .replies import Received, Request
from .slot import BadRequest, FileTooLarge, Slot, SlotRequest, SlotsUnavailable, make_request
from .stanza import CURRENT, LEGACY, Dialect

log = logging.getLogger(__name__)

PLUGIN_ONLY_OPTIONS = ("settings", "domain", "backend_instance", "policy", "accounting", "own_stream")
HANDLER_NAME = "XEP-0363 slot request"
SHUTTING_DOWN = "The upload service is shutting down; try again later."


class RequestMatcher(MatcherBase):
    """Matches an IQ to the service JID whose payload is a ``<request/>`` of a served dialect.

    The service JID is ``xmpp.boundjid``, read at each match (a bot's is known once bound). An
    IQ to any other JID at the component is left to slixmpp, which answers it as it answers any
    IQ nothing handles."""

    def __init__(self, tags: set[str], xmpp: BaseXMPP) -> None:
        super().__init__(tags)
        self.xmpp = xmpp

    def match(self, stanza: Any) -> bool:
        xml = stanza.xml
        if stanza.name != "iq" or not any(child.tag in self._criteria for child in xml):
            return False
        service = self.xmpp.boundjid
        return xml.get("to") == service.full or same_jid(stanza["to"], service)  # the usual case unparsed


class HttpUploadServer(BasePlugin):
    name = "http_upload_server"
    description = "XEP-0363: HTTP File Upload (service)"
    dependencies = {"xep_0030", "xep_0004", "xep_0128"}
    default_config: ClassVar[dict[str, Any]] = {}

    settings: UploadSettings
    backend: Backend
    metrics: SlotMetrics

    def plugin_init(self) -> None:
        self.settings = self._settings()
        self.backend = self.config.get("backend_instance") or create_backend(self.settings, path=self.name)
        self.policy: Policy | None = self.config.get("policy")
        self.own_accounting = "accounting" not in self.config
        self.accounting: Accounting = self.config.get("accounting") or Accounting(
            self.settings, open_ledger(self.settings, self.name)
        )
        service_jid = self.xmpp.boundjid.bare
        self.rules = AccessRules(self._served_domain(service_jid), self.settings.allow, self.settings.deny)
        self.dispatcher = make_dispatcher(self.settings.iqdisc, self.settings.queue_size)
        self.pending = PendingRequests()
        self.metrics = SlotMetrics(service_jid)
        dialects = (CURRENT, *LEGACY) if self.settings.legacy_namespaces else (CURRENT,)
        self.dialects = {dialect.request_tag: dialect for dialect in dialects}
        self.matcher = RequestMatcher(set(self.dialects), self.xmpp)  # lets only IQs through
        self.xmpp.register_handler(Callback(HANDLER_NAME, self.matcher, self._on_request))  # type: ignore[arg-type]
        self.guard = StreamGuard(self.xmpp, frozenset(self.dialects))
        self.writer = self.guard.writer
        self.writer.coalesce = bool(self.config.get("own_stream"))
        self.guard.install()
        self.advertised_jid: JID | None = None
        self._advertise()
        self.xmpp.add_event_handler("session_bind", self._advertise)
        self.xmpp.add_event_handler("session_end", self._on_session_end)

    def plugin_end(self) -> None:
        self.xmpp.remove_handler(HANDLER_NAME)
        self.guard.remove()
        self.xmpp.del_event_handler("session_bind", self._advertise)
        self.xmpp.del_event_handler("session_end", self._on_session_end)
        self.dispatcher.close()
        self._withdraw()
        if self.own_accounting:
            self.accounting.ledger.close()

    def _on_session_end(self, event: Any) -> None:
        """The stream is gone, and with it every pending reply: drop the queued and running
        requests (the dispatcher starts again on the next session's first request)."""
        self.dispatcher.close()
        self.pending.forget()

    async def drain(self, timeout: float) -> None:
        """Stop taking slot requests (``wait/service-unavailable``), answer the pending ones for
        up to ``timeout`` seconds, then refuse the rest the same way; ``serve`` calls this on
        SIGINT or SIGTERM, before it closes the stream."""
        for iq in await self.pending.drain(timeout):
            self._refuse(iq, "shutdown", "wait", "service-unavailable", SHUTTING_DOWN)
        self.writer.flush()  # before the stream closes
        self.dispatcher.close()  # nothing it still holds may answer after the refusal

    def _settings(self) -> UploadSettings:
        options = {key: value for key, value in self.config.items() if key not in PLUGIN_ONLY_OPTIONS}
        settings = self.config.get("settings")
        if settings is None:
            return parse_upload_settings(options, path=self.name)
        if options:
            raise ConfigError(f"{self.name}.{next(iter(options))}", "cannot be given with settings")
        return settings

    def _served_domain(self, service_jid: str) -> str:
        domain = self.config.get("domain")
        if domain is None and self.xmpp.is_component:
            domain = self.settings.served_domain(service_jid)
            if domain is None:
                raise ConfigError(
                    f"{self.name}.domain",
                    f"is required: the JID {service_jid} does not fit host {self.settings.host!r}",
                )
        return normalise_domain((domain or self.xmpp.boundjid.domain).lower())

    def _advertise(self, _bound: object = None) -> None:
        """disco#info on the JID we are bound to: identity, a feature and (with a size limit) a
        form per dialect. Runs again on each bind, but only changes anything when a bot was
        bound to another resource, so the forms are never duplicated."""
        jid = JID(self.xmpp.boundjid.full)
        if jid == self.advertised_jid:
            return
        self._withdraw()
        disco = self.xmpp.plugin["xep_0030"]
        disco.add_identity(category="store", itype="file", name="HTTP File Upload", jid=jid)
        message = self.settings.purposes.get("message")
        max_file_size = message.max_file_size if message else self.settings.max_file_size
        for dialect in self.dialects.values():
            disco.add_feature(dialect.namespace, jid=jid)
            if max_file_size is not None:
                form = self.xmpp.plugin["xep_0004"].make_form(ftype="result")
                form.add_field(var="FORM_TYPE", ftype="hidden", value=dialect.namespace)
                form.add_field(var="max-file-size", value=str(max_file_size))
                self.xmpp.plugin["xep_0128"].add_extended_info(jid=jid, data=form)
        for purpose in self.settings.purposes.values():
            disco.add_feature(purpose.feature, jid=jid)
        self.advertised_jid = jid

    def _withdraw(self) -> None:
        jid, self.advertised_jid = self.advertised_jid, None
        if jid is None:
            return
        disco = self.xmpp.plugin["xep_0030"]
        disco.del_identity(category="store", itype="file", name="HTTP File Upload", jid=jid)
        for feature in (*self.dialects, *(purpose.feature for purpose in self.settings.purposes.values())):
            disco.del_feature(feature=feature, jid=jid)
        self.xmpp.plugin["xep_0128"].del_extended_info(jid=jid)

    def take_element(self, xml: ET.Element) -> bool:
        """Handle a request straight from the element read, if it is a plain one
        (:meth:`StreamGuard.plain_request <slixmpp_http_upload.guard.StreamGuard.plain_request>`),
        and say so. ``serve``'s streams call this for each stanza before slixmpp builds a stanza
        object of it; only where ``own_stream`` holds (nothing else wants to see the request)."""
        if not self.guard.plain_request(xml):
            return False
        try:
            self._handle(Received(self.xmpp, xml), self.dialects[xml[0].tag], xml[0])
        except Exception:  # not even its refusal could be sent: the stream must go on all the same
            log.exception("Dropped a slot request that could not be answered")
        return True

    def _on_request(self, iq: Iq) -> None:
        """The handler of requests on slixmpp's road (a bot's stream, anything but a plain
        request): check the IQ's type, then go on as :meth:`take_element` does."""
        xml = iq.xml
        kind = xml.get("type", "")
        if kind in ("result", "error"):
            return
        element = next(child for child in xml if child.tag in self.dialects)
        if not kind:  # RFC 6120 8.2.3: the type is required
            return self._refuse(iq, "bad-request", "modify", "bad-request", "An IQ needs a type.")
        if kind != "get":
            return self._refuse(iq, "not-allowed", "cancel", "not-allowed", "Slot requests are IQ get.")
        self._handle(iq, self.dialects[element.tag], element)

    def _handle(self, iq: Request, dialect: Dialect, element: ET.Element) -> None:
        """Check an IQ get's request inline, in stanza order, and answer or schedule the slot;
        never raises."""
        try:
            self._check_and_schedule(iq, dialect, element)
        except Exception:
            log.exception("Unexpected failure on a slot request from %.200s", iq.xml.get("from"))
            self._refuse(iq, "internal", "wait", "internal-server-error")

    def _check_and_schedule(self, iq: Request, dialect: Dialect, element: ET.Element) -> None:
        requester = self.rules.requester(iq.xml.get("from", ""))
        if requester is None:
            return self._refuse(iq, "forbidden", "auth", "forbidden", "This service is not for your domain.")
        raw = dialect.read_request(element)
        try:
            purpose, expires = choose(self.settings.purposes, raw.purpose, raw.expire_before, self.accounting.clock())
            request = make_request(
                raw.filename,
                raw.size,
                raw.content_type,
                domain=self.rules.served_domain,
                max_file_size=purpose.max_file_size,
                requester=requester,
                purpose=purpose.name,
                expires=expires,
            )
        except PurposeNotServed as error:
            return self._refuse(iq, "purpose", "cancel", "feature-not-implemented", str(error))
        except BadRequest as error:
            return self._refuse(iq, "bad-request", "modify", "bad-request", str(error))
        except FileTooLarge as error:
            return self._refuse(
                iq,
                "file-too-large",
                "modify",
                "not-acceptable",
                str(error),
                dialect.file_too_large_element(error.max_file_size),
            )
        if self.pending.closing:
            return self._refuse(iq, "shutdown", "wait", "service-unavailable", SHUTTING_DOWN)
        if self.policy is None and self.dispatcher.idle(requester.bare):
            if self._answer_now(iq, dialect, request):
                return
        job = functools.partial(self._answer, iq, dialect, request)
        on_failure = functools.partial(self._refuse, iq, "internal", "wait", "internal-server-error")
        if not self.pending.submit(self.dispatcher, requester.bare, iq, job, on_failure):
            self._refuse(iq, "queue-full", "wait", "resource-constraint", "Too many slot requests; try again later.")

    def _answer_now(self, iq: Request, dialect: Dialect, request: SlotRequest) -> bool:
        """Answer without awaiting anything (no policy hook; the backend's ``slot_now``); False
        when the backend has none or has to wait first, and the request must be scheduled."""
        slot_now: Callable[[SlotRequest], Slot | None] | None = getattr(self.backend, "slot_now", None)
        if slot_now is None:
            return False
        started = time.perf_counter()
        usage = self._admit(iq, dialect, request)
        if usage is None:
            return True
        try:
            slot = slot_now(request)
        except Exception as error:
            self.accounting.withdraw(usage)
            self._failed(iq, request, error)
            return True
        if slot is None:
            self.accounting.withdraw(usage)
            return False
        self._deliver(iq, dialect, request, usage, slot, started)
        return True

    async def _answer(self, iq: Request, dialect: Dialect, request: SlotRequest) -> None:
        """Ask the policy hook, the limits and the backend, then send the slot and record it;
        raises only when its own task is cancelled."""
        started = time.perf_counter()
        try:
            # the hook gets a JID of its own: ``request.requester`` is shared by the sender's requests
            verdict = await self.policy(JID(request.requester), request) if self.policy else None
            if isinstance(verdict, TryLater):
                retry = dialect.retry_element(verdict.retry) if verdict.retry else None
                return self._refuse(iq, "policy", "wait", "resource-constraint", verdict.reason, retry)
            if verdict:
                return self._refuse(iq, "policy", "auth", "forbidden", verdict)
            usage = self._admit(iq, dialect, request)
            if usage is None:
                return
            try:
                slot = await self.backend.create_slot(request)
            except BaseException:
                self.accounting.withdraw(usage)
                raise
        except (Exception, asyncio.CancelledError) as error:
            if being_cancelled():  # our own task is stopping: let it
                raise
            return self._failed(iq, request, error)
        self._deliver(iq, dialect, request, usage, slot, started)

    def _admit(self, iq: Request, dialect: Dialect, request: SlotRequest) -> Usage | None:
        """The request counted against the limits, or None when it was refused for them."""
        usage = self.accounting.admit(request)
        if isinstance(usage, OverLimit):
            retry = dialect.retry_element(usage.retry) if usage.retry else None
            self._refuse(iq, usage.reason, "wait", "resource-constraint", usage.text, retry)
            return None
        return usage

    def _deliver(self, iq: Request, dialect: Dialect, request: SlotRequest, usage: Usage, slot: Slot, started: float) -> None:
        """Send ``slot`` and record it (or refuse, if the dialect cannot carry it or the ledger
        cannot take it)."""
        try:
            payload = dialect.slot_xml(slot)
        except Exception as error:
            self.accounting.withdraw(usage)
            return self._failed(iq, request, error)
        try:
            self.accounting.record(usage, request, slot)
        except Exception as error:  # counted all the same: the ledger may hold it in part
            return self._failed(iq, request, error)
        self.metrics.slot_created(time.perf_counter() - started)
        log.debug("Slot for %s: %r, %d bytes: %s", request.requester, request.filename, request.size, slot.get_url)
        self.writer.send_result(iq, payload)

    def _failed(self, iq: Request, request: SlotRequest, error: BaseException) -> None:
        """The backend could not make a slot (or the dialect carry it, or the ledger record it):
        log, and refuse."""
        backend = type(self.backend).__name__
        known = isinstance(error, SlotsUnavailable)  # its reason is the whole story: no traceback
        log.error("Could not make a slot for %s (%s): %s", request.requester, backend, error, exc_info=not known)
        self._refuse(iq, "backend", "wait", "internal-server-error", "Could not make a slot now.")

    def _refuse(
        self,
        iq: Request,
        reason: str,
        error_type: str,
        condition: str,
        text: str | None = None,
        extension: ET.Element | None = None,
    ) -> None:
        """Answer with an IQ error and count the refusal under ``reason``; raises nothing that a
        request can cause."""
        self.metrics.refused(reason)
        log.debug("Refused (%s) a slot request from %.200s: %s", reason, iq.xml.get("from"), text)
        self.writer.send(replies.error(iq, error_type, condition, text, extension))
