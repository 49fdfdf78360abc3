"""The single-turn instruction benchmark: about 300 checkable instructions in seven kinds.

Each item is a one-turn :class:`~posttrain.items.Item` whose ``category`` is its kind. Every
expectation is something a deterministic triage scorer can check (a required answer, a format,
a word limit, a banned word) with notes for the LLM judge. Where the expectation is the whole
definition of the instruction (nothing a judge must weigh: no "same meaning", no "any correct
translation", no unchecked "two sentences"), the turn is declared ``verifiable`` and carries no
notes, so ``scorer=verifiable`` decides it exactly. 130 items are held out as ``test``;
:func:`heldout_texts` lets the SFT data generator filter them out of its training data.

Candidates are built from fixed pools, shuffled with a seeded ``random.Random`` and cut to a
quota per kind, so the file is reproducible byte for byte: regenerate it with
``python -m posttrain.benchmarks.instructions``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.benchmarks import Benchmark, load_generated
from posttrain.items import Constraint, Expectation, Item, Turn

GENERATOR_VERSION = "instr-v2"  # v2: verifiable turns declared (issue 19)
DEFAULT_SEED = 1234
KINDS: tuple[str, ...] = (
    "translation",
    "lists",
    "counting",
    "rewriting",
    "formatting",
    "short_answer",
    "constrained_writing",
)
QUOTA = {k: 43 for k in KINDS} | {"constrained_writing": 42}  # 300 in all
TEST_QUOTA = {k: 19 for k in KINDS[:4]} | {k: 18 for k in KINDS[4:]}  # 130 held out
SPLITS: tuple[str, ...] = ("full", "train", "test")
ROW_SPLITS: tuple[str, ...] = ("train", "test")
DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "instructions.jsonl"

Candidate = tuple[str, Expectation]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]


def _x(
    *groups: Sequence[str],
    avoid: Sequence[str] = (),
    constraints: Sequence[Constraint] = (),
    notes: str = "",
    verifiable: bool = False,
) -> Expectation:
    return Expectation(tuple(tuple(g) for g in groups), tuple(avoid), tuple(constraints), notes, verifiable)


def _v(*groups: Sequence[str], avoid: Sequence[str] = (), constraints: Sequence[Constraint] = ()) -> Expectation:
    """A verifiable expectation: the checks are the definition, so there are no judge notes."""
    return _x(*groups, avoid=avoid, constraints=constraints, verifiable=True)


def _num(n: int) -> list[str]:
    """Accepted spellings of a number: digits, digits with a thousands comma, the word."""
    out = [str(n)]
    if n >= 1000:
        out.append(f"{n:,}")
    if n < len(NUMBER_WORDS):
        out.append(NUMBER_WORDS[n])
    return out


# ---------------------------------------------------------------- translation
LANG_NAMES = {"es": "Spanish", "fr": "French", "de": "German"}
TRANSLATIONS: list[tuple[str, dict[str, list[str]]]] = [
    ("thank you", {"es": ["gracias"], "fr": ["merci"], "de": ["danke"]}),
    ("good morning", {"es": ["buenos días", "buenos dias"], "fr": ["bonjour"], "de": ["guten Morgen"]}),
    ("good night", {"es": ["buenas noches"], "fr": ["bonne nuit"], "de": ["gute Nacht"]}),
    ("the cat", {"es": ["gato"], "fr": ["chat"], "de": ["Katze"]}),
    ("the dog", {"es": ["perro"], "fr": ["chien"], "de": ["Hund"]}),
    ("water", {"es": ["agua"], "fr": ["eau"], "de": ["Wasser"]}),
    ("the house", {"es": ["casa"], "fr": ["maison"], "de": ["Haus"]}),
    ("the book", {"es": ["libro"], "fr": ["livre"], "de": ["Buch"]}),
    ("the apple", {"es": ["manzana"], "fr": ["pomme"], "de": ["Apfel"]}),
    ("bread", {"es": ["pan"], "fr": ["pain"], "de": ["Brot"]}),
    ("the sun", {"es": ["sol"], "fr": ["soleil"], "de": ["Sonne"]}),
    ("the moon", {"es": ["luna"], "fr": ["lune"], "de": ["Mond"]}),
    ("the school", {"es": ["escuela", "colegio"], "fr": ["école", "ecole"], "de": ["Schule"]}),
    ("I am hungry", {"es": ["hambre"], "fr": ["faim"], "de": ["Hunger", "hungrig"]}),
    ("see you tomorrow", {"es": ["mañana", "manana"], "fr": ["demain"], "de": ["morgen"]}),
    ("Where is the train station?", {"es": ["estación", "estacion"], "fr": ["gare"], "de": ["Bahnhof"]}),
    (
        "the library",
        {"es": ["biblioteca"], "fr": ["bibliothèque", "bibliotheque"], "de": ["Bibliothek", "Bücherei"]},
    ),
    ("the window", {"es": ["ventana"], "fr": ["fenêtre", "fenetre"], "de": ["Fenster"]}),
    ("the cheese", {"es": ["queso"], "fr": ["fromage"], "de": ["Käse", "Kaese"]}),
    ("the tree", {"es": ["árbol", "arbol"], "fr": ["arbre"], "de": ["Baum"]}),
]
FROM_SPANISH = [
    ("¿Dónde está la biblioteca?", ["library"]),
    ("Me gusta mucho el café.", ["coffee"]),
    ("El perro duerme en el jardín.", ["dog"]),
    ("Mi hermana vive en Madrid.", ["sister"]),
    ("Hoy hace mucho calor.", ["hot", "heat"]),
    ("Necesito comprar leche.", ["milk"]),
]
# Whole sentences: a required keyword is a proxy for a faithful translation, which needs a judge.
SENTENCE_TEXTS = frozenset({"I am hungry", "see you tomorrow", "Where is the train station?"})
TRANSLATE_ASK = [
    "Translate '{t}' into {lang}.",
    "How do you say '{t}' in {lang}?",
    "What is '{t}' in {lang}? Give just the translation.",
]


def _translation(rng: random.Random) -> list[Candidate]:
    out = []
    for text, by_lang in TRANSLATIONS:
        for code, answers in by_lang.items():
            ask = rng.choice(TRANSLATE_ASK).format(t=text, lang=LANG_NAMES[code])
            cs = (
                [Constraint("max_words", 15, "just the translation")] if "just the translation" in ask else []
            )
            if text in SENTENCE_TEXTS:
                expect = _x(answers, constraints=cs, notes=f"Any correct {LANG_NAMES[code]} translation.")
            else:  # a word or fixed phrase: its accepted translations are the definition
                expect = _v(answers, constraints=cs)
            out.append((ask, expect))
    for text, answers in FROM_SPANISH:
        out.append(
            (
                f"Translate this Spanish sentence into English: {text}",
                _x(answers, notes="Any faithful English translation."),
            )
        )
    return out


# ---------------------------------------------------------------- lists
LIST_TOPICS: list[tuple[str, list[list[str]]]] = [
    ("the four seasons", [["spring"], ["summer"], ["autumn", "fall"], ["winter"]]),
    ("the first five planets from the Sun", [["Mercury"], ["Venus"], ["Earth"], ["Mars"], ["Jupiter"]]),
    ("the three classic states of matter", [["solid"], ["liquid"], ["gas"]]),
    ("the first five months of the year", [["January"], ["February"], ["March"], ["April"], ["May"]]),
    ("the three primary colours of light", [["red"], ["green"], ["blue"]]),
    (
        "the seven continents",
        [
            ["Africa"],
            ["Antarctica"],
            ["Asia"],
            ["Europe"],
            ["North America"],
            ["South America"],
            ["Australia", "Oceania"],
        ],
    ),
    ("the four cardinal directions", [["north"], ["south"], ["east"], ["west"]]),
    ("the three branches of the US federal government", [["legislative"], ["executive"], ["judicial"]]),
    ("the first three noble gases in the periodic table", [["helium"], ["neon"], ["argon"]]),
    ("the first five prime numbers", [["2"], ["3"], ["5"], ["7"], ["11"]]),
    (
        "the colours of the rainbow",
        [["red"], ["orange"], ["yellow"], ["green"], ["blue"], ["violet", "purple"]],
    ),
    (
        "the days of the week, starting with Monday",
        [["Monday"], ["Tuesday"], ["Wednesday"], ["Thursday"], ["Friday"], ["Saturday"], ["Sunday"]],
    ),
    ("the five Great Lakes of North America", [["Superior"], ["Michigan"], ["Huron"], ["Erie"], ["Ontario"]]),
    ("the first three letters of the Greek alphabet", [["alpha"], ["beta"], ["gamma"]]),
    ("the five oceans", [["Pacific"], ["Atlantic"], ["Indian"], ["Arctic"], ["Southern", "Antarctic"]]),
    (
        "the eight planets of the solar system",
        [[p] for p in ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")],
    ),
    (
        "the four national languages of Switzerland",
        [["German"], ["French"], ["Italian"], ["Romansh", "Romansch"]],
    ),
    (
        "the four members of the Beatles",
        [["Lennon", "John"], ["McCartney", "Paul"], ["Harrison", "George"], ["Starr", "Ringo"]],
    ),
    ("the four nucleotide bases of DNA", [["adenine"], ["thymine"], ["guanine"], ["cytosine"]]),
    ("the four inner planets", [["Mercury"], ["Venus"], ["Earth"], ["Mars"]]),
    ("the five Nordic countries", [["Denmark"], ["Finland"], ["Iceland"], ["Norway"], ["Sweden"]]),
    (
        "the five traditional human senses",
        [["sight", "vision", "seeing"], ["hearing"], ["smell"], ["taste"], ["touch"]],
    ),
    (
        "the three particles that make up an atom",
        [["proton", "protons"], ["neutron", "neutrons"], ["electron", "electrons"]],
    ),
    ("the three primary colours in traditional painting", [["red"], ["yellow"], ["blue"]]),
    (
        "the first four presidents of the United States",
        [["Washington"], ["Adams"], ["Jefferson"], ["Madison"]],
    ),
    ("the four Gospels of the New Testament", [["Matthew"], ["Mark"], ["Luke"], ["John"]]),
    ("the Three Musketeers", [["Athos"], ["Porthos"], ["Aramis"]]),
    (
        "the four countries of the United Kingdom",
        [["England"], ["Scotland"], ["Wales"], ["Northern Ireland"]],
    ),
    ("the three Baltic states", [["Estonia"], ["Latvia"], ["Lithuania"]]),
    (
        "the first five elements of the periodic table",
        [["hydrogen"], ["helium"], ["lithium"], ["beryllium"], ["boron"]],
    ),
    (
        "the six kinds of chess piece",
        [["king"], ["queen"], ["rook", "castle"], ["bishop"], ["knight"], ["pawn"]],
    ),
    ("the four suits in a standard deck of cards", [["hearts"], ["diamonds"], ["clubs"], ["spades"]]),
    ("the three main types of rock", [["igneous"], ["sedimentary"], ["metamorphic"]]),
    ("the four Teenage Mutant Ninja Turtles", [["Leonardo"], ["Michelangelo"], ["Donatello"], ["Raphael"]]),
    ("the four months that have exactly 30 days", [["April"], ["June"], ["September"], ["November"]]),
    ("the three Brontë sisters", [["Charlotte"], ["Emily"], ["Anne"]]),
    ("the three colours of the CMY colour model", [["cyan"], ["magenta"], ["yellow"]]),
    ("the five colours of the Olympic rings", [["blue"], ["yellow"], ["black"], ["green"], ["red"]]),
    ("the four main phases of mitosis", [["prophase"], ["metaphase"], ["anaphase"], ["telophase"]]),
    (
        "the six New England states",
        [["Maine"], ["New Hampshire"], ["Vermont"], ["Massachusetts"], ["Rhode Island"], ["Connecticut"]],
    ),
    ("the three colours of the French flag", [["blue"], ["white"], ["red"]]),
    (
        "the four fundamental forces of nature",
        [["gravity", "gravitational"], ["electromagnetic", "electromagnetism"], ["strong"], ["weak"]],
    ),
    ("the three layers of the Earth", [["crust"], ["mantle"], ["core"]]),
    ("the four basic tastes besides umami", [["sweet"], ["sour"], ["salty"], ["bitter"]]),
]
LIST_ASK = [
    ("List {t} as a numbered list.", "numbered_list"),
    ("Give me {t} as a bulleted list.", "bullet_list"),
    ("Write {t} as a numbered list, one per line.", "numbered_list"),
    ("Using bullet points, list {t}.", "bullet_list"),
]


def _lists(rng: random.Random) -> list[Candidate]:
    out = []
    for topic, groups in LIST_TOPICS:
        ask, fmt = rng.choice(LIST_ASK)
        out.append(
            (
                ask.format(t=topic),
                _v(*groups, constraints=[Constraint("format", fmt, fmt.replace("_", " "))]),
            )
        )
    return out


# ---------------------------------------------------------------- counting
LETTER_WORDS = [
    ("strawberry", "r"),
    ("banana", "a"),
    ("mississippi", "s"),
    ("bookkeeper", "e"),
    ("committee", "t"),
    ("raspberry", "r"),
    ("occurrence", "c"),
    ("balloon", "l"),
    ("assessment", "s"),
    ("parallel", "l"),
    ("tennessee", "e"),
    ("pepper", "p"),
    ("abracadabra", "a"),
    ("successful", "s"),
    ("tomorrow", "o"),
    ("necessary", "s"),
    ("referee", "e"),
    ("hippopotamus", "p"),
]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog",
    "She sells sea shells by the sea shore",
    "A journey of a thousand miles begins with a single step",
    "All that glitters is not gold",
    "The early bird catches the worm",
    "Practice makes perfect",
    "Knowledge is power and time is money",
    "We will meet at the old library after lunch",
    "Every cloud has a silver lining",
    "Rome was not built in a day",
]
FACT_COUNTS = [
    ("legs does a spider have", 8),
    ("sides does a hexagon have", 6),
    ("days are in a leap year", 366),
    ("players does one team have on the field in a soccer match", 11),
    ("strings does a standard guitar have", 6),
    ("keys does a standard piano have", 88),
    ("bones are in the adult human body", 206),
    ("minutes are in a day", 1440),
    ("hearts does an octopus have", 3),
    ("sides does an octagon have", 8),
    ("centimetres are in a metre", 100),
    ("squares are on a chessboard", 64),
]
ITEMS = ["apples", "stamps", "marbles", "pencils", "cookies", "tickets", "coins", "stickers"]


def _counting(rng: random.Random) -> list[Candidate]:
    short = Constraint("max_words", 15, "just the number")
    out = []
    for word, letter in LETTER_WORDS:
        n = word.count(letter)
        out.append(
            (
                f"How many times does the letter '{letter}' appear in the word '{word}'? "
                f"Answer with just the number.",
                _v(_num(n), constraints=[short]),
            )
        )
    for sentence in SENTENCES:
        n = len(sentence.split())
        out.append(
            (
                f"How many words are in this sentence: '{sentence}'? Answer with just the number.",
                _v(_num(n), constraints=[short]),
            )
        )
    for what, n in FACT_COUNTS:
        out.append((f"How many {what}?", _v(_num(n))))
    for item in ITEMS:
        a, b, c = rng.randint(12, 40), rng.randint(2, 9), rng.randint(3, 11)
        out.append(
            (
                f"I had {a} {item}, gave away {b} and then got {c} more. How many {item} do I have now?",
                _v(_num(a - b + c)),
            )
        )
    return out


# ---------------------------------------------------------------- rewriting
PASSIVE = [
    ("The chef cooked the meal.", "cooked", "meal"),
    ("The storm damaged the old bridge.", "damaged", "bridge"),
    ("Maria painted the fence.", "painted", "fence"),
    ("The committee approved the budget.", "approved", "budget"),
    ("A young engineer designed the new app.", "designed", "app"),
    ("The children planted three trees.", "planted", "trees"),
    ("The company hired two new nurses.", "hired", "nurses"),
    ("The dog chased the cat.", "chased", "cat"),
    ("Our neighbour repaired the roof.", "repaired", "roof"),
    ("The teacher graded the exams.", "graded", "exams"),
]
# (sentence, present verb, past verb): the simple-past rewrite is the sentence with that one verb changed
PAST = [
    ("She walks to the market every morning.", "walks", "walked"),
    ("They eat dinner at seven.", "eat", "ate"),
    ("I write a letter to my grandmother.", "write", "wrote"),
    ("The train leaves at noon.", "leaves", "left"),
    ("We swim in the lake.", "swim", "swam"),
    ("He buys fresh bread.", "buys", "bought"),
    ("The baby sleeps all afternoon.", "sleeps", "slept"),
    ("My friends sing in a choir.", "sing", "sang"),
    ("The museum opens at nine.", "opens", "opened"),
    ("You forget your keys again.", "forget", "forgot"),
]
CAPS = [
    ("please close the door quietly.", "door"),
    ("the meeting starts in ten minutes.", "meeting"),
    ("do not feed the ducks.", "ducks"),
    ("fresh coffee is ready in the kitchen.", "coffee"),
    ("the library closes early on fridays.", "library"),
    ("remember to bring your passport.", "passport"),
    ("the concert has been cancelled.", "concert"),
]
COMMAS = [
    ("After dinner, we walked to the park, sat on a bench, and watched the sunset.", ["park"], ["sunset"]),
    ("My brother, who lives in Oslo, loves skiing, hiking, and fishing.", ["Oslo"], ["skiing"]),
    ("First, preheat the oven; then, mix the flour, sugar, and eggs.", ["oven"], ["flour"]),
    ("Yes, I know, but honestly, the train was late again.", ["train"], ["late"]),
    ("In the morning, before work, I usually read, stretch, and drink tea.", ["morning"], ["tea"]),
    ("The hotel, although expensive, had a pool, a gym, and a great view.", ["hotel"], ["pool"]),
    ("Luckily, the rain stopped, the sun came out, and the picnic went ahead.", ["picnic"], ["rain"]),
]
SHORTEN = [
    (
        "Due to the fact that it was raining very heavily outside, we made the decision to stay at home and "
        "watch a film together.",
        12,
        ["rain", "raining", "rained"],
    ),
    (
        "In my personal opinion, I honestly think that it would be a really good idea for us to leave "
        "a little bit earlier tomorrow morning.",
        10,
        ["earlier", "early"],
    ),
    (
        "At this point in time, the vast majority of the people who work in our office prefer to have their "
        "lunch outside.",
        12,
        ["lunch"],
    ),
    (
        "The reason why I was late for the meeting this morning is because my bus broke down on the way to "
        "work.",
        12,
        ["bus"],
    ),
    (
        "It is absolutely essential that each and every one of the students hands in their completed "
        "homework by Friday.",
        10,
        ["Friday"],
    ),
    (
        "Despite the fact that the restaurant was very expensive, the food that they served to us was not "
        "particularly good.",
        12,
        ["restaurant"],
    ),
]
SYNONYM = [
    ("happy", "The happy children ran across the field.", "children"),
    ("big", "They live in a big house near the river.", "house"),
    ("fast", "My new laptop is incredibly fast.", "laptop"),
    ("tired", "After the long hike we were all tired.", "hike"),
    ("smart", "Our new colleague is very smart.", "colleague"),
    ("begin", "The lecture will begin at nine.", "lecture"),
]


def _rewriting(rng: random.Random) -> list[Candidate]:
    out = []
    only = " Reply with only the rewritten sentence."
    for sentence, verb, noun in PASSIVE:
        out.append(
            (
                f"Rewrite this sentence in the passive voice: '{sentence}'",
                _x(
                    [noun],
                    constraints=[
                        Constraint("must_match", rf"\b(was|were|has been|have been) {verb}\b", "passive form")
                    ],
                    notes="Same meaning, passive voice.",
                ),
            )
        )
    for sentence, present, past in PAST:
        # The whole rewritten sentence (without its full stop) is the one accepted answer.
        rewritten = sentence.rstrip(".").replace(f" {present} ", f" {past} ", 1)
        out.append((f"Rewrite this sentence in the past tense: '{sentence}'", _v([rewritten])))
    for sentence, _noun in CAPS:
        # The same words, every letter a capital: contains() ignores case, all_caps checks it.
        out.append(
            (
                f"Rewrite this sentence in all capital letters: '{sentence}'",
                _v([sentence.rstrip(".")], constraints=[Constraint("format", "all_caps", "all capitals")]),
            )
        )
    for sentence, a, b in COMMAS:
        out.append(
            (
                f"Rewrite this sentence without using any commas: '{sentence}'",
                _x(
                    a,
                    b,
                    constraints=[Constraint("format", "no_commas", "no commas")],
                    notes="Same meaning, no commas at all.",
                ),
            )
        )
    for sentence, n, key in SHORTEN:
        out.append(
            (
                f"Shorten this sentence to at most {n} words without losing its meaning: '{sentence}'" + only,
                _x(key, constraints=[Constraint("max_words", n, f"at most {n} words")]),
            )
        )
    for word, sentence, noun in SYNONYM:
        out.append(
            (
                f"Rewrite this sentence, replacing '{word}' with a synonym: '{sentence}'" + only,
                _x([noun], avoid=[word], notes=f"'{word}' replaced by a synonym; rest unchanged."),
            )
        )
    return out


# ---------------------------------------------------------------- formatting
PEOPLE = [
    ("Ana", 31, "Lisbon"),
    ("Kofi", 45, "Accra"),
    ("Lena", 28, "Hamburg"),
    ("Raj", 52, "Pune"),
    ("Yuki", 19, "Osaka"),
    ("Tomás", 37, "Bogotá"),
    ("Nora", 64, "Dublin"),
    ("Ivan", 23, "Sofia"),
    ("Amara", 41, "Lagos"),
    ("Pierre", 33, "Lyon"),
]
BOOK_ROWS = [
    ("Dune", "Frank Herbert", 1965),
    ("Beloved", "Toni Morrison", 1987),
    ("Emma", "Jane Austen", 1815),
    ("Ulysses", "James Joyce", 1922),
    ("Solaris", "Stanisław Lem", 1961),
    ("Middlemarch", "George Eliot", 1871),
    ("Frankenstein", "Mary Shelley", 1818),
]
ITEM_POOL = [
    "apples",
    "bread",
    "milk",
    "rice",
    "olive oil",
    "carrots",
    "pasta",
    "cheese",
    "lentils",
    "coffee",
    "soap",
    "tea",
    "butter",
    "garlic",
    "oats",
]
STEPS = [
    ["boil the water", "add the pasta", "cook for ten minutes", "drain and serve"],
    ["preheat the oven", "mix the batter", "pour it into a tin", "bake for thirty minutes"],
    ["unplug the router", "wait thirty seconds", "plug it back in", "wait for the lights to turn green"],
    ["fill the kettle", "boil the water", "add a tea bag to a cup", "pour and steep for three minutes"],
    ["remove the flat tyre", "check the tube for holes", "patch the hole", "pump up the tyre"],
    ["open the app", "tap settings", "choose notifications", "turn off the sound"],
    ["wash the rice", "add twice as much water", "simmer for fifteen minutes", "rest it covered"],
    ["water the soil", "dig a small hole", "place the seedling", "firm the soil around it"],
]
LINE_SEQS = [
    ("the days from Monday to Friday", [["Monday"], ["Friday"]]),
    ("the four seasons", [["spring"], ["winter"]]),
    ("the numbers from one to ten", [["one", "1"], ["ten", "10"]]),
    ("the first five even numbers", [["2", "two"], ["10", "ten"]]),
    ("the months of summer in the northern hemisphere", [["June"], ["August"]]),
    ("the colours of a traffic light", [["red"], ["green"]]),
    ("the three primary colours", [["red"], ["blue"]]),
    ("the two days of the weekend", [["Saturday"], ["Sunday"]]),
]


def _keys(*keys: str) -> list[Constraint]:
    """One ``must_match`` per JSON key the instruction names: ``"name":``."""
    return [Constraint("must_match", rf'"{k}"\s*:', f'key "{k}"') for k in keys]


def _in_order(steps: Sequence[str]) -> Constraint:
    """The steps' first words appear in the given order (across lines)."""
    words = [re.escape(s.split()[0]) for s in steps]
    return Constraint("must_match", r"(?s)" + r".*".join(rf"\b{w}\b" for w in words), "steps in the given order")


