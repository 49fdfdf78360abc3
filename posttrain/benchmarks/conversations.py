"""The 200-conversation multi-turn benchmark: a seeded, versioned generator and its loader.

Four categories of 50 conversations each probe what post-training is supposed to add on top of
a base model in a conversation: remembering facts stated earlier (``memory``), respecting stated
likes, dislikes and styles (``preferences``), resolving follow-ups that only make sense in
context (``topic_continuity``) and tracking rules that are set, changed or lifted
(``constraint_updates``). Each category has several templates filled from slot pools, so the
set is varied but fully reproducible from the seed.

Expectations are written for a deterministic triage scorer and an LLM judge: ``must_include``
groups list accepted variants (spellings, languages, units), ``must_not_include`` lists
superseded values or excluded items, and ``notes`` tell the judge what the turn tests.

Regenerate the committed file with ``python -m posttrain.benchmarks.conversations``; bumping
:data:`GENERATOR_VERSION` is required whenever the output changes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.benchmarks import Benchmark, load_generated
from posttrain.items import Constraint, Expectation, Item, Turn

GENERATOR_VERSION = "conv-v2"  # v2: data slips fixed (docs/benchmarks-data.md, "conv-v2")
DEFAULT_SEED = 1234
CATEGORIES: tuple[str, ...] = ("memory", "preferences", "topic_continuity", "constraint_updates")
PER_CATEGORY = 50
PILOT_PER_CATEGORY = 10
SPLITS: tuple[str, ...] = ("full", "pilot")
ROW_SPLITS: tuple[str, ...] = ("pilot", "main")
MIN_TURNS, MAX_TURNS = 3, 5
DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "conversations.jsonl"


class Slots(random.Random):
    """A seeded ``random.Random`` that also deals slot values like cards.

    ``deal`` walks through a shuffled copy of a pool before any value repeats, so fifty
    conversations drawn from a pool of twelve names use every name before reusing one; plain
    ``choice`` would repeat some values several times and leave others out.
    """

    def __init__(self, seed: int):
        super().__init__(seed)
        self._decks: dict[int, list[int]] = {}

    def deal(self, pool: Sequence[Any], k: int) -> list[Any]:
        """``k`` distinct entries of ``pool`` (a module-level constant: decks are keyed by its id)."""
        deck = self._decks.setdefault(id(pool), [])
        picked: list[int] = []
        while len(picked) < k:
            if not deck:
                deck.extend(self.sample(range(len(pool)), len(pool)))
            i = deck.pop()
            if i in picked:  # the deck was refilled mid-deal: keep this one for a later deal
                deck.insert(0, i)
                continue
            picked.append(i)
        return [pool[i] for i in picked]

    def one(self, pool: Sequence[Any]) -> Any:
        """One entry of ``pool``, dealt like :meth:`deal`."""
        return self.deal(pool, 1)[0]


Template = Callable[[Slots], list[Turn]]

# ---------------------------------------------------------------- slot pools
# People are (name, subject pronoun, object pronoun, possessive) so follow-ups can say "her".
WOMEN = [
    (n, "she", "her", "her")
    for n in (
        "Maria",
        "Aisha",
        "Elena",
        "Priya",
        "Sofia",
        "Hannah",
        "Mei",
        "Chloe",
        "Fatima",
        "Ingrid",
        "Lucia",
        "Naomi",
    )
]
MEN = [
    (n, "he", "him", "his")
    for n in (
        "David",
        "Kenji",
        "Omar",
        "Lukas",
        "Daniel",
        "Mateo",
        "Arjun",
        "Felix",
        "Samuel",
        "Jonas",
        "Ravi",
        "Pablo",
    )
]
PEOPLE = WOMEN + MEN
# (job phrase, accepted variants in a reply)
JOBS = [
    ("nurse", ["nurse", "nursing"]),
    ("architect", ["architect"]),
    ("software engineer", ["software engineer", "software developer", "engineer", "developer", "programmer"]),
    ("pastry chef", ["pastry chef", "chef", "pastry"]),
    ("primary school teacher", ["teacher"]),
    ("airline pilot", ["pilot"]),
    ("veterinarian", ["veterinarian", "vet"]),
    ("accountant", ["accountant"]),
    ("graphic designer", ["graphic designer", "designer"]),
    ("carpenter", ["carpenter"]),
    ("librarian", ["librarian"]),
    ("physiotherapist", ["physiotherapist", "physio", "physical therapist"]),
]
# (city variants, currency variants, language variants)
CITIES = [
    (["Lisbon", "Lisboa"], ["euro", "euros", "EUR"], ["Portuguese"]),
    (["Kyoto"], ["yen", "JPY"], ["Japanese"]),
    (["Vienna", "Wien"], ["euro", "euros", "EUR"], ["German"]),
    (["Prague", "Praha"], ["koruna", "crown", "crowns", "CZK"], ["Czech"]),
    (["Istanbul"], ["lira", "TRY"], ["Turkish"]),
    (["Buenos Aires"], ["peso", "pesos", "ARS"], ["Spanish"]),
    (["Copenhagen", "København"], ["krone", "kroner", "crown", "crowns", "DKK"], ["Danish"]),
    (["Seoul"], ["won", "KRW"], ["Korean"]),
    (["Reykjavik", "Reykjavík"], ["króna", "krona", "kronur", "krónur", "crown", "ISK"], ["Icelandic"]),
    (["Krakow", "Kraków", "Cracow"], ["złoty", "zloty", "zlotys", "PLN"], ["Polish"]),
    (["Hanoi", "Ha Noi", "Hà Nội"], ["dong", "đồng", "VND"], ["Vietnamese"]),
    (["Budapest"], ["forint", "HUF"], ["Hungarian", "Magyar"]),
    (["Marrakesh", "Marrakech"], ["dirham", "dirhams", "MAD"], ["Arabic", "Darija", "Berber", "Amazigh"]),
    (["Cape Town"], ["rand", "ZAR"], ["English", "Afrikaans", "Xhosa", "isiXhosa"]),
    (["Stockholm"], ["krona", "kronor", "crown", "crowns", "SEK"], ["Swedish"]),
    (["Oaxaca"], ["peso", "pesos", "MXN"], ["Spanish"]),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
# (time as the user says it, accepted variants)
TIMES = [
    ("9 am", ["9 am", "9am", "9:00", "09:00", "9 a.m"]),
    ("10:30", ["10:30", "half past ten"]),
    ("11 am", ["11 am", "11am", "11:00", "11 a.m"]),
    ("2 pm", ["2 pm", "2pm", "2:00", "14:00", "2 p.m"]),
    ("3:30 pm", ["3:30", "15:30", "half past three"]),
    ("4 pm", ["4 pm", "4pm", "4:00", "16:00", "4 p.m"]),
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
ORDINALS = ["first", "second", "third"]
# Unrelated questions that separate a fact from its recall; none mention a slot value.
FILLERS = [
    "Can you explain what a leap year is in two sentences?",
    "What's a simple way to stay focused when working from home?",
    "How long should I steep green tea?",
    "What's the difference between weather and climate?",
    "Give me one tip for writing clearer emails.",
    "Why do onions make people cry?",
    "What's a good stretch to do after sitting all day?",
    "How does a rainbow form?",
    "Can you suggest a name for a book club?",
    "What's the difference between a virus and a bacterium?",
    "How many hours of sleep do adults usually need?",
    "What's a polite way to decline a meeting invitation?",
    "Why is the ocean salty?",
    "Any tips for keeping houseplants alive?",
]
# (question, key-term variants any short correct answer uses, topic phrase)
EXPLAIN_QS = [
    ("Why is the sky blue?", ["scatter", "scattering", "scattered", "Rayleigh"], "why the sky is blue"),
    ("What causes ocean tides?", ["moon", "lunar"], "what causes tides"),
    ("How do vaccines work?", ["immune", "antibodies", "antibody"], "how vaccines work"),
    ("Why do we have seasons?", ["tilt", "tilted", "axis", "axial"], "why we have seasons"),
    ("What is photosynthesis?", ["light", "sunlight"], "photosynthesis"),
    ("What is inflation in economics?", ["price", "prices"], "inflation"),
    ("How does a refrigerator keep food cold?", ["refrigerant", "heat"], "how a refrigerator works"),
    ("Why do leaves change colour in autumn?", ["chlorophyll"], "why leaves change colour in autumn"),
    ("How do airplanes stay in the air?", ["lift", "wing", "wings"], "how airplanes stay in the air"),
    ("What is a black hole?", ["gravity", "gravitational"], "black holes"),
    ("What does DNA do?", ["gene", "genes", "genetic", "protein", "proteins"], "what DNA does"),
]
# (question, answer variants in English, Spanish, French and German)
FACT_QS = [
    ("What is the capital of Australia?", ["Canberra"]),
    ("Which is the tallest mountain in Africa?", ["Kilimanjaro", "Kilimandjaro", "Kilimandscharo"]),
    ("Who painted the Mona Lisa?", ["Leonardo", "da Vinci", "Léonard", "de Vinci"]),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
    ("What is the capital of Canada?", ["Ottawa"]),
    ("Who developed the theory of relativity?", ["Einstein"]),
    ("Who composed the Moonlight Sonata?", ["Beethoven"]),
    ("What is the capital of Kenya?", ["Nairobi"]),
    ("Who discovered penicillin?", ["Fleming"]),
    ("Which planet is the largest in our solar system?", ["Jupiter", "Júpiter"]),
    ("What is the largest ocean on Earth?", ["Pacific", "Pacífico", "Pacifico", "Pacifique", "Pazifik"]),
    ("In which country is Machu Picchu?", ["Peru", "Perú", "Pérou"]),
    ("Who was the first person to walk on the Moon?", ["Armstrong"]),
    ("Which city is home to the Colosseum?", ["Rome", "Roma", "Rom"]),
    ("What is the capital of Japan?", ["Tokyo", "Tokio"]),
    ("Who wrote Don Quixote?", ["Cervantes"]),
    ("What is the capital of Egypt?", ["Cairo", "Caire", "Kairo"]),
]
LIST_QS = [
    "What should I pack for a weekend camping trip?",
    "How can I save money on groceries?",
    "What are some habits that improve sleep?",
    "How should I prepare for a job interview?",
    "What are the benefits of learning a second language?",
    "How can I make my home more energy-efficient?",
    "What should I check before buying a used car?",
    "How can I stay motivated when studying alone?",
    "What are some easy ways to reduce plastic waste?",
    "How do I start running as a complete beginner?",
]
LANGUAGES = {"es": "Spanish", "fr": "French", "de": "German"}


def _x(
    *groups: Sequence[str], avoid: Sequence[str] = (), constraints: Sequence[Constraint] = (), notes: str = ""
) -> Expectation:
    """Build an :class:`Expectation` from plain lists (tuples are what the dataclass stores)."""
    return Expectation(tuple(tuple(g) for g in groups), tuple(avoid), tuple(constraints), notes)


def _a(noun: str) -> str:
    """Noun with its indefinite article."""
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def _fillers(rng: Slots, k: int) -> list[Turn]:
    return [Turn(q) for q in rng.deal(FILLERS, k)]


def _person(rng: Slots, pool: list[tuple[str, str, str, str]] | None = None) -> tuple[str, str, str, str]:
    return rng.one(pool if pool is not None else PEOPLE)


# ---------------------------------------------------------------- memory
# The final turn never names what it asks for: the test suite checks that every required entity
# appears in an earlier user turn and not in the last one, so the reply has to remember it.


def mem_self_intro(rng: Slots) -> list[Turn]:
    name = _person(rng)[0]
    job, job_v = rng.one(JOBS)
    city, _, lang = rng.one(CITIES)
    turns = [Turn(f"Hi! I'm {name}. I work as {_a(job)} and I live in {city[0]}.")]
    if rng.random() < 0.6:
        turns.append(
            Turn(
                "What language do most people speak there?",
                _x(lang, notes=f"'there' is {city[0]}, where the user lives."),
            )
        )
    turns += _fillers(rng, rng.randint(1, 2))
    if rng.random() < 0.5:
        turns.append(
            Turn(
                "Quick check before we go on: what's my name, and what do I do for work?",
                _x([name], job_v, notes=f"User said they are {name}, {_a(job)}."),
            )
        )
    else:
        turns.append(
            Turn(
                "Remind me: what's my name, and which city did I say I live in?",
                _x([name], city, notes=f"User said they are {name} and live in {city[0]}."),
            )
        )
    return turns


# (species, name, pronoun, age unit, oldest plausible age in that unit). The age is drawn as 2-9 and
# folded into 2..oldest, so the draw (and every later one) is the same as before the fold was added:
# a puppy is months old, and a hamster or guinea pig is not 9 years old.
PETS = [
    ("dog", "Biscuit", "he", "years", 9),
    ("cat", "Miso", "she", "years", 9),
    ("rabbit", "Clover", "she", "years", 9),
    ("parrot", "Kiwi", "he", "years", 9),
    ("tortoise", "Sheldon", "he", "years", 9),
    ("hamster", "Nugget", "she", "months", 9),
    ("ferret", "Ziggy", "he", "years", 6),
    ("guinea pig", "Pepper", "she", "years", 5),
    ("cockatiel", "Mango", "he", "years", 9),
    ("puppy", "Waffles", "she", "months", 9),
]


def mem_pet(rng: Slots) -> list[Turn]:
    species, pet, subj, unit, oldest = rng.one(PETS)
    obj = "him" if subj == "he" else "her"
    age = 2 + (rng.randint(2, 9) - 2) % (oldest - 1)
    turns = [
        Turn(f"I just adopted a {species} called {pet}! {subj.capitalize()} is {age} {unit} old."),
        Turn(
            f"What should I feed {obj} during the first week?",
            _x(notes=f"'{obj}' is the {species} {pet}; advice must suit a {species}."),
        ),
    ]
    turns += _fillers(rng, rng.randint(0, 2))
    turns.append(
        Turn(
            f"Quick quiz to check you're paying attention: what's my new pet called, and how old is {subj}?",
            _x([pet], [str(age), NUMBER_WORDS[age]], notes=f"The {species} is {pet}, {age} {unit} old."),
        )
    )
    return turns


def mem_colleague(rng: Slots) -> list[Turn]:
    name, subj, obj, poss = _person(rng)
    job, job_v = rng.one(JOBS)
    city = rng.one(CITIES)[0]
    turns = [
        Turn(
            f"My new colleague {name} joined our team today. {subj.capitalize()} used to work as "
            f"{_a(job)} in {city[0]}."
        )
    ]
    turns += _fillers(rng, rng.randint(0, 1))
    turns.append(
        Turn(
            f"I'd like to make {obj} feel welcome on {poss} first week. Any ideas?",
            _x(notes=f"'{obj}' is the new colleague {name}."),
        )
    )
    turns.append(
        Turn(
            f"Remind me: which city did {subj} work in before, and what was {poss} job there?",
            _x(city, job_v, notes=f"{name} used to be {_a(job)} in {city[0]}."),
        )
    )
    return turns


def mem_siblings(rng: Slots) -> list[Turn]:
    sister, brother = rng.one(WOMEN)[0], rng.one(MEN)[0]
    (job1, v1), (job2, v2) = rng.deal(JOBS, 2)
    turns = [
        Turn(
            f"Some family background: my sister {sister} is {_a(job1)}, "
            f"and my brother {brother} is {_a(job2)}."
        )
    ]
    turns += _fillers(rng, rng.randint(1, 2))
    final = rng.choice(["brother_job", "sister_name", "sister_job"])
    if final == "brother_job":
        turns.append(
            Turn("What does my brother do for a living?", _x(v2, notes=f"Brother {brother} is {_a(job2)}."))
        )
    elif final == "sister_job":
        turns.append(Turn("And what does my sister do?", _x(v1, notes=f"Sister {sister} is {_a(job1)}.")))
    else:
        turns.append(Turn("What's my sister's name again?", _x([sister], notes=f"The sister is {sister}.")))
    return turns


GROCERIES = [
    ("eggs", ["eggs", "egg"]),
    ("spinach", ["spinach"]),
    ("lemons", ["lemons", "lemon"]),
    ("rice", ["rice"]),
    ("batteries", ["batteries", "battery"]),
    ("toothpaste", ["toothpaste"]),
    ("oat milk", ["oat milk"]),
    ("coffee beans", ["coffee"]),
    ("tomatoes", ["tomatoes", "tomato"]),
    ("light bulbs", ["light bulbs", "light bulb", "bulbs", "bulb"]),
    ("yogurt", ["yogurt", "yoghurt"]),
    ("onions", ["onions", "onion"]),
    ("honey", ["honey"]),
    ("sponges", ["sponges", "sponge"]),
]


def mem_shopping(rng: Slots) -> list[Turn]:
    items = rng.deal(GROCERIES, 3)
    turns = [
        Turn(
            f"Before I forget: I need to buy {items[0][0]}, {items[1][0]} and {items[2][0]} on the way home."
        )
    ]
    turns += _fillers(rng, rng.randint(1, 3))
    turns.append(
        Turn(
            "I'm at the supermarket now. What did I say I needed to buy?",
            _x(*(v for _, v in items), notes="All three items from the first turn."),
        )
    )
    return turns


CODES = [  # (statement with {a} and {b}, question about a, question about b)
    (
        "My gym locker is number {a} and the code for the front door is {b}.",
        "Which locker number is mine?",
        "I'm standing at the front door of the gym. What's the code?",
    ),
    (
        "I parked in spot {a} on level two, and the garage gate code is {b}.",
        "Which parking spot did I say I'm in?",
        "What's the gate code again?",
    ),
    (
        "My hotel room is {a} and the code for the room safe is {b}.",
        "What's my room number?",
        "I need to open the safe. What was the code?",
    ),
    (
        "My seat on the train is number {a} and my booking reference is {b}.",
        "Which seat is mine?",
        "The conductor is asking for my booking reference. What is it?",
    ),
]


def mem_numbers(rng: Slots) -> list[Turn]:
    statement, ask_a, ask_b = rng.one(CODES)
    a, b = rng.randint(12, 98), rng.randint(1000, 9999)
    turns = [Turn(f"Can you help me remember something? {statement.format(a=a, b=b)}")]
    turns += _fillers(rng, rng.randint(1, 3))
    if rng.random() < 0.5:
        turns.append(Turn(ask_a, _x([str(a)], notes=f"The number is {a}.")))
    else:
        turns.append(Turn(ask_b, _x([str(b)], notes=f"The code is {b}.")))
    return turns


PURPOSES = [
    ("my cousin's wedding", ["wedding"]),
    ("a medical conference", ["conference"]),
    ("a two-week language course", ["course", "class", "classes"]),
    ("a marathon", ["marathon"]),
    ("a job interview", ["interview"]),
    ("a jazz festival", ["festival", "jazz"]),
]


def mem_trip(rng: Slots) -> list[Turn]:
    city, currency, _ = rng.one(CITIES)
    purpose, purpose_v = rng.one(PURPOSES)
    turns = [
        Turn(f"Next month I'm flying to {city[0]} for {purpose}."),
        Turn("What currency will I need there?", _x(currency, notes=f"'there' is {city[0]}.")),
    ]
    turns += _fillers(rng, rng.randint(0, 2))
    turns.append(
        Turn(
            "Sorry, long day. Where did I say I'm travelling to, and what for?",
            _x(city, purpose_v, notes=f"{city[0]}, for {purpose}."),
        )
    )
    return turns


EVENTS = [
    ("a piano lesson", "the piano lesson"),
    ("my sister's birthday dinner", "the birthday dinner"),
    ("a yoga class", "the yoga class"),
    ("the school play", "the school play"),
    ("a parent-teacher meeting", "the parent-teacher meeting"),
]


def mem_appointments(rng: Slots) -> list[Turn]:
    d1, d2 = rng.sample(DAYS, 2)
    t1, t1_v = rng.one(TIMES)
    event, short = rng.one(EVENTS)
    turns = [Turn(f"My week is busy: a dentist appointment on {d1} at {t1}, and {event} on {d2}.")]
    turns += _fillers(rng, rng.randint(1, 3))
    if rng.random() < 0.5:
        turns.append(Turn("When exactly is the dentist appointment?", _x([d1], t1_v, notes=f"{d1} at {t1}.")))
    else:
        turns.append(Turn(f"Which day is {short}?", _x([d2], notes=f"{short} is on {d2}.")))
    return turns


# ---------------------------------------------------------------- preferences
# (food as said, strings that must not appear in a reply that respects the dislike)
DISLIKED = [
    ("mushrooms", ["mushroom", "mushrooms"]),
    ("cilantro", ["cilantro", "coriander"]),
    ("eggplant", ["eggplant", "aubergine"]),
    ("blue cheese", ["blue cheese", "gorgonzola", "roquefort"]),
    ("beets", ["beet", "beets", "beetroot"]),
    ("tofu", ["tofu"]),
    ("pineapple", ["pineapple"]),
    ("raisins", ["raisin", "raisins"]),
    ("celery", ["celery"]),
    ("coconut", ["coconut"]),
    ("zucchini", ["zucchini", "courgette"]),
]
ALLERGENS = [
    ("peanuts", ["peanut", "peanuts"]),
    ("shrimp", ["shrimp", "shrimps", "prawn", "prawns"]),
    ("sesame", ["sesame", "tahini"]),
    ("walnuts", ["walnut", "walnuts"]),
    ("hazelnuts", ["hazelnut", "hazelnuts", "Nutella"]),
    ("almonds", ["almond", "almonds", "marzipan"]),
    ("strawberries", ["strawberry", "strawberries"]),
    ("cashews", ["cashew", "cashews"]),
    ("salmon", ["salmon"]),
    ("crab", ["crab", "crabs"]),
]
# Allergens that make a natural savoury main dish once the allergy is lifted.
COOKABLE_ALLERGENS = [a for a in ALLERGENS if a[0] not in ("strawberries", "hazelnuts")]
MEAT = ["chicken", "beef", "pork", "bacon", "lamb"]
FISH = ["salmon", "tuna", "shrimp", "prawn"]


def pref_diet(rng: Slots) -> list[Turn]:
    food, food_v = rng.one(DISLIKED)
    diet = rng.choice(["vegetarian", "pescatarian", None])
    if diet is None:
        intro, avoid = f"I eat pretty much everything, but I really can't stand {food}.", food_v
    else:
        avoid = food_v + MEAT + (FISH if diet == "vegetarian" else [])
        intro = f"I'm {diet}, and I really dislike {food}."
    note = f"User is {diet or 'an omnivore'} and dislikes {food}; mentioning it only to exclude it is fine."
    turns = [Turn(intro)]
    if rng.random() < 0.5:
        turns += _fillers(rng, 1)
    turns.append(
        Turn(
            rng.choice(
                [
                    "What's a good snack for a long afternoon at work?",
                    "Any ideas for a packed lunch tomorrow?",
                ]
            ),
            _x(avoid=avoid, notes=note),
        )
    )
    turns.append(
        Turn(
            rng.choice(
                [
                    "Can you suggest a quick dinner recipe for tonight?",
                    "I'm cooking for two this weekend. What main course would you suggest?",
                ]
            ),
            _x(avoid=avoid, notes=note),
        )
    )
    return turns


def pref_allergy(rng: Slots) -> list[Turn]:
    allergen, v = rng.one(ALLERGENS)
    note = f"User is allergic to {allergen}: no suggestion may contain it."
    turns = [
        Turn(f"Heads up: I'm allergic to {allergen}, so please keep that in mind."),
        Turn(
            rng.choice(
                [
                    "I'm hosting a small party on Saturday. What snacks could I serve?",
                    "What could I bring to a picnic with friends?",
                ]
            ),
            _x(avoid=v, notes=note),
        ),
    ]
    turns += _fillers(rng, rng.randint(0, 1))
    turns.append(
        Turn(
            rng.choice(
                [
                    "And what dessert should I make?",
                    "Could you suggest a cake for the occasion?",
                    "What about a sweet treat to finish?",
                ]
            ),
            _x(avoid=v, notes=note),
        )
    )
    return turns


NICKNAMES = [
    "Captain Jo",
    "Doc",
    "Skipper",
    "Ace",
    "Maverick",
    "Chef Nico",
    "Coach Dana",
    "Sunny",
    "Scout",
    "Professor Pip",
    "Moose",
    "Pixie",
]


def pref_nickname(rng: Slots) -> list[Turn]:
    nick = rng.one(NICKNAMES)
    note = f"User asked to be called '{nick}'; the message should address them that way."
    turns = [Turn(f"Quick request before we start: please call me {nick}. It's what all my friends call me.")]
    if rng.random() < 0.6:
        event = rng.choice(["my exam", "my presentation", "my first 10k race", "my driving test"])
        turns.append(Turn(f"Can you write me a one-line pep talk before {event}?", _x([nick], notes=note)))
    turns += _fillers(rng, rng.randint(2 - len(turns), 1))  # 3 turns at least, with the final one
    turns.append(
        Turn(
            rng.choice(
                [
                    "Write a short, cheerful good-morning text for me to read tomorrow.",
                    "Write me a two-line welcome note for the top of my personal journal.",
                ]
            ),
            _x([nick], notes=note),
        )
    )
    return turns


UNIT_QS = [  # (question, metric variants, imperial strings to avoid)
    (
        "How far is a marathon?",
        ["km", "kilometre", "kilometres", "kilometer", "kilometers"],
        ["miles", "mile"],
    ),
    ("What's a normal human body temperature?", ["°C", "Celsius", "degrees C"], ["Fahrenheit", "°F"]),
    (
        "Roughly how much does an adult African elephant weigh?",
        ["kg", "kilogram", "kilograms", "tonne", "tonnes", "metric tons"],
        ["pound", "pounds", "lbs"],
    ),
    ("How tall is Mount Everest?", ["m", "metres", "meters", "km"], ["feet", "ft"]),
    (
        "What's a comfortable temperature for a bedroom at night?",
        ["°C", "Celsius", "degrees C"],
        ["Fahrenheit", "°F"],
    ),
    ("How long is an Olympic swimming pool?", ["m", "metres", "meters"], ["feet", "yards", "ft"]),
    (
        "How heavy is a typical newborn baby?",
        ["kg", "kilogram", "kilograms", "grams", "g"],
        ["pound", "pounds", "lbs", "ounces"],
    ),
]


def pref_metric(rng: Slots) -> list[Turn]:
    country = rng.choice(["Germany", "Spain", "Kenya", "Brazil", "India", "Sweden", "Italy", "Chile"])
    (q1, m1, i1), (q2, m2, i2) = rng.deal(UNIT_QS, 2)
    note = "User only uses metric units; the reply must not give imperial units."
    turns = [
        Turn(
            f"I'm from {country} and I only think in metric units, so please never give me miles, pounds or "
            f"Fahrenheit."
        ),
        Turn(q1, _x(m1, avoid=i1, notes=note)),
    ]
    turns += _fillers(rng, rng.randint(0, 1))
    turns.append(Turn(q2, _x(m2, avoid=i2, notes=note)))
    return turns


def pref_format(rng: Slots) -> list[Turn]:
    fmt, said = rng.choice([("bullet_list", "bullet points"), ("numbered_list", "numbered lists")])
    c = Constraint("format", fmt, f"user prefers {said}")
    q1, q2, q3 = rng.deal(LIST_QS, 3)
    turns = [
        Turn(
            f"I read everything on my phone, so I prefer answers as {said}. Please always format them "
            f"that way."
        ),
        Turn(q1, _x(constraints=[c], notes=f"Answer as {said}.")),
    ]
    if rng.random() < 0.5:
        turns.append(Turn(q2, _x(constraints=[c], notes=f"Still {said}.")))
    turns.append(Turn(q3, _x(constraints=[c], notes=f"The preference for {said} still holds.")))
    return turns


COLOURS = [
    ("teal", ["teal"]),
    ("lavender", ["lavender"]),
    ("burgundy", ["burgundy"]),
    ("coral", ["coral"]),
    ("mustard yellow", ["mustard"]),
    ("emerald green", ["emerald"]),
    ("navy blue", ["navy"]),
    ("turquoise", ["turquoise"]),
]
ANIMALS = [
    ("otter", ["otter", "otters"]),
    ("fox", ["fox", "foxes"]),
    ("owl", ["owl", "owls"]),
    ("hedgehog", ["hedgehog", "hedgehogs"]),
    ("whale", ["whale", "whales"]),
    ("hummingbird", ["hummingbird", "hummingbirds"]),
    ("penguin", ["penguin", "penguins"]),
    ("panda", ["panda", "pandas"]),
    ("octopus", ["octopus", "octopuses", "octopi"]),
    ("flamingo", ["flamingo", "flamingos", "flamingoes"]),
]


def pref_favourites(rng: Slots) -> list[Turn]:
    colour, colour_v = rng.one(COLOURS)
    animal, animal_v = rng.one(ANIMALS)
    hobby = rng.choice(["hiking", "baking", "jazz", "gardening", "board games", "photography"])
    turns = [
        Turn(
            f"A bit about me: my favourite colour is {colour}, my favourite animal is the {animal}, "
            f"and I love {hobby}."
        )
    ]
    turns += _fillers(rng, rng.randint(1, 2))
    ask = rng.choice(
        [
            "I'm designing a logo for my personal blog. Suggest a concept that reflects my tastes.",
            "Suggest a theme for my birthday party based on what I like.",
            "Describe a T-shirt design I'd love, given my tastes.",
        ]
    )
    turns.append(Turn(ask, _x(colour_v, animal_v, notes=f"Should use {colour} and the {animal}.")))
    return turns


def pref_transport(rng: Slots) -> list[Turn]:
    how = rng.choice(
        [
            "I get around by bike and public transport.",
            "I walk or take the bus everywhere.",
            "I use an e-scooter and the metro.",
            "I rely on trains, trams and my own two feet.",
        ]
    )
    note = "User does not drive; do not suggest driving themselves or renting a car."
    turns = [Turn(f"Some context: I don't own a car and I don't drive. {how}")]
    if rng.random() < 0.6:
        turns.append(
            Turn(
                "I need to pick up a large bookshelf from a shop across town. How should I do it?",
                _x(avoid=["rent a car", "rental car", "drive yourself"], notes=note),
            )
        )
    turns += _fillers(rng, rng.randint(2 - len(turns), 1))  # 3 turns at least, with the final one
    transit = ["bus", "train", "metro", "tram", "subway", "shuttle", "rail", "taxi", "cab", "bike", "bicycle"]
    turns.append(
        Turn(
            rng.choice(
                [
                    "What's the best way for me to get to the airport tomorrow morning?",
                    "How should I get to a wedding venue an hour outside the city?",
                ]
            ),
            _x(transit, avoid=["rent a car", "rental car", "drive yourself"], notes=note),
        )
    )
    return turns


EXCITING = [
    "Write a short message congratulating my colleague on her promotion.",
    "Write a birthday message for my best friend.",
    "Write a short announcement that our bakery opens next week.",
    "Write a thank-you note to my neighbour for watering my plants.",
    "Write a welcome message for new members of our hiking club.",
    "Write a short note celebrating my team's product launch.",
]
NO_EMOJI = r"[\U0001F300-\U0001FAFF\u2600-\u27BF]"


def pref_plain_style(rng: Slots) -> list[Turn]:
    cs = [Constraint("no_match", "!", "no exclamation marks"), Constraint("no_match", NO_EMOJI, "no emojis")]
    note = "User asked for no exclamation marks and no emojis."
    q1, q2 = rng.deal(EXCITING, 2)
    turns = [
        Turn(
            "One preference: please don't use exclamation marks or emojis in your replies. "
            "I find them distracting."
        ),
        Turn(q1, _x(constraints=cs, notes=note)),
    ]
    turns += _fillers(rng, rng.randint(0, 1))
    turns.append(Turn(q2, _x(constraints=cs, notes=note)))
    return turns


# ---------------------------------------------------------------- topic continuity
# Follow-ups use ordinals and pronouns ("the third one", "it", "same question") so that only a
# model that tracks the thread knows what is being asked.

RIVERS = [
    ("Nile", "Africa", ["Mediterranean"]),
    ("Amazon", "South America", ["Atlantic"]),
    ("Danube", "Europe", ["Black Sea"]),
    ("Mississippi", "North America", ["Gulf of Mexico", "Gulf of America"]),
    ("Mekong", "Asia", ["South China Sea"]),
    ("Thames", "Europe", ["North Sea"]),
    ("Volga", "Europe", ["Caspian"]),
    ("Ganges", "Asia", ["Bay of Bengal", "Bengal"]),
    ("Yangtze", "Asia", ["East China Sea"]),
    ("Congo", "Africa", ["Atlantic"]),
]


def _pick3(rng: Slots, pool: Sequence[Any]) -> tuple[list[Any], int, int]:
    """Three distinct pool entries and two distinct positions among them."""
    three = rng.deal(pool, 3)
    i, j = rng.sample(range(3), 2)
    return three, i, j


def topic_rivers(rng: Slots) -> list[Turn]:
    rivers, i, j = _pick3(rng, RIVERS)
    names = [r[0] for r in rivers]
    return [
        Turn(f"I'm making flashcards about three rivers: the {names[0]}, the {names[1]} and the {names[2]}."),
        Turn(
            f"Which continent is the {ORDINALS[i]} one in?",
            _x([rivers[i][1]], notes=f"The {ORDINALS[i]} river is the {names[i]}."),
        ),
        Turn("Into which sea or ocean does it flow?", _x(rivers[i][2], notes=f"'it' is the {names[i]}.")),
        Turn(
            f"What about the {ORDINALS[j]} one?",
            _x(rivers[j][2], notes=f"Same question (where it flows) about the {names[j]}."),
        ),
    ]


COUNTRIES = [  # (country, capital variants, currency variants)
    ("Portugal", ["Lisbon", "Lisboa"], ["euro"]),
    ("Japan", ["Tokyo"], ["yen"]),
    ("Canada", ["Ottawa"], ["dollar"]),
    ("Norway", ["Oslo"], ["krone", "crown"]),
    ("Kenya", ["Nairobi"], ["shilling"]),
    ("Brazil", ["Brasília", "Brasilia"], ["real", "reais"]),
    ("Poland", ["Warsaw", "Warszawa"], ["złoty", "zloty"]),
    ("Thailand", ["Bangkok"], ["baht"]),
    ("Switzerland", ["Bern", "Berne"], ["franc"]),
    ("Hungary", ["Budapest"], ["forint"]),
    ("Australia", ["Canberra"], ["dollar"]),
    ("India", ["New Delhi", "Delhi"], ["rupee"]),
    ("South Korea", ["Seoul"], ["won"]),
    ("Turkey", ["Ankara"], ["lira"]),
]


def topic_countries(rng: Slots) -> list[Turn]:
    countries, i, j = _pick3(rng, COUNTRIES)
    names = [c[0] for c in countries]
    turns = [
        Turn(f"We're choosing between {names[0]}, {names[1]} and {names[2]} for our next family trip."),
        Turn(
            f"What's the capital of the {ORDINALS[i]} one?",
            _x(countries[i][1], notes=f"The {ORDINALS[i]} one is {names[i]}."),
        ),
    ]
    if rng.random() < 0.5:
        turns.append(Turn("Is it a good city for kids?", _x(notes=f"'it' is the capital of {names[i]}.")))
    turns.append(
        Turn("And which currency would we need there?", _x(countries[i][2], notes=f"'there' is {names[i]}."))
    )
    turns.append(
        Turn(
            f"Same question for the {ORDINALS[j]} one.",
            _x(countries[j][2], notes=f"Same question (currency) about the {ORDINALS[j]} one, {names[j]}."),
        )
    )
    return turns


ELEMENTS = [
    ("sodium", "Na", 11),
    ("iron", "Fe", 26),
    ("gold", "Au", 79),
    ("silver", "Ag", 47),
    ("lead", "Pb", 82),
    ("mercury", "Hg", 80),
    ("tin", "Sn", 50),
    ("copper", "Cu", 29),
]


def topic_elements(rng: Slots) -> list[Turn]:
    els, i, j = _pick3(rng, ELEMENTS)
    return [
        Turn(f"In chemistry class today we covered {els[0][0]}, {els[1][0]} and {els[2][0]}."),
        Turn(
            f"What's the chemical symbol of the {ORDINALS[i]} one?",
            _x([els[i][1]], notes=f"The {ORDINALS[i]} one is {els[i][0]}."),
        ),
        Turn("And what's its atomic number?", _x([str(els[i][2])], notes=f"'its' is {els[i][0]}.")),
        Turn(
            f"Now give me both of those for the {ORDINALS[j]} one.",
            _x([els[j][1]], [str(els[j][2])], notes=f"Symbol and atomic number of {els[j][0]}."),
        ),
    ]


BOOKS = [
    ("Pride and Prejudice", ["Austen"], ["English"]),
    (
        "One Hundred Years of Solitude",
        ["García Márquez", "Garcia Marquez", "Márquez", "Marquez"],
        ["Spanish"],
    ),
    ("Don Quixote", ["Cervantes"], ["Spanish"]),
    ("War and Peace", ["Tolstoy"], ["Russian"]),
    ("The Little Prince", ["Saint-Exupéry", "Saint-Exupery", "Exupéry", "Exupery"], ["French"]),
    ("Madame Bovary", ["Flaubert"], ["French"]),
    ("The Trial", ["Kafka"], ["German"]),
    ("Crime and Punishment", ["Dostoevsky", "Dostoyevsky", "Dostoevski"], ["Russian"]),
    ("The Divine Comedy", ["Dante"], ["Italian"]),
    ("The Name of the Rose", ["Eco"], ["Italian"]),
    ("Things Fall Apart", ["Achebe"], ["English"]),
    ("The Tale of Genji", ["Murasaki"], ["Japanese"]),
]


def topic_books(rng: Slots) -> list[Turn]:
    books, i, j = _pick3(rng, BOOKS)
    titles = [b[0] for b in books]
    return [
        Turn(f"My book club's list this year is '{titles[0]}', '{titles[1]}' and '{titles[2]}'."),
        Turn(f"Who wrote the {ORDINALS[i]} one?", _x(books[i][1], notes=f"The {ORDINALS[i]} one is '{titles[i]}'.")),
        Turn("What language was it originally written in?", _x(books[i][2], notes=f"'it' is {titles[i]}.")),
        Turn(
            f"Same two questions for the {ORDINALS[j]} one.",
            _x(books[j][1], books[j][2], notes=f"Author and original language of {titles[j]}."),
        ),
    ]


DISHES = [
    ("gazpacho", ["tomato", "tomatoes"]),
    ("borscht", ["beet", "beets", "beetroot"]),
    ("guacamole", ["avocado", "avocados"]),
    ("hummus", ["chickpea", "chickpeas", "garbanzo"]),
    ("pesto", ["basil"]),
    ("baba ganoush", ["eggplant", "aubergine"]),
    ("tzatziki", ["yogurt", "yoghurt"]),
    ("polenta", ["cornmeal", "maize", "corn"]),
    ("risotto", ["rice"]),
    ("tabbouleh", ["parsley", "bulgur"]),
]


def topic_dishes(rng: Slots) -> list[Turn]:
    dishes, i, j = _pick3(rng, DISHES)
    names = [d[0] for d in dishes]
    return [
        Turn(f"For my dinner party I'm making three dishes: {names[0]}, {names[1]} and {names[2]}."),
        Turn(
            f"Can I prepare the {ORDINALS[i]} one a day ahead?",
            _x(notes=f"The {ORDINALS[i]} one is the {names[i]}; the answer must be about making it ahead."),
        ),
        Turn("What's its main ingredient?", _x(dishes[i][1], notes=f"'its' is the {names[i]}.")),
        Turn(f"And the {ORDINALS[j]} one?", _x(dishes[j][1], notes=f"Main ingredient of the {names[j]}.")),
    ]


def topic_rectangle(rng: Slots) -> list[Turn]:
    w, h = sorted(rng.sample(range(4, 21), 2), reverse=True)  # the length is the longer side
    thing = rng.choice(["garden", "patio", "vegetable bed", "lawn"])  # things one could fence (final turn)
    turns = [
        Turn(f"Let's work with a rectangular {thing} that is {w} m long and {h} m wide."),
        Turn("What's its area?", _x([str(w * h)], notes=f"{w} x {h} = {w * h} square metres.")),
    ]
    if rng.random() < 0.5:
        turns.append(
            Turn("And its perimeter?", _x([str(2 * (w + h))], notes=f"2 x ({w} + {h}) = {2 * (w + h)} m."))
        )
    k = rng.randint(2, 5)
    if rng.random() < 0.5:
        turns.append(
            Turn(
                f"If I made it {k} m longer, what would the new area be?",
                _x([str((w + k) * h)], notes=f"({w} + {k}) x {h} = {(w + k) * h}."),
            )
        )
    else:
        turns.append(
            Turn(
                f"How much fencing would I need to go all the way round it "
                f"if I leave a {k} m gap for a gate?",
                _x([str(2 * (w + h) - k)], notes=f"Perimeter {2 * (w + h)} minus {k}."),
            )
        )
    return turns


PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
POSITION_WORDS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
POSITION_SHORT = ["1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th"]


def topic_planets(rng: Slots) -> list[Turn]:
    planet = rng.one(PLANETS)
    k = PLANETS.index(planet)
    turns = [
        Turn(
            f"Let's talk about {planet}"
            + rng.choice([".", " for my astronomy homework.", ", my favourite planet."])
        ),
        Turn(
            "What's its position from the Sun?",
            _x([POSITION_WORDS[k], POSITION_SHORT[k]], notes=f"{planet} is number {k + 1}."),
        ),
    ]
    if rng.random() < 0.5:
        turns.append(Turn("Does it have any moons?", _x(notes=f"'it' is {planet}.")))
    if k == 0 or (k < len(PLANETS) - 1 and rng.random() < 0.5):
        turns.append(
            Turn(
                "Which planet comes right after it, going outwards?",
                _x([PLANETS[k + 1]], notes=f"After {planet} comes {PLANETS[k + 1]}."),
            )
        )
    else:
        turns.append(
            Turn(
                "And which planet comes just before it?",
                _x([PLANETS[k - 1]], notes=f"Before {planet} comes {PLANETS[k - 1]}."),
            )
        )
    return turns


RECIPES = [  # (dish, [(quantity, unit, ingredient)]): the last ingredient is the final question
    ("pancake", [(200, "g", "flour"), (300, "ml", "milk"), (2, "", "eggs")]),
    ("banana bread", [(250, "g", "flour"), (100, "g", "sugar"), (3, "", "bananas")]),
    ("pizza dough", [(500, "g", "flour"), (320, "ml", "water"), (7, "g", "yeast")]),
    ("lemonade", [(240, "ml", "lemon juice"), (150, "g", "sugar"), (900, "ml", "water")]),
    ("omelette", [(3, "", "eggs"), (30, "ml", "milk"), (20, "g", "butter")]),
]


def _amount(q: int, unit: str, name: str) -> str:
    return f"{q} {unit} of {name}" if unit else f"{q} {name}"


def _qty_variants(n: int, unit: str) -> list[str]:
    """Accepted spellings of a scaled quantity: 1500, 1,500, 1.5 kg / 1.5 litres."""
    out = [str(n)]
    if n >= 1000:
        out.append(f"{n:,}")
        big = {"g": ["kg", "kilograms", "kilos"], "ml": ["l", "litres", "liters"]}.get(unit, [])
        out += [f"{n / 1000:g} {u}" for u in big]
    return out


def topic_recipe_scaling(rng: Slots) -> list[Turn]:
    dish, parts = rng.one(RECIPES)
    serves, factor = rng.choice([2, 4]), rng.choice([2, 3])
    (q0, u0, n0), (q1, u1, n1), (q2, u2, n2) = parts
    turns = [
        Turn(
            f"My {dish} recipe serves {serves} and uses {_amount(*parts[0])}, {_amount(*parts[1])} and "
            f"{_amount(*parts[2])}."
        ),
        Turn(
            f"How {'much' if u0 else 'many'} {n0} would I need for {serves * factor} people?",
            _x(_qty_variants(q0 * factor, u0), notes=f"{q0} x {factor} = {q0 * factor}."),
        ),
    ]
    if rng.random() < 0.5:
        turns.append(Turn(f"And the {n1}?", _x(_qty_variants(q1 * factor, u1), notes=f"{q1} x {factor}.")))
    ask = (
        f"How many {n2}, then?"
        if not u2
        else rng.choice([f"And how much {n2}, then?", f"What about the {n2}?"])
    )
    turns.append(
        Turn(
            ask,
            _x(
                _qty_variants(q2 * factor, u2),
                notes=f"{q2} x {factor} = {q2 * factor}, for {serves * factor} people.",
            ),
        )
    )
    return turns


# ---------------------------------------------------------------- constraint updates
# A rule is set, then changed or lifted: the expectations follow the rule in force at each turn.


def cu_word_limit_lifted(rng: Slots) -> list[Turn]:
    n = rng.choice([30, 40, 50])
    qs = rng.deal(EXPLAIN_QS, 4)
    c = Constraint("max_words", n - 1, f"under {n} words")  # "under 30" allows 29
    turns = [
        Turn(
            f"From now on, keep every answer under {n} words. {qs[0][0]}",
            _x(qs[0][1], constraints=[c], notes=f"Limit of {n} words is in force."),
        )
    ]
    for q, key, _ in qs[1 : rng.randint(2, 3)]:
        turns.append(Turn(q, _x(key, constraints=[c], notes=f"The {n}-word limit still holds.")))
    turns.append(
        Turn(
            f"Thanks. You can forget the word limit now: explain {qs[-1][2]} in detail, with an example.",
            _x(
                qs[-1][1],
                constraints=[Constraint("min_words", 60, "a detailed answer")],
                notes="The word limit was lifted and a detailed answer was requested.",
            ),
        )
    )
    return turns


def _lang(code: str, why: str) -> Constraint:
    return Constraint("language", code, why)


def cu_language_switch_back(rng: Slots) -> list[Turn]:
    code = rng.choice(sorted(LANGUAGES))
    lang = LANGUAGES[code]
    qs = rng.deal(FACT_QS, 4)
    turns = [
        Turn(
            f"From now on, please answer only in {lang}. {qs[0][0]}",
            _x(qs[0][1], constraints=[_lang(code, f"answer in {lang}")], notes=f"Reply in {lang}."),
        )
    ]
    for q, answer in qs[1 : rng.randint(2, 3)]:
        turns.append(
            Turn(
                q,
                _x(
                    answer,
                    constraints=[_lang(code, f"still {lang}")],
                    notes=f"The question is in English but the rule says {lang}.",
                ),
            )
        )
    turns.append(
        Turn(
            f"You can switch back to English now. {qs[-1][0]}",
            _x(qs[-1][1], constraints=[_lang("en", "back to English")], notes="Reply in English again."),
        )
    )
    return turns


def cu_language_change(rng: Slots) -> list[Turn]:
    first, second = rng.sample(sorted(LANGUAGES), 2)
    qs = rng.deal(FACT_QS, 3)
    l1, l2 = LANGUAGES[first], LANGUAGES[second]
    return [
        Turn(
            f"Please answer in {l1} from now on. {qs[0][0]}",
            _x(qs[0][1], constraints=[_lang(first, f"answer in {l1}")], notes=f"Reply in {l1}."),
        ),
        Turn(
            f"Actually, I'd rather practise my {l2}. Use {l2} instead from now on. {qs[1][0]}",
            _x(qs[1][1], constraints=[_lang(second, f"switched to {l2}")], notes=f"Rule changed: {l2}."),
        ),
        Turn(
            qs[2][0],
            _x(
                qs[2][1],
                constraints=[_lang(second, f"still {l2}")],
                notes=f"{l2} is still the rule; {l1} was superseded.",
            ),
        ),
    ]


def cu_allergy_lifted(rng: Slots) -> list[Turn]:
    allergen, v = rng.one(COOKABLE_ALLERGENS)
    note = f"User is allergic to {allergen}."
    turns = [
        Turn(
            f"Heads up: I'm allergic to {allergen}, so please leave them out of any food suggestions."
            if allergen.endswith("s")
            else f"Heads up: I'm allergic to {allergen}, so please leave it out of any food suggestions."
        ),
        Turn("What could I cook for friends this Saturday?", _x(avoid=v, notes=note)),
    ]
    if rng.random() < 0.5:
        turns.append(Turn("And a starter to go with it?", _x(avoid=v, notes=note)))
    turns.append(
        Turn(
            "Great news: my allergist says the allergy I told you about is gone! Can you suggest a dish "
            "that really features that ingredient?",
            _x(v, notes=f"The allergy to {allergen} was lifted; the dish should feature {allergen}."),
        )
    )
    return turns


def cu_format_change(rng: Slots) -> list[Turn]:
    (f1, s1), (f2, s2) = rng.sample([("bullet_list", "bullet lists"), ("numbered_list", "numbered lists")], 2)
    qs = rng.deal(LIST_QS, 3)
    c1, c2 = Constraint("format", f1, s1), Constraint("format", f2, s2)
    return [
        Turn(f"Please format your answers as {s1}. {qs[0]}", _x(constraints=[c1], notes=f"Use {s1}.")),
        Turn(
            f"Switch to {s2} from now on, please. {qs[1]}",
            _x(constraints=[c2], notes=f"Rule changed to {s2}."),
        ),
        Turn(qs[2], _x(constraints=[c2], notes=f"{s2} still apply; {s1} were superseded.")),
    ]


MEETINGS = [
    "team meeting",
    "book club meeting",
    "project kickoff",
    "volunteer training",
    "band rehearsal",
    "parents' evening",
]


def cu_meeting_moved(rng: Slots) -> list[Turn]:
    event = rng.one(MEETINGS)
    d1, d2 = rng.sample(DAYS, 2)
    (t1, v1), (t2, v2) = rng.deal(TIMES, 2)
    turns = [
        Turn(f"Our {event} is on {d1} at {t1}."),
        Turn("Can you draft a two-line invitation for it?", _x([d1], v1, notes=f"{d1} at {t1}.")),
    ]
    if rng.random() < 0.5:
        turns += _fillers(rng, 1)
    turns += [
        Turn(f"Change of plan: the {event} has been moved to {d2} at {t2}."),
        Turn(
            "Please write a one-line reminder I can send everyone.",
            _x(
                [d2], v2, avoid=[d1], notes=f"Moved from {d1} {t1} to {d2} {t2}; the old day must not appear."
            ),
        ),
    ]
    return turns


PURCHASES = [
    ("laptop", "euros"),
    ("road bike", "dollars"),
    ("sofa", "pounds"),
    ("camera", "euros"),
    ("phone", "dollars"),
    ("washing machine", "euros"),
]


def cu_budget_update(rng: Slots) -> list[Turn]:
    item, cur = rng.one(PURCHASES)
    b1, b2 = rng.choice([(600, 1100), (750, 1250), (900, 1400), (600, 400), (900, 450), (750, 500)])
    b2_v = [str(b2)] + ([f"{b2:,}", f"{b2:,}".replace(",", ".")] if b2 >= 1000 else [])
    return [
        Turn(f"I'm shopping for a new {item} and my budget is {b1} {cur}."),
        Turn("What should I prioritise at that price?", _x(notes=f"Budget is {b1} {cur}.")),
        Turn(f"Change of plan: my budget is now {b2} {cur}."),
        Turn(
            "Sum up what I'm looking for in one sentence so I can paste it into a forum post.",
            _x(
                b2_v,
                [item],
                avoid=[str(b1)],
                notes=f"Budget changed from {b1} to {b2} {cur}; only {b2} applies.",
            ),
        ),
    ]


def cu_caps_lifted(rng: Slots) -> list[Turn]:
    qs = rng.deal(FACT_QS, 4)
    caps = Constraint("format", "all_caps", "reply in all caps")
    # The scorer compiles patterns case-insensitively; the scoped (?-i:...) asks for real lowercase.
    lower = Constraint("must_match", "(?-i:[a-z]{3,})", "normal capitalisation again")
    turns = [
        Turn(
            f"For a little experiment, please reply in ALL CAPS from now on. {qs[0][0]}",
            _x(qs[0][1], constraints=[caps], notes="All caps."),
        )
    ]
    for q, answer in qs[1 : rng.randint(2, 3)]:
        turns.append(Turn(q, _x(answer, constraints=[caps], notes="All caps still in force.")))
    turns.append(
        Turn(
            f"Experiment over, please go back to normal capitalisation. {qs[-1][0]}",
            _x(qs[-1][1], constraints=[lower], notes="All caps was lifted: normal sentence case."),
        )
    )
    return turns


def cu_word_limit_tightened(rng: Slots) -> list[Turn]:
    n1, n2 = rng.choice([60, 80]), rng.choice([15, 20, 25])
    qs = rng.deal(EXPLAIN_QS, 3)
    c1, c2 = (
        Constraint("max_words", n1 - 1, f"under {n1} words"),  # "under 60" allows 59
        Constraint("max_words", n2 - 1, f"under {n2} words"),
    )
    return [
        Turn(
            f"Please keep your answers under {n1} words. {qs[0][0]}",
            _x(qs[0][1], constraints=[c1], notes=f"Limit of {n1} words is in force."),
        ),
        Turn(
            f"Shorter, please: from now on, under {n2} words. {qs[1][0]}",
            _x(qs[1][1], constraints=[c2], notes=f"Limit tightened to {n2}."),
        ),
        Turn(qs[2][0], _x(qs[2][1], constraints=[c2], notes=f"The {n2}-word limit still holds.")),
    ]


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "memory": (
        mem_self_intro,
        mem_pet,
        mem_colleague,
        mem_siblings,
        mem_shopping,
        mem_numbers,
        mem_trip,
        mem_appointments,
    ),
    "preferences": (
        pref_diet,
        pref_allergy,
        pref_nickname,
        pref_metric,
        pref_format,
        pref_favourites,
        pref_transport,
        pref_plain_style,
    ),
    "topic_continuity": (
        topic_rivers,
        topic_countries,
        topic_elements,
        topic_books,
        topic_dishes,
        topic_rectangle,
        topic_planets,
        topic_recipe_scaling,
    ),
    "constraint_updates": (
        cu_word_limit_lifted,
        cu_language_switch_back,
        cu_language_change,
        cu_allergy_lifted,
        cu_format_change,
        cu_meeting_moved,
        cu_budget_update,
        cu_caps_lifted,
        cu_word_limit_tightened,
    ),
}


# ---------------------------------------------------------------- generation
def _category_items(category: str, rng: Slots) -> list[Item]:
    """50 distinct conversations, templates taken round-robin so each is used about equally."""
    templates = TEMPLATES[category]
    seen: set[tuple[str, ...]] = set()
    items: list[Item] = []
    for i in range(PER_CATEGORY):
        template = templates[i % len(templates)]
        for _ in range(500):
            turns = template(rng)
            key = tuple(t.user for t in turns)
            if key not in seen:
                break
        else:  # a pool too small for its share would otherwise silently repeat conversations
            raise RuntimeError(f"template {template.__name__} cannot produce enough distinct conversations")
        seen.add(key)
        assert MIN_TURNS <= len(turns) <= MAX_TURNS and turns[-1].expect is not None, template.__name__
        items.append(
            Item(
                id=f"{category}-{i + 1:03d}",
                category=category,
                turns=tuple(turns),
                meta={"template": template.__name__},
            )
        )
    return items


def _pilot_ids(items: list[Item], rng: random.Random) -> set[str]:
    """10 ids: one per template first (so the pilot covers every template), the rest at random."""
    by_template: dict[str, list[str]] = {}
    for it in items:
        by_template.setdefault(it.meta["template"], []).append(it.id)
    chosen = {rng.choice(ids) for ids in by_template.values()}
    rest = sorted(it.id for it in items if it.id not in chosen)
    chosen |= set(rng.sample(rest, PILOT_PER_CATEGORY - len(chosen)))
    return chosen


def generate_conversations(seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Generate the benchmark rows.

    Args:
        seed: Seed of the single :class:`Slots` generator that drives every choice.

    Returns:
        200 rows, each ``Item.to_dict()`` plus ``split`` ("pilot"/"main") and ``generator_version``.
        Categories are interleaved (memory, preferences, topic_continuity, constraint_updates, memory,
        ...) so that ``limit=N`` gives a balanced smoke set.
    """
    rng = Slots(seed)
    per_cat = {c: _category_items(c, rng) for c in CATEGORIES}
    pilot: set[str] = set()
    for c in CATEGORIES:
        pilot |= _pilot_ids(per_cat[c], rng)
    rows = []
    for i in range(PER_CATEGORY):
        for c in CATEGORIES:
            item = per_cat[c][i]
            row = item.to_dict()
            row["split"] = "pilot" if item.id in pilot else "main"
            row["generator_version"] = GENERATOR_VERSION
            rows.append(row)
    return rows


def serialize(rows: list[dict[str, Any]]) -> bytes:
    """The exact file bytes: one sorted-key JSON object per line, UTF-8, trailing newline."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def write_conversations(path: str | Path = DATA_PATH, seed: int = DEFAULT_SEED) -> Path:
    """Generate and write the JSONL file; returns the path written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(serialize(generate_conversations(seed)))
    return p


def load(*, split: str = "full", path: str | Path | None = None) -> Benchmark:
    """Load and validate the conversations file (the packaged one unless ``path`` is given)."""
    return load_generated(
        "conversations",
        path or DATA_PATH,
        split=split,
        categories=CATEGORIES,
        min_turns=MIN_TURNS,
        max_turns=MAX_TURNS,
        row_splits=ROW_SPLITS,
    )


def main() -> None:
    """Regenerate the packaged file and print its hash."""
    from posttrain.benchmarks import sha256_hex

    p = write_conversations()
    print(f"wrote {p} ({GENERATOR_VERSION}, sha256 {sha256_hex(p.read_bytes())})")


if __name__ == "__main__":
    main()
