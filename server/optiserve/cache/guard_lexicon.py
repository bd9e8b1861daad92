"""Small curated word lists for the false-hit guard's vetoes (see :mod:`.guard`).

Each list is linguistic, not fitted to any data set: opposite pairs (antonyms) whose swap
turns a question into a different one, calendar names that act as values (like numbers),
and names of places, peoples, languages and programming languages, spelled in lower case
so that an uncapitalised "indian" / "pakistani" or "python" / "java" is still a name.
Words are lower-case tokens as :func:`optiserve.cache.guard.parse` yields them.
"""

from __future__ import annotations


def _forms(spec: str) -> frozenset[str]:
    return frozenset(spec.split())


#: Opposite pairs: (one side's forms, the other side's forms). A question with a word of one
#: side and none of the other, matched to a question with the reverse, asks the opposite.
ANTONYMS: tuple[tuple[frozenset[str], frozenset[str]], ...] = tuple(
    (_forms(x), _forms(y))
    for x, y in (
        ("short shorter shortest", "long longer longest"),
        ("best better", "worst worse"),
        ("most", "least"),
        ("cheap cheaper cheapest inexpensive", "expensive costliest"),
        ("before", "after"),
        ("increase increases increased increasing", "decrease decreases decreased decreasing"),
        ("buy buys buying bought", "sell sells selling sold"),
        ("hot hotter hottest", "cold colder coldest"),
        ("min minimum", "max maximum"),
        ("first", "last"),
        ("male males", "female females"),
        ("man men", "woman women"),
        ("boy boys", "girl girls"),
        ("husband husbands", "wife wives"),
        ("boyfriend boyfriends", "girlfriend girlfriends"),
        ("win wins winning won", "lose loses losing lost"),
        ("pro pros", "con cons"),
        ("advantage advantages", "disadvantage disadvantages"),
        ("benefit benefits", "drawback drawbacks"),
        ("high higher highest", "low lower lowest"),
        ("fast faster fastest", "slow slower slowest"),
        ("big bigger biggest large larger largest", "small smaller smallest"),
        ("easy easier easiest", "hard harder hardest difficult"),
        ("rich richer richest", "poor poorer poorest"),
        ("gain gains gaining gained", "lose loses losing lost"),
        ("import imports importing imported", "export exports exporting exported"),
        ("upload uploads uploading uploaded", "download downloads downloading downloaded"),
        ("positive", "negative"),
        ("legal", "illegal"),
        ("possible", "impossible"),
        ("start starts starting started", "stop stops stopping stopped"),
        ("add adding added", "remove removing removed"),
        ("enable enabling enabled", "disable disabling disabled"),
        ("north northern", "south southern"),
        ("east eastern", "west western"),
        ("give gives giving gave given", "receive receives receiving received"),
        ("send sends sending sent", "receive receives receiving received"),
        ("teach teaches teaching taught", "learn learns learning learned learnt"),
        ("pro", "anti"),
        ("older oldest", "younger youngest"),
        ("love loves loved", "hate hates hated"),
        ("true", "false"),
        ("open opens opening opened", "close closes closing closed"),
        ("left", "right"),
        ("up", "down"),
        ("on", "off"),
        ("push pushes pushing pushed", "pull pulls pulling pulled"),
        ("raise raises raising raised", "lower lowers lowering lowered"),
        ("freeze freezes freezing froze", "thaw thaws thawing thawed"),
        ("use", "avoid"),
        ("recursive recursively", "iterative iteratively"),
        ("child children kid kids", "adult adults"),
        ("seconds", "minutes"),
        ("minutes", "hours"),
        ("hours", "days"),
        ("cause causes caused", "effect effects"),
    )
)

#: Quantifiers by what they claim; two questions whose quantifiers claim different things
#: ask different questions ("Do all snakes lay eggs?" / "Do most snakes lay eggs?", "Does
#: it ever snow?" / "Does it always snow?").
QUANTIFIERS: dict[str, str] = {
    **{w: "all" for w in _forms("all every each always everyone everything")},
    **{w: "some" for w in _forms("any some ever sometimes anyone anything someone")},
    **{w: "most" for w in _forms("most mostly usually")},
    **{w: "few" for w in _forms("few rarely seldom")},
}

