"""Seeded adversarial stanzas for the upload service, and a driver that feeds them through a
stream and checks the answers. Used by ``tests/test_fuzz_stanzas.py`` (a CI-sized count) and
``bench/fuzz_stanzas.py`` (the full count).

Every stanza is well-formed XML (a server would not forward anything else) but hostile in
its values and shape: sizes like ``١٢٣`` or 4,300 digits, names of up to 2,000 characters and
now and then of ``max_value``, CRLF in fields, ids with tab/LF/CR, deep nesting, wide elements,
two or three payloads, disco sets, unknown payloads, wrong types, and (with ``addressing``)
malformed JIDs in ``from`` and ``to``. Each carries a unique id, so every answer can be told
apart.

What must hold (:class:`Verdict`): every IQ get/set to the service is answered exactly once with
its id intact; an IQ result or error is never answered; no other stanza gets two answers.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from slixmpp import ClientXMPP
from slixmpp.xmlstream import StanzaBase

from component_server import Answers
from servers import rss_bytes

NS = "urn:xmpp:http:upload:0"
LEGACY_NS = ("urn:xmpp:http:upload", "eu:siacs:conversations:http:upload")
DISCO = ("http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items")
MALFORMED_JIDS = ("a@b@c", "@localhost", "alice@", "a b@localhost/x", "x" * 1100 + "@localhost", "a@/r", "é@@x")
MB = 1024 * 1024
PREFIX = "f"
"""Every id the generator makes starts with it."""
ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}
)


def escape(text: str) -> str:
    """``text`` as an attribute value or element text, tab/LF/CR as character references."""
    return text.translate(ESCAPES)


@dataclass(frozen=True)
class Case:
    """One stanza, its id as a parser reads it, and what the service owes it."""

    text: str
    ident: str
    must_answer: bool
    """An IQ get/set to the service: exactly one answer."""
    never_answer: bool
    """An IQ result or error: no answer."""


class Generator:
    """``Generator(seed, service, senders).cases(count)``: the same stanzas for the same seed."""

    def __init__(
        self,
        seed: int,
        service: str,
        senders: Sequence[str],
        *,
        addressing: bool,
        whitespace_ids: bool,
        max_value: int,
    ) -> None:
        self.random = random.Random(seed)
        self.service = service
        self.senders = senders
        self.addressing = addressing
        self.whitespace_ids = whitespace_ids
        self.max_value = max_value

    def cases(self, count: int) -> Iterator[Case]:
        for n in range(count):
            yield self.case(f"{PREFIX}{n}-")

    # ------------------------------------------------------------------ stanzas

    def case(self, prefix: str) -> Case:
        r = self.random
        ident = prefix + self.id_suffix()
        kind = r.choices(["iq", "message", "presence"], [90, 5, 5])[0]
        iq_type = r.choices(["get", "set", "result", "error", "", "GET", "get "], [60, 12, 6, 6, 3, 2, 1])[0]
        to = self.recipient()
        attributes = {"id": ident, "to": to}
        if sender := self.sender():
            attributes["from"] = sender
        if kind == "iq" and iq_type:
            attributes["type"] = iq_type
        if r.random() < 0.03:
            attributes["xml:lang"] = r.choice(["", "@@", "x" * 300, "en"])
        text_attributes = "".join(f" {name}='{escape(value)}'" for name, value in attributes.items())
        body = "".join(self.payload() for _ in range(r.choices([0, 1, 2, 3], [4, 84, 10, 2])[0]))
        text = f"<{kind}{text_attributes}>{body}</{kind}>"
        request = kind == "iq" and iq_type in ("get", "set")
        return Case(
            text,
            ident,
            must_answer=request and to == self.service,
            never_answer=kind == "iq" and iq_type in ("result", "error"),
        )

    def ordinary(self, ident: str) -> Case:
        """A plain slot request, nothing hostile."""
        sender = f" from='{self.senders[0]}'" if self.senders else ""
        text = (
            f"<iq type='get' id='{ident}' to='{self.service}'{sender}>"
            f"<request xmlns='{NS}' filename='a.txt' size='1'/></iq>"
        )
        return Case(text, ident, must_answer=True, never_answer=False)

    def id_suffix(self) -> str:
        r = self.random
        choices = ["", "x", "é日本", "'\"&<>", " a b ", "&amp;", "\u2028", "z" * r.randint(1, 2000)]
        if self.whitespace_ids:
            choices += ["\t", "\n", "\r", "a\r\nb\t"]
        return "".join(r.choice(choices) for _ in range(r.randint(0, 3)))

    def recipient(self) -> str:
        r = self.random
        if r.random() < 0.9:
            return self.service
        odd = [f"x@{self.service}", f"{self.service}/res", self.service.upper()]
        if self.addressing:
            odd += ["a@b@" + self.service, "@" + self.service, self.service + "/"]
        return r.choice(odd)

    def sender(self) -> str | None:
        r = self.random
        if self.addressing and r.random() < 0.05:
            return r.choice(MALFORMED_JIDS)
        return r.choice(self.senders) if self.senders else None

    def payload(self) -> str:
        r = self.random
        maker = r.choices(
            [self.attribute_request, self.element_request, self.disco, self.unknown, self.empty],
            [45, 20, 20, 10, 5],
        )[0]
        return maker()

    def attribute_request(self) -> str:
        fields = {"filename": self.filename(), "size": self.size(), "content-type": self.content_type()}
        attributes = "".join(
            f" {name}='{escape(value)}'" for name, value in fields.items() if self.random.random() < 0.9
        )
        return f"<request xmlns='{NS}'{attributes}>{self.filling()}</request>"

    def element_request(self) -> str:
        r = self.random
        namespace = r.choice((NS, *LEGACY_NS))
        fields = {"filename": self.filename(), "size": self.size(), "content-type": self.content_type()}
        children = "".join(
            f"<{name}>{escape(value)}{self.filling(0.05)}</{name}>"
            for name, value in fields.items()
            if r.random() < 0.9
        )
        return f"<request xmlns='{namespace}'>{children}{self.filling()}</request>"

    def disco(self) -> str:
        r = self.random
        node = f" node='{escape(self.text(50))}'" if r.random() < 0.2 else ""
        return f"<query xmlns='{r.choice(DISCO)}'{node}>{self.filling()}</query>"

    def unknown(self) -> str:
        r = self.random
        namespace = r.choice(["urn:example:unknown", NS + "#x", "jabber:iq:version", "urn:xmpp:ping", ""])
        name = r.choice(["request", "ping", "query", "thing", "slot"])
        xmlns = f" xmlns='{namespace}'" if namespace else ""
        return f"<{name}{xmlns}>{self.filling()}</{name}>"

    def empty(self) -> str:
        return ""

    def filling(self, chance: float = 0.15) -> str:
        """Mostly nothing; sometimes deep nesting, a wide run of children or text."""
        r = self.random
        if r.random() >= chance:
            return ""
        shape = r.choice(["deep", "wide", "text", "mixed"])
        if shape == "deep":
            depth = r.choice([10, 60, 70, 300, 500, 1000, 3000])
            return "<x>" * depth + "</x>" * depth
        if shape == "wide":
            return "<y a='1'/>" * r.choice([10, 100, 1000])
        if shape == "text":
            return escape(self.text(self.max_value))
        return "<x><y>" + escape(self.text(20)) + "</y><z/></x>"

    # ------------------------------------------------------------------ values

    def text(self, longest: int) -> str:
        r = self.random
        alphabet = "abc .-_/\\é日😀\t\r\n'\"&<>%?#\u200b\u202e"
        length = r.choices([0, 1, 5, 40, r.randint(0, min(longest, 2000)), longest], [10, 10, 20, 20, 38, 2])[0]
        return "".join(r.choice(alphabet) for _ in range(min(length, 5000))) * max(1, length // 5000)

    def filename(self) -> str:
        r = self.random
        return r.choice(
            [
                "a.txt",
                "",
                " ",
                "../../etc/passwd",
                "a/b.txt",
                "a\r\nb.txt",
                "con",
                ".",
                "..",
                "ñ日本語😀.jpg",
                "\u202egnp.exe",
                self.text(self.max_value),
            ]
        )

    def size(self) -> str:
        r = self.random
        return r.choice(
            ["10", "0", "-1", "1e3", " 10", "10 ", "+10", "١٢٣", "0x10", "", "1" * 4300, "999999999999999999999",
             "10.0", "1000", "1001", str(r.randint(1, 10**6))]
        )

    def content_type(self) -> str:
        r = self.random
        return r.choice(["text/plain", "", "image/jpeg\r\nX-Evil: 1", "a" * 300, "text/plain; charset=utf-8",
                         self.text(200)])


# ---------------------------------------------------------------------- driving


@dataclass
class Verdict:
    """What a run saw; :attr:`problems` is empty when everything held."""

    sent: int = 0
    must_answer: int = 0
    answered_once: int = 0
    rss_mb: list[float] = field(default_factory=list)
    """The component's RSS before, after each quarter of the stanzas, and at the end."""
    problems: list[str] = field(default_factory=list)

    def check(self, cases: Sequence[Case], answers: Answers) -> None:
        for case in cases:
            got = len(answers.by_id.get(case.ident, ()))
            self.sent += 1
            if case.must_answer:
                self.must_answer += 1
                self.answered_once += got == 1
                if got != 1:
                    self.problems.append(f"{got} answers to {case.text[:200]!r}")
            elif case.never_answer and got:
                self.problems.append(f"{got} answers to an IQ result/error {case.text[:200]!r}")
            elif got > 1:
                self.problems.append(f"{got} answers to {case.text[:200]!r}")