def _formatting(rng: random.Random) -> list[Candidate]:
    as_json = Constraint("format", "json", "valid JSON only")
    out = []
    for name, age, city in PEOPLE:
        out.append(
            (
                f'Return only a JSON object with the keys "name", "age" and "city" for this person: {name}, '
                f"{age} years old, lives in {city}.",
                _v([name], [str(age)], [city], constraints=[as_json, *_keys("name", "age", "city")]),
            )
        )
    for title, author, year in BOOK_ROWS:
        out.append(
            (
                f"Give me a JSON object describing the book {title} by {author} ({year}) with the keys "
                f'"title", "author" and "year". Output only the JSON.',
                _v([title], [author.split()[-1]], [str(year)], constraints=[as_json, *_keys("title", "author", "year")]),
            )
        )
    for _ in range(10):
        items = rng.sample(ITEM_POOL, rng.randint(3, 5))
        fmt = rng.choice(["bullet_list", "numbered_list"])
        said = "a bullet list" if fmt == "bullet_list" else "a numbered list"
        out.append(
            (
                f"Format these items as {said}: {', '.join(items)}.",
                _v(*([i] for i in items), constraints=[Constraint("format", fmt, said)]),
            )
        )
    for steps in STEPS:
        out.append(
            (
                f"Turn these steps into a numbered list: {'; '.join(steps)}.",
                _v(
                    *([s.split()[0]] for s in steps),
                    constraints=[Constraint("format", "numbered_list", "numbered"), _in_order(steps)],
                ),
            )
        )
    for what, groups in LINE_SEQS:
        out.append(
            (
                f"Write {what} on a single line, separated by commas.",
                _x(*groups, constraints=[Constraint("format", "single_line", "one line")]),
            )
        )
    return out


