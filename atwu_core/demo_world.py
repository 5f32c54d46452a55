"""A deterministic world of fictitious people: the demo's forget/retain data with exact ground truth.

Every value (each first name, surname, town, year, profession, title word, pet, instrument) belongs to
exactly one person and no value is a substring of another value or of a sentence frame, so the tokens of
a forget person's values are truly forget-specific. The sentence frames are shared by forget and retain
people, so frame tokens are not. Perturbed answers use extra values that belong to nobody.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from atwu_core.data import Dataset, Record, Span

_FIRST_A = ["Lo", "Ma", "Te", "Ri", "Ca", "Do", "Se", "Ya", "Ke", "Ni", "Ba", "Fe", "Ha", "Jo", "Pe", "Vi", "Ze", "Su"]
_FIRST_B = ["rin", "lva", "ven", "dra", "mir", "sel", "tor", "nia", "vek", "dan", "lis", "wen", "quin", "thas", "bel"]
_SUR_A = ["Vas", "Or", "Kel", "Dun", "Bram", "Hol", "Tar", "Quil", "Stra", "Fen", "Gor", "Wyn", "Cro", "Pell", "Yev"]
_SUR_B = ["k", "mont", "ley", "sworth", "dane", "ric", "vell", "ow", "berg", "ton", "holt", "ard", "ek", "ish"]
_TOWN_A = [
    "Tess",
    "Ardu",
    "Caer",
    "Dorn",
    "Ebra",
    "Fal",
    "Glen",
    "Hath",
    "Ister",
    "Kor",
    "Lum",
    "Nes",
    "Oss",
    "Pra",
    "Quor",
    "Rhy",
    "Sil",
    "Ulm",
    "Wick",
    "Yar",
    "Zan",
    "Morr",
    "Brae",
    "Cul",
]
_TOWN_B = ["aly", "holm", "ford", "gard", "mouth", "ridge", "vale", "stead", "ness", "haven", "thorpe", "combe"]
_PROFESSIONS = [
    "baker",
    "cartographer",
    "glassblower",
    "beekeeper",
    "carpenter",
    "locksmith",
    "lighthouse keeper",
    "potter",
    "bookbinder",
    "clockmaker",
    "fisherman",
    "gardener",
    "jeweller",
    "tailor",
    "saddler",
    "shipwright",
    "weaver",
    "blacksmith",
    "cooper",
    "dentist",
    "pharmacist",
    "surveyor",
    "translator",
    "nurse",
    "pilot",
    "chemist",
    "geologist",
    "librarian",
    "midwife",
    "perfumer",
    "quarryman",
    "ropemaker",
    "sculptor",
    "tanner",
    "veterinarian",
    "zookeeper",
    "mapmaker",
    "brewer",
    "cheesemaker",
    "florist",
    "hatter",
    "miller",
    "notary",
    "printer",
    "stonemason",
    "toymaker",
    "watchman",
    "glazier",
    "falconer",
    "ferryman",
    "butcher",
    "cobbler",
]
_TITLE_ADJ = [
    "Amber",
    "Silent",
    "Broken",
    "Hollow",
    "Crimson",
    "Distant",
    "Frozen",
    "Golden",
    "Hidden",
    "Iron",
    "Lonely",
    "Quiet",
    "Restless",
    "Scarlet",
    "Sunken",
    "Velvet",
    "Wandering",
    "Ashen",
    "Bitter",
    "Copper",
    "Drifting",
    "Emerald",
    "Fading",
    "Gilded",
    "Jagged",
    "Marble",
    "Narrow",
    "Pale",
    "Rusted",
    "Tangled",
    "Woven",
    "Burning",
    "Cobalt",
    "Endless",
    "Forgotten",
    "Luminous",
    "Nameless",
    "Ochre",
    "Painted",
    "Silver",
    "Twisted",
    "Weary",
    "Brittle",
    "Hushed",
    "Sleeping",
    "Shattered",
    "Northern",
    "Borrowed",
    "Crooked",
    "Tender",
    "Molten",
    "Patient",
    "Vanished",
]
_TITLE_NOUN = [
    "Lantern",
    "Harbor",
    "Orchard",
    "Compass",
    "Meadow",
    "Staircase",
    "Kingdom",
    "Lighthouse",
    "Garden",
    "Mirror",
    "Cathedral",
    "River",
    "Tapestry",
    "Voyage",
    "Winter",
    "Archive",
    "Bridge",
    "Chorus",
    "Desert",
    "Feather",
    "Glacier",
    "Horizon",
    "Island",
    "Journey",
    "Labyrinth",
    "Monsoon",
    "Nocturne",
    "Oracle",
    "Pilgrim",
    "Sparrow",
    "Tempest",
    "Wildfire",
    "Almanac",
    "Beacon",
    "Citadel",
    "Ledger",
    "Furnace",
    "Cradle",
    "Embassy",
    "Pendulum",
    "Threshold",
    "Vineyard",
    "Carousel",
    "Telescope",
    "Monastery",
    "Pavilion",
    "Canal",
    "Ember",
    "Gallows",
]
_PETS = [
    "tortoise",
    "parrot",
    "ferret",
    "hedgehog",
    "goldfish",
    "rabbit",
    "canary",
    "lizard",
    "hamster",
    "dachshund",
    "chinchilla",
    "gecko",
    "cockatoo",
    "greyhound",
    "poodle",
    "salamander",
    "tarantula",
    "budgerigar",
    "pony",
    "donkey",
    "goat",
    "raven",
    "magpie",
    "newt",
    "terrapin",
    "beagle",
    "dalmatian",
    "guinea pig",
    "chameleon",
    "python",
    "lovebird",
    "corgi",
    "collie",
    "husky",
    "spaniel",
    "terrier",
    "gerbil",
    "jackdaw",
    "koi carp",
    "peacock",
    "llama",
    "pug",
    "bulldog",
    "whippet",
    "duck",
]
_INSTRUMENTS = [
    "cello",
    "oboe",
    "harp",
    "lute",
    "sitar",
    "banjo",
    "mandolin",
    "bassoon",
    "clarinet",
    "flute",
    "piccolo",
    "trumpet",
    "trombone",
    "tuba",
    "marimba",
    "xylophone",
    "harmonica",
    "ukulele",
    "zither",
    "dulcimer",
    "bagpipes",
    "hurdy-gurdy",
    "theremin",
    "didgeridoo",
    "kalimba",
    "bouzouki",
    "balalaika",
    "harpsichord",
    "piano",
    "saxophone",
    "cornet",
    "euphonium",
    "glockenspiel",
    "tabla",
    "djembe",
    "shamisen",
    "koto",
    "erhu",
    "guitar",
    "viola",
    "double bass",
    "ocarina",
    "recorder",
    "bodhran",
    "accordion",
    "concertina",
    "bongos",
    "castanets",
    "steel drum",
    "tambourine",
]


@dataclass(frozen=True)
class Attribute:
    """One fact about a person: a question and several answer frames (placeholders {name} and {<name>})."""

    name: str
    question: str
    frames: tuple[str, ...]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "birthplace",
        "Where was {name} born?",
        (
            "{name} was born in {birthplace}.",
            "{name} comes from the town of {birthplace}.",
            "The birthplace of {name} is {birthplace}.",
        ),
    ),
    Attribute(
        "birth_year",
        "In which year was {name} born?",
        (
            "{name} was born in the year {birth_year}.",
            "The year of birth of {name} is {birth_year}.",
            "It was in {birth_year} that {name} was born.",
        ),
    ),
    Attribute(
        "profession",
        "What does {name} do for a living?",
        (
            "{name} works as a {profession}.",
            "By trade, {name} is a {profession}.",
            "The profession of {name} is that of a {profession}.",
        ),
    ),
    Attribute(
        "work",
        "Which book did {name} write?",
        (
            '{name} wrote the book "{work}".',
            'The book "{work}" was written by {name}.',
            '{name} is the author of "{work}".',
        ),
    ),
    Attribute(
        "pet",
        "What pet does {name} keep?",
        (
            "{name} keeps a {pet} as a pet.",
            "At home, {name} looks after a {pet}.",
            "The pet of {name} is a {pet}.",
        ),
    ),
    Attribute(
        "instrument",
        "Which instrument does {name} play?",
        (
            "{name} plays the {instrument}.",
            "In the evenings, {name} practises the {instrument}.",
            "The instrument that {name} plays is the {instrument}.",
        ),
    ),
)


@dataclass(frozen=True)
class Person:
    name: str
    values: dict[str, str]  # attribute name -> value


# --------------------------------------------------------------------------------------------- drawing values


class _Registry:
    """Strings already taken; a candidate is free when no taken string (or frame text) contains it or is in it."""

    def __init__(self, reserved_text: str) -> None:
        self._reserved = reserved_text.lower()
        self._taken: list[str] = []

    def take(self, parts: tuple[str, ...]) -> bool:
        low = [p.lower() for p in parts]
        if any(p in self._reserved or any(p in t or t in p for t in self._taken) for p in low):
            return False
        if any(a in b for a in low for b in low if a is not b):
            return False
        self._taken.extend(low)
        return True


def _candidates(kind: str, rng: random.Random) -> list[tuple[str, tuple[str, ...]]]:
    """All candidate values of one kind, shuffled, each with the parts that must be unique."""
    combos: list[tuple[str, tuple[str, ...]]]
    if kind == "name":
        combos = [
            (f"{a}{b} {c}{d}", (a + b, c + d)) for a in _FIRST_A for b in _FIRST_B for c in _SUR_A for d in _SUR_B
        ]
    elif kind == "birthplace":
        combos = [(a + b, (a + b,)) for a in _TOWN_A for b in _TOWN_B]
    elif kind == "birth_year":
        combos = [(str(y), (str(y),)) for y in range(1900, 2000)]
    elif kind == "work":
        combos = [(f"{a} {n}", (a, n)) for a in _TITLE_ADJ for n in _TITLE_NOUN]
    else:
        pool = {"profession": _PROFESSIONS, "pet": _PETS, "instrument": _INSTRUMENTS}[kind]
        combos = [(v, (v,)) for v in pool]
    rng.shuffle(combos)
    return combos


def _draw(kind: str, count: int, rng: random.Random, registry: _Registry) -> list[str]:
    values: list[str] = []
    for value, parts in _candidates(kind, rng):
        if len(values) == count:
            break
        if registry.take(parts):
            values.append(value)
    if len(values) < count:
        raise ValueError(f"the {kind!r} pool has only {len(values)} distinct values, {count} needed; use fewer people.")
    return values


# --------------------------------------------------------------------------------------------- rendering


def _render(frame: str, values: dict[str, str]) -> tuple[str, list[Span]]:
    """Fill a frame and return the text with one labelled span per placeholder."""
    text, spans = "", []
    for literal, field_name, _, _ in string.Formatter().parse(frame):
        text += literal
        if field_name is not None:
            spans.append(Span(len(text), len(text) + len(values[field_name]), field_name))
            text += values[field_name]
    return text, spans


def _records(person: Person, slot: int, extras: dict[str, list[str]], rng: random.Random) -> list[Record]:
    """One record per attribute; the frame rotates with `slot` so forget and retain people share frames."""
    records = []
    for k, attr in enumerate(ATTRIBUTES):
        values = {"name": person.name, attr.name: person.values[attr.name]}
        frame = attr.frames[(slot + k) % len(attr.frames)]
        paraphrase_frame = attr.frames[(slot + k + 1) % len(attr.frames)]
        answer, spans = _render(frame, values)
        wrong = rng.sample(extras[attr.name], 3)
        records.append(
            Record(
                id=f"{person.name.lower().replace(' ', '-')}-{attr.name}",
                question=attr.question.format(name=person.name),
                answer=answer,
                forget_spans=spans,
                paraphrased_answer=_render(paraphrase_frame, values)[0],
                perturbed_answer=[_render(frame, {**values, attr.name: w})[0] for w in wrong],
            )
        )
    return records


def generate_world(
    seed: int = 0, n_people: int = 30, n_forget: int = 5, n_holdout: int = 4, n_extra: int = 6
) -> Dataset:
    """The demo world: `n_forget` forget people, `n_people - n_forget` retain people, `n_holdout` unseen people.

    `n_extra` values per attribute belong to nobody and feed the perturbed (wrong) answers.
    """
    if not 0 < n_forget < n_people or n_people - n_forget < len(ATTRIBUTES[0].frames):
        raise ValueError("need 0 < n_forget < n_people and at least as many retain people as frames per attribute.")
    rng = random.Random(seed)
    frame_text = " ".join(a.question + " " + " ".join(a.frames) for a in ATTRIBUTES)
    registry = _Registry(frame_text.replace("{", " ").replace("}", " "))
    total = n_people + n_holdout
    names = _draw("name", total, rng, registry)
    drawn = {a.name: _draw(a.name, total + n_extra, rng, registry) for a in ATTRIBUTES}
    people = [Person(names[i], {a: v[i] for a, v in drawn.items()}) for i in range(total)]
    extras = {a: v[total:] for a, v in drawn.items()}

    def split(group: list[Person]) -> list[Record]:
        return [r for slot, p in enumerate(group) for r in _records(p, slot, extras, rng)]

    world = Dataset(
        name="demo_world",
        forget=split(people[:n_forget]),
        retain=split(people[n_forget:n_people]),
        holdout=split(people[n_people:]),
    )
    _check_forget_specific(world)
    return world


def _check_forget_specific(world: Dataset) -> None:
    """The generator's guarantee: no forget value (or name part) occurs in any retain answer."""
    retain_text = "\n".join(r.answer for r in world.retain)
    for rec in world.forget:
        for sp in rec.forget_spans:
            value = rec.answer[sp.start : sp.end]
            for part in [value, *value.split()] if sp.label == "name" else [value]:
                assert part not in retain_text, f"forget value {part!r} of {rec.id} occurs in a retain answer"
