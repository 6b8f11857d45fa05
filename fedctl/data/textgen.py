"""A seeded English-like sentence generator: the project's own text for demos and tests.

Sentences come from small grammar templates (determiner, adjective, noun, verb, adverb, preposition)
over a vocabulary of real English words grouped by topic. Each sentence picks one topic and draws most
of its content words from it, so words co-occur the way they do in real text: a language model can learn
both the grammar and the topics. `POSITIVE_WORDS` / `NEGATIVE_WORDS` are adjectives with a clear polarity,
for generating sentiment-like labelled sentences.

Hand-written rather than a library: the machines are offline and no packaged corpus fits (nltk's corpora
download at run time); a few hundred lines of word lists make the output deterministic and dependency-free.
"""

from __future__ import annotations

import random

__all__ = ["VOCABULARY", "POSITIVE_WORDS", "NEGATIVE_WORDS", "TOPICS", "generate_sentences"]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# ---------------------------------------------------------------- topics: nouns, transitive verbs, adjectives
# Verbs are base forms; `_past` conjugates them (irregular forms listed in _IRREGULAR_PAST).
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "kitchen": {
        "nouns": _words(
            "bread soup kettle oven spoon knife plate bowl onion garlic butter cheese apple lemon "
            "carrot potato pepper salt sugar flour honey pan pot stove recipe cook baker dinner "
            "breakfast lunch supper cake pie sauce rice bean tomato cabbage napkin jar cupboard"
        ),
        "verbs": _words("bake boil slice stir taste chop peel season serve wash fry roast pour mix grate"),
        "adjectives": _words("hot salty sweet sour crisp fresh spicy tender ripe warm"),
    },
    "sea": {
        "nouns": _words(
            "boat ship sailor captain harbor wave shore beach island anchor sail mast deck crew "
            "fisherman net whale dolphin shell tide current storm lighthouse rope cabin compass "
            "oar reef gull crab pier dock voyage coast cliff"
        ),
        "verbs": _words("sail steer anchor row haul tie sink float chart spot guide board launch"),
        "adjectives": _words("salty wet stormy calm deep blue distant rough sandy foggy"),
    },
    "farm": {
        "nouns": _words(
            "farmer barn field tractor cow horse sheep goat pig chicken hen rooster egg milk hay "
            "wheat corn fence gate orchard plow seed harvest pasture stable meadow donkey lamb "
            "calf bucket shovel scarecrow crop soil well"
        ),
        "verbs": _words("plant plow feed milk shear harvest water herd gather fence dig sow rake"),
        "adjectives": _words("muddy green golden dusty rural fertile wooden rusty lazy hungry"),
    },
    "city": {
        "nouns": _words(
            "street bus taxi train station bridge tower market shop bank hotel museum library "
            "square subway traffic crowd driver mayor police officer building apartment corner "
            "sidewalk avenue cafe theater restaurant park fountain statue tram"
        ),
        "verbs": _words("visit cross build drive park rent paint clean close open repair block enter"),
        "adjectives": _words("busy crowded noisy tall modern narrow urban grand famous empty"),
    },
    "school": {
        "nouns": _words(
            "teacher student pupil lesson book pencil notebook desk classroom exam homework "
            "principal chalk board lecture class grade essay poem chapter question answer "
            "dictionary map globe library ruler scholar professor course subject"
        ),
        "verbs": _words("read write teach study learn grade copy explain solve memorize review spell"),
        "adjectives": _words("clever curious strict difficult easy quiet correct wrong careful bright"),
    },
    "forest": {
        "nouns": _words(
            "tree oak pine leaf branch root trunk moss fern mushroom deer bear wolf fox owl squirrel "
            "rabbit path trail stream river hunter ranger camp tent fire log bark acorn berry nest "
            "bird hill valley"
        ),
        "verbs": _words("climb chop track hunt follow gather burn hide search cross explore watch"),
        "adjectives": _words("wild dark shady tall ancient mossy silent thick dense leafy"),
    },
    "music": {
        "nouns": _words(
            "song singer band piano guitar violin drum flute trumpet melody tune concert choir "
            "orchestra note rhythm chord stage audience album record voice dancer composer "
            "conductor harp cello lyric verse chorus ballad"
        ),
        "verbs": _words("play sing hum tune compose record practice perform clap whistle conduct strum"),
        "adjectives": _words("loud soft musical lively gentle slow catchy sharp sweet classical"),
    },
    "weather": {
        "nouns": _words(
            "rain snow wind sun cloud sky thunder lightning fog frost ice hail storm breeze "
            "morning evening night season summer winter spring autumn rainbow forecast puddle "
            "umbrella coat temperature shower flood drought"
        ),
        "verbs": _words("predict measure expect watch fear welcome notice report dry soak cover"),
        "adjectives": _words("cold warm chilly windy rainy sunny cloudy freezing humid mild"),
    },
    "sport": {
        "nouns": _words(
            "ball team player coach goal match game race runner score referee stadium field "
            "bat glove helmet net court medal trophy champion league season fan whistle jersey "
            "sprint lap tennis soccer football swimmer"
        ),
        "verbs": _words("kick throw catch win lose coach score train chase pass hit block defend cheer"),
        "adjectives": _words("fast strong fit tired eager skilled athletic final winning rival"),
    },
    "health": {
        "nouns": _words(
            "doctor nurse patient hospital clinic medicine pill fever cough cold wound bandage "
            "heart lung blood bone muscle tooth dentist ambulance bed illness cure remedy "
            "vitamin exercise diet sleep pulse headache injury surgeon"
        ),
        "verbs": _words("heal treat cure examine visit bandage measure prescribe help comfort rest"),
        "adjectives": _words("sick healthy pale weak strong sore painful swollen careful calm"),
    },
    "travel": {
        "nouns": _words(
            "traveler ticket passport suitcase bag map airport plane flight pilot journey trip "
            "road highway village town country border guide tourist luggage hostel camera "
            "postcard souvenir railway platform mountain desert lake valley"
        ),
        "verbs": _words("pack book reach leave miss catch carry photograph wander explore plan guide"),
        "adjectives": _words("foreign distant remote exotic long short scenic local heavy cheap"),
    },
    "work": {
        "nouns": _words(
            "office manager worker clerk computer screen keyboard printer letter report meeting "
            "budget contract client project deadline email phone file folder desk company "
            "salary boss engineer machine factory tool hammer ladder"
        ),
        "verbs": _words("type print send sign check fix build design order hire finish schedule file"),
        "adjectives": _words("busy late early urgent formal digital broken new efficient careful"),
    },
    "home": {
        "nouns": _words(
            "house room door window roof garden wall floor stair chair table lamp sofa blanket "
            "pillow mirror clock carpet curtain kitchen garage attic cellar mother father sister "
            "brother baby dog cat neighbor friend child"
        ),
        "verbs": _words("clean sweep paint open close lock fix decorate share visit call hug feed"),
        "adjectives": _words("cozy quiet tidy messy warm small large old bright familiar"),
    },
    "art": {
        "nouns": _words(
            "artist painter sculptor canvas brush easel gallery portrait landscape sketch palette "
            "frame color shadow clay marble chisel studio exhibition poster mural crayon ink "
            "model critic collector masterpiece pattern texture outline"
        ),
        "verbs": _words("sketch carve sculpt frame display sell admire study exhibit restore blend"),
        "adjectives": _words("vivid pale abstract colorful famous precious delicate bold subtle faded"),
    },
    "science": {
        "nouns": _words(
            "scientist laboratory experiment microscope telescope planet star moon comet atom "
            "molecule cell gene magnet battery circuit wire crystal formula theory data sample "
            "chemist physicist rocket satellite orbit galaxy fossil volcano"
        ),
        "verbs": _words("observe test prove discover analyze heat cool weigh launch calculate publish"),
        "adjectives": _words("scientific accurate precise invisible electric magnetic frozen solar tiny complex"),
    },
}