# ---------------------------------------------------------------- short answer
CAPITALS = [
    ("France", ["Paris"]),
    ("Germany", ["Berlin"]),
    ("Italy", ["Rome"]),
    ("Spain", ["Madrid"]),
    ("Japan", ["Tokyo"]),
    ("Canada", ["Ottawa"]),
    ("Australia", ["Canberra"]),
    ("Brazil", ["Brasília", "Brasilia"]),
    ("Egypt", ["Cairo"]),
    ("Kenya", ["Nairobi"]),
    ("Argentina", ["Buenos Aires"]),
    ("Norway", ["Oslo"]),
    ("Sweden", ["Stockholm"]),
    ("Poland", ["Warsaw"]),
    ("Turkey", ["Ankara"]),
    ("India", ["New Delhi"]),
    ("South Korea", ["Seoul"]),
    ("Peru", ["Lima"]),
    ("Portugal", ["Lisbon"]),
    ("Greece", ["Athens"]),
    ("Ireland", ["Dublin"]),
    ("Thailand", ["Bangkok"]),
    ("Vietnam", ["Hanoi"]),
    ("Morocco", ["Rabat"]),
    ("Chile", ["Santiago"]),
    ("New Zealand", ["Wellington"]),
    ("Switzerland", ["Bern", "Berne"]),
    ("Nigeria", ["Abuja"]),
    ("Colombia", ["Bogotá", "Bogota"]),
    ("Austria", ["Vienna"]),
]
FACTS = [
    ("What is the chemical symbol for gold?", ["Au"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("At what temperature in degrees Celsius does water boil at sea level?", ["100"]),
    ("Who wrote the play Hamlet?", ["Shakespeare"]),
    ("Who painted The Starry Night?", ["van Gogh", "Gogh"]),
    ("What is the largest planet in our solar system?", ["Jupiter"]),
    ("What is the hardest natural substance?", ["diamond", "diamonds"]),
    ("Which gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "CO2"]),
    ("Who proposed the theory of evolution by natural selection?", ["Darwin"]),
    ("What is the currency of Japan?", ["yen"]),
    ("What is the official language of Brazil?", ["Portuguese"]),
    ("What is the square root of 144?", ["12", "twelve"]),
    ("What is the tallest mountain in the world?", ["Everest"]),
    ("What is the largest mammal?", ["blue whale"]),
]
SHORT_ASK = ["{q} Answer briefly.", "{q} Reply with just the answer.", "{q}"]


def _short_answer(rng: random.Random) -> list[Candidate]:
    brief = Constraint("max_words", 10, "a short answer")
    qs = [(f"What is the capital of {country}?", answers) for country, answers in CAPITALS] + FACTS
    out = []
    for q, answers in qs:
        ask = rng.choice(SHORT_ASK).format(q=q)
        out.append(
            (ask, _v(answers, constraints=[brief] if ask != q else []))
        )
    return out


# ---------------------------------------------------------------- constrained writing
# (topic, an obvious word to ban, two words to require)
WRITING_TOPICS = [
    ("the ocean", "water", ("waves", "salt")),
    ("coffee", "cup", ("morning", "aroma")),
    ("autumn", "leaves", ("cold", "orange")),
    ("city life", "busy", ("traffic", "night")),
    ("friendship", "friend", ("trust", "laugh")),
    ("a rainy day", "rain", ("umbrella", "puddle")),
    ("the moon", "night", ("silver", "tide")),
    ("bicycles", "ride", ("wheel", "hill")),
    ("libraries", "books", ("quiet", "card")),
    ("mountains", "high", ("snow", "trail")),
    ("baking bread", "oven", ("flour", "crust")),
    ("trains", "travel", ("station", "window")),
    ("gardening", "plants", ("soil", "seeds")),
    ("a thunderstorm", "loud", ("lightning", "sky")),
    ("music", "song", ("rhythm", "piano")),
    ("winter mornings", "cold", ("frost", "tea")),
    ("a lighthouse", "light", ("rocks", "keeper")),
    ("chess", "game", ("board", "queen")),
    ("volcanoes", "lava", ("ash", "mountain")),
    ("the first day of school", "school", ("backpack", "nervous")),
]


def _constrained_writing(rng: random.Random) -> list[Candidate]:
    out = []
    for topic, banned, (w1, w2) in WRITING_TOPICS:
        n = rng.choice([15, 20, 25])
        options = [
            (
                f"Write one sentence about {topic} in under {n} words.",
                _x(constraints=[Constraint("max_words", n, f"under {n} words")]),
            ),
            (
                f"Write a short paragraph of at least 60 words about {topic}.",
                _v(constraints=[Constraint("min_words", 60, "at least 60 words")]),
            ),
            (
                f"Write two sentences about {topic} without using the word '{banned}'.",
                _x(avoid=[banned], notes=f"Must not use '{banned}' (any case)."),
            ),
            (
                f"Write a haiku about {topic} in all capital letters.",
                _x(
                    constraints=[Constraint("format", "all_caps", "all capitals")], notes="Three short lines."
                ),
            ),
            (f"Write a short description of {topic} that uses the words '{w1}' and '{w2}'.", _v([w1], [w2])),
            (
                f"Describe {topic} in exactly three bullet points.",
                _x(
                    constraints=[Constraint("format", "bullet_list", "bullet points")],
                    notes="Exactly three bullets.",
                ),
            ),
            (
                f"Describe {topic} in one sentence without any commas.",
                _x(constraints=[Constraint("format", "no_commas", "no commas")]),
            ),
        ]
        # Three different constraints per topic keep both topics and constraint types varied.
        out += rng.sample(options, 3)
    return out


BUILDERS = {
    "translation": _translation,
    "lists": _lists,
    "counting": _counting,
    "rewriting": _rewriting,
    "formatting": _formatting,
    "short_answer": _short_answer,
    "constrained_writing": _constrained_writing,
}


def generate_instructions(seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Generate the benchmark rows.

    Args:
        seed: Seed of the single ``random.Random`` that drives every choice.

    Returns:
        300 rows (:data:`QUOTA` per kind), each ``Item.to_dict()`` plus ``split`` ("train"/"test",
        :data:`TEST_QUOTA` per kind held out) and ``generator_version``; kinds are interleaved so
        that ``limit=N`` is a mixed smoke set.

    Raises:
        RuntimeError: A kind has fewer distinct candidates than its quota.
    """
    rng = random.Random(seed)
    per_kind: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for kind in KINDS:
        cands = BUILDERS[kind](rng)
        rng.shuffle(cands)
        chosen = []
        for text, expect in cands:
            key = " ".join(text.lower().split())
            if key not in seen:
                seen.add(key)
                chosen.append((text, expect))
        if len(chosen) < QUOTA[kind]:
            raise RuntimeError(f"{kind}: only {len(chosen)} distinct candidates for a quota of {QUOTA[kind]}")
        chosen = chosen[: QUOTA[kind]]
        test = set(rng.sample(range(len(chosen)), TEST_QUOTA[kind]))
        rows = []
        for i, (text, expect) in enumerate(chosen):
            item = Item(
                id=f"instr-{kind}-{i + 1:03d}",
                category=kind,
                turns=(Turn(text, expect),),
                source="instructions",
            )
            rows.append(
                item.to_dict()
                | {"split": "test" if i in test else "train", "generator_version": GENERATOR_VERSION}
            )
        per_kind[kind] = rows
    longest = max(len(r) for r in per_kind.values())
    return [per_kind[k][i] for i in range(longest) for k in KINDS if i < len(per_kind[k])]


def serialize(rows: list[dict[str, Any]]) -> bytes:
    """The exact file bytes: one sorted-key JSON object per line, UTF-8, trailing newline."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def write_instructions(path: str | Path = DATA_PATH, seed: int = DEFAULT_SEED) -> Path:
    """Generate and write the JSONL file; returns the path written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(serialize(generate_instructions(seed)))
    return p


def load(*, split: str = "full", path: str | Path | None = None) -> Benchmark:
    """Load and validate the instructions file (the packaged one unless ``path`` is given)."""
    return load_generated(
        "instructions",
        path or DATA_PATH,
        split=split,
        categories=KINDS,
        min_turns=1,
        max_turns=1,
        row_splits=ROW_SPLITS,
    )


def heldout_texts(path: str | Path | None = None) -> list[str]:
    """The user texts of the held-out ``test`` instructions, for filtering training data.

    Args:
        path: Instructions file; the packaged one by default.

    Returns:
        The texts in file order.
    """
    return [item.turns[0].user for item in load(split="test", path=path).items]


def main() -> None:
    """Regenerate the packaged file and print its hash."""
    from posttrain.benchmarks import sha256_hex

    p = write_instructions()
    print(f"wrote {p} ({GENERATOR_VERSION}, sha256 {sha256_hex(p.read_bytes())})")


if __name__ == "__main__":
    main()