def through_client(xmpp: ClientXMPP) -> tuple[Callable[[str], Awaitable[None]], Answers]:
    """How :func:`fuzz` sends through ``xmpp`` (a logged-in client) and what collects the answers
    to the generator's ids (kept from slixmpp's own handlers)."""
    answers = Answers()

    def collect(stanza: StanzaBase) -> StanzaBase | None:
        if (stanza.xml.get("id") or "").startswith(PREFIX):
            answers.add(stanza.xml)
            return None
        return stanza

    async def send(text: str) -> None:
        xmpp.send_raw(text)

    xmpp.add_filter("in", collect)
    return send, answers


async def fuzz(
    generator: Generator,
    count: int,
    send: Callable[[str], Awaitable[None]],
    answers: Answers,
    pid: int,
    *,
    batch: int = 50,
) -> Verdict:
    """Send ``count`` stanzas of ``generator`` ``batch`` at a time (waiting after each batch for
    the answers owed), then an ordinary slot request, and judge what came back; ``pid`` is the
    component's process, whose RSS is sampled."""
    stanzas = generator.cases(count)
    sent: list[Case] = []  # each cut to its first 200 characters, to name it in a problem
    verdict = Verdict(rss_mb=[rss_bytes(pid) / MB])
    quarter = max(1, count // 4)
    for start in range(0, count, batch):
        chunk = list(itertools.islice(stanzas, batch))
        await send("".join(case.text for case in chunk))
        await answers.wait_for({case.ident for case in chunk if case.must_answer})
        sent.extend(dataclasses.replace(case, text=case.text[:200]) for case in chunk)
        if (start + len(chunk)) // quarter > start // quarter:
            verdict.rss_mb.append(rss_bytes(pid) / MB)
    last = generator.ordinary(f"{PREFIX}-last")  # answered after everything before it: no late answers left
    await send(last.text)
    await answers.wait_for({last.ident})
    verdict.check([*sent, last], answers)
    return verdict