# ---------------------------------------------------------------- general word classes
DETERMINERS = _words("the a this that every one another some no")
PLURAL_DETERMINERS = _words("the some many few several these those two three")
PRONOUNS = _words("i you we they")  # take the base form of a verb in the present tense
SINGULAR_PRONOUNS = _words("he she it")
NAMES = _words("anna ben clara david emma frank grace henry iris jack kate leo maria nora oscar paul rosa sam tom vera")
MODALS = _words("will can may must should could would might")
GENERAL_ADJECTIVES = _words(
    "big little huge tiny young old red yellow white black brown grey purple orange pink round square "
    "flat heavy light early late strange ordinary simple plain rare common secret hidden open closed "
    "full empty clean dirty dry smooth rough sharp dull soft hard thin thick wide narrow short long "
    "sudden gentle quick slow proud shy brave nervous serious funny quiet loud rich poor public private"
)
POSITIVE_WORDS = _words(
    "good great excellent wonderful lovely delightful pleasant cheerful happy joyful kind generous "
    "friendly helpful brilliant splendid superb marvelous charming beautiful elegant graceful "
    "delicious tasty reliable honest clever calm peaceful comfortable perfect fantastic amazing "
    "impressive inspiring satisfying refreshing enjoyable fabulous terrific glorious gorgeous "
    "warmhearted thoughtful polite loyal trustworthy successful"
)
NEGATIVE_WORDS = _words(
    "bad terrible awful horrible dreadful unpleasant gloomy sad miserable unkind selfish rude "
    "unhelpful boring dull ugly clumsy tasteless disgusting unreliable dishonest foolish anxious "
    "noisy uncomfortable broken useless disappointing annoying frustrating tiresome nasty cruel "
    "bitter hostile lousy poor shabby grim filthy stale rotten greedy lazy careless worthless "
    "dreary tedious painful"
)
ADVERBS = _words(
    "quickly slowly carefully quietly loudly gently suddenly happily sadly eagerly calmly "
    "badly well often rarely always never sometimes usually again soon today yesterday "
    "tomorrow early late finally nearly almost really truly clearly easily barely gladly "
    "proudly nervously patiently politely boldly briskly softly firmly warmly openly"
)
PREPOSITIONS = _words(
    "in on under over near behind beside across through along around inside outside beyond "
    "toward from with without after before during above below between against into past"
)
GENERAL_VERBS = _words(
    "see find take make keep hold bring give show like love hate want need use move push pull "
    "lift drop hide buy sell borrow lend choose meet greet join leave forget remember describe "
    "admire ignore notice mention carry touch paint draw count"
)
INTRANSITIVE_VERBS = _words(
    "sleep laugh smile wait walk run rest talk sit stand fall rise arrive return work shout "
    "whisper dance swim jump travel stay vanish shine glow tremble wander cry agree"
)
CONJUNCTIONS = _words("and but so because while when although")
AUXILIARY = _words("is was are were be been being has had have did does do not there very too")