#: Auxiliaries by tense: "Is Pluto a planet?" / "Was Pluto a planet?" ask about two times.
TENSES: dict[str, str] = {
    **{w: "present" for w in _forms("is are am do does has have")},
    **{w: "past" for w in _forms("was were did had")},
}

#: Words that join two terms symmetrically: swapping the terms around them changes nothing
#: ("Python vs Java" / "Java vs Python", "cats and dogs" / "dogs and cats").
SYMMETRIC_JOINERS = _forms("and or vs versus v between with nor")

#: Prefixes that make a word its opposite (``biased`` / ``unbiased``); used only when the
#: bare word is at least :data:`NEGATING_PREFIX_MIN_BASE` letters long. ``in-`` and its
#: forms ``im-``/``il-``/``ir-`` are left out: too many words only look prefixed (``infront``,
#: ``install``, ``impress``); their common opposites are in :data:`ANTONYMS` instead.
NEGATING_PREFIXES = ("un", "dis", "non")
NEGATING_PREFIX_MIN_BASE = 5

#: Month and weekday names, each mapped to one value. "may" (a modal verb far more often
#: than the month) and three-letter abbreviations (``jan``, ``mar`` are also names and
#: words) are left out.
CALENDAR: dict[str, str] = {
    **{m: m for m in _forms("january february march april june july august september")},
    **{m: m for m in _forms("october november december")},
    "sept": "september",
    **{d: d for d in _forms("monday tuesday wednesday thursday friday saturday sunday")},
}

#: Countries, their peoples and languages, each form mapped to one canonical name (a
#: demonym and its country are the same place: ``Indian`` = ``India``).
_PLACES = {
    "india": "india indian indians hindi",
    "pakistan": "pakistan pakistani pakistanis urdu",
    "bangladesh": "bangladesh bangladeshi bangladeshis bengali bangla",
    "china": "china chinese mandarin cantonese",
    "japan": "japan japanese",
    "korea": "korea korean koreans",
    "usa": "usa america american americans",
    "canada": "canada canadian canadians",
    "mexico": "mexico mexican mexicans",
    "brazil": "brazil brazilian brazilians portuguese",
    "uk": "uk britain british england english",
    "ireland": "ireland irish",
    "france": "france french",
    "germany": "germany german germans",
    "italy": "italy italian italians",
    "spain": "spain spanish",
    "russia": "russia russian russians",
    "ukraine": "ukraine ukrainian ukrainians",
    "turkey": "turkish turks",
    "iran": "iran iranian iranians persian farsi",
    "iraq": "iraq iraqi iraqis",
    "israel": "israel israeli israelis hebrew",
    "egypt": "egypt egyptian egyptians",
    "arabia": "arabia arab arabs arabic saudi",
    "nepal": "nepal nepali nepalese",
    "sri lanka": "lanka lankan lankans sinhala",
    "australia": "australia australian australians",
    "nigeria": "nigeria nigerian nigerians",
    "africa": "africa african africans",
    "europe": "europe european europeans",
    "asia": "asia asian asians",
    "sweden": "sweden swedish swede swedes",
    "norway": "norway norwegian norwegians",
    "netherlands": "netherlands dutch holland",
    "greece": "greece greek greeks",
    "poland": "poland polish",
    "vietnam": "vietnam vietnamese",
    "thailand": "thailand thai",
    "indonesia": "indonesia indonesian indonesians",
    "philippines": "philippines filipino filipinos",
    "singapore": "singapore singaporean",
    "malaysia": "malaysia malaysian malay",
    "tamil": "tamil tamils",
    "telugu": "telugu",
    "malayalam": "malayalam",
    "kannada": "kannada",
    "marathi": "marathi",
    "gujarati": "gujarati",
    "punjabi": "punjabi",
}

#: Programming languages (only names that are rarely ordinary English words: no ``go``,
#: ``rust``, ``swift``, ``r``).
_PROGRAMMING = (
    "python java javascript typescript php perl ruby kotlin scala haskell matlab fortran cobol "
    "lisp clojure erlang elixir lua pascal delphi assembly vba c++ c# objective-c"
)

NAMES: dict[str, str] = {
    **{form: place for place, forms in _PLACES.items() for form in forms.split()},
    **{lang: lang for lang in _PROGRAMMING.split()},
}