_IRREGULAR_PAST = {
    "see": "saw", "find": "found", "take": "took", "make": "made", "keep": "kept", "hold": "held",
    "bring": "brought", "give": "gave", "sell": "sold", "buy": "bought", "lend": "lent",
    "choose": "chose", "meet": "met", "leave": "left", "forget": "forgot", "lift": "lifted",
    "drop": "dropped", "sleep": "slept", "run": "ran", "sit": "sat", "stand": "stood", "fall": "fell",
    "rise": "rose", "swim": "swam", "shine": "shone", "cry": "cried", "draw": "drew", "hide": "hid",
    "read": "read", "write": "wrote", "teach": "taught", "spell": "spelled", "sing": "sang",
    "throw": "threw", "catch": "caught", "win": "won", "lose": "lost", "hit": "hit", "build": "built",
    "drive": "drove", "rent": "rented", "dig": "dug", "sow": "sowed", "feed": "fed", "shear": "sheared",
    "sink": "sank", "tie": "tied", "burn": "burned", "fry": "fried", "chop": "chopped", "stir": "stirred",
    "plan": "planned", "strum": "strummed", "clap": "clapped", "hug": "hugged", "shop": "shopped",
    "send": "sent", "sweep": "swept", "rest": "rested", "hum": "hummed", "grate": "grated",
    "dry": "dried", "copy": "copied", "carry": "carried", "pass": "passed", "rake": "raked",
    "herd": "herded", "haul": "hauled", "row": "rowed", "deal": "dealt", "spot": "spotted",
    "order": "ordered", "visit": "visited", "enter": "entered", "wander": "wandered", "cover": "covered",
    "tremble": "trembled", "vanish": "vanished", "whisper": "whispered", "travel": "traveled",
    "hunt": "hunted", "track": "tracked", "plant": "planted", "chart": "charted", "print": "printed",
    "gather": "gathered", "follow": "followed", "explain": "explained", "welcome": "welcomed",
    "prescribe": "prescribed", "photograph": "photographed", "finish": "finished",
    "schedule": "scheduled", "comfort": "comforted", "examine": "examined", "conduct": "conducted",
    "whistle": "whistled", "practice": "practiced", "perform": "performed", "measure": "measured",
    "predict": "predicted", "expect": "expected", "report": "reported", "defend": "defended",
    "cheer": "cheered", "design": "designed", "hire": "hired", "type": "typed", "sign": "signed",
    "check": "checked", "fix": "fixed", "decorate": "decorated", "share": "shared", "call": "called",
    "lock": "locked", "open": "opened", "close": "closed", "paint": "painted", "clean": "cleaned",
    "repair": "repaired", "block": "blocked", "park": "parked", "cross": "crossed",
}


def _past(verb: str) -> str:
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _plural(noun: str) -> str:
    irregular = {"child": "children", "sheep": "sheep", "deer": "deer", "fish": "fish", "mouse": "mice",
                 "goose": "geese", "tooth": "teeth", "wolf": "wolves", "leaf": "leaves", "knife": "knives",
                 "shelf": "shelves", "calf": "calves", "man": "men", "woman": "women"}
    if noun in irregular:
        return irregular[noun]
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _build_vocabulary() -> tuple[str, ...]:
    words: set[str] = set()
    for topic in TOPICS.values():
        for group in topic.values():
            words.update(group)
    for group in (DETERMINERS, PLURAL_DETERMINERS, PRONOUNS, SINGULAR_PRONOUNS, NAMES, MODALS,
                  GENERAL_ADJECTIVES, POSITIVE_WORDS, NEGATIVE_WORDS, ADVERBS, PREPOSITIONS,
                  GENERAL_VERBS, INTRANSITIVE_VERBS, CONJUNCTIONS, AUXILIARY):
        words.update(group)
    return tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _build_vocabulary()
"""Base forms of every word the generator draws from (inflected forms such as plurals come on top)."""


class _Sentence:
    """One sentence's draws: a topic, and a bias towards its words (topic/word co-occurrence)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.topic = TOPICS[rng.choice(sorted(TOPICS))]

    def pick(self, topical: tuple[str, ...], general: tuple[str, ...], p_topic: float = 0.75) -> str:
        return self.rng.choice(topical if self.rng.random() < p_topic else general)

    def noun(self) -> str:
        return self.pick(self.topic["nouns"], self.rng.choice([t["nouns"] for t in TOPICS.values()]), 0.85)

    def adjective(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(self.topic["adjectives"])
        if r < 0.8:
            return self.rng.choice(GENERAL_ADJECTIVES)
        return self.rng.choice(POSITIVE_WORDS if r < 0.9 else NEGATIVE_WORDS)

    def transitive(self) -> str:
        return self.pick(self.topic["verbs"], GENERAL_VERBS, 0.7)

    def noun_phrase(self, allow_plural: bool = True, plural: bool | None = None) -> list[str]:
        if plural is None:
            plural = allow_plural and self.rng.random() < 0.25
        det = self.rng.choice(PLURAL_DETERMINERS if plural else DETERMINERS)
        words = [det]
        if self.rng.random() < 0.5:
            words.append(self.adjective())
        noun = self.noun()
        words.append(_plural(noun) if plural else noun)
        if det == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return words

    def subject(self) -> tuple[list[str], str]:
        """Return the subject's words and its person: 'sg' (third singular), 'base' (I/you/we/they/plural)."""
        r = self.rng.random()
        if r < 0.15:
            return [self.rng.choice(PRONOUNS)], "base"
        if r < 0.25:
            return [self.rng.choice(SINGULAR_PRONOUNS)], "sg"
        if r < 0.35:
            return [self.rng.choice(NAMES)], "sg"
        plural = self.rng.random() < 0.25
        return self.noun_phrase(plural=plural), ("base" if plural else "sg")

    def verb_group(self, verb: str, person: str) -> list[str]:
        r = self.rng.random()
        if r < 0.45:
            return [_past(verb)]
        if r < 0.75:
            return [self.rng.choice(MODALS), verb]
        if r < 0.85:
            return ["did", "not", verb]
        return [verb if person == "base" else _third_person(verb)]

    def prep_phrase(self) -> list[str]:
        return [self.rng.choice(PREPOSITIONS), *self.noun_phrase()]

    def clause(self) -> list[str]:
        subj, person = self.subject()
        r = self.rng.random()
        if r < 0.55:  # subject verb object [pp] [adverb]
            words = subj + self.verb_group(self.transitive(), person) + self.noun_phrase()
            if self.rng.random() < 0.4:
                words += self.prep_phrase()
        elif r < 0.75:  # subject intransitive-verb [adverb] pp
            words = subj + self.verb_group(self.rng.choice(INTRANSITIVE_VERBS), person)
            if self.rng.random() < 0.5:
                words.append(self.rng.choice(ADVERBS))
            words += self.prep_phrase()
            return words
        elif r < 0.9:  # subject was/is adjective [and adjective]
            be = self.rng.choice(("was", "is") if person == "sg" else ("were", "are"))
            words = subj + [be]
            if self.rng.random() < 0.3:
                words.append("very")
            words.append(self.adjective())
            if self.rng.random() < 0.4:
                words += ["and", self.adjective()]
            return words
        else:  # there was a noun pp
            words = ["there", "was", *self.noun_phrase(allow_plural=False), *self.prep_phrase()]
        if self.rng.random() < 0.3:
            words.append(self.rng.choice(ADVERBS))
        return words


def _sentence(rng: random.Random, min_words: int, max_words: int) -> str:
    for _ in range(50):
        s = _Sentence(rng)
        words = s.clause()
        while len(words) < min_words:
            words += [rng.choice(CONJUNCTIONS), *s.clause()]
        if len(words) <= max_words:
            break
    else:  # the grammar rarely overshoots tiny ranges; truncating keeps the length contract
        words = words[:max_words]
    question = rng.random() < 0.08 and words[0] not in ("there",)
    return " ".join(words) + ("?" if question else ".")


def generate_sentences(n: int, seed: int, min_words: int = 4, max_words: int = 14) -> list[str]:
    """Return `n` lowercase English-like sentences with `min_words`..`max_words` words each.

    Deterministic for a seed. Words are separated by single spaces; the last one carries a "." or "?".
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}..{max_words}")
    rng = random.Random(seed)
    return [_sentence(rng, min_words, max_words) for _ in range(n)]
