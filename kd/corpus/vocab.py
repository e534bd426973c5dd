"""Word lists and inflection for the synthetic corpus's sentence generator.

Every word is lowercase a-z (apostrophes only in contractions and "o'clock") and common
enough for eSpeak NG to pronounce from its English rules. Nouns and verbs are grouped by
semantic kind so that the grammar in `kd.corpus.sentences` builds sentences that read as
plain English ("the baker sliced the ripe melon", not "the melon sliced the baker").

Lists are written as whitespace-separated strings and split into tuples; order matters
(it fixes what a seeded draw returns), so never build them from sets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split())


class Kind(enum.Enum):
    """Semantic class of a noun; verbs list the kinds they accept as object or subject."""

    PERSON = "person"
    ANIMAL = "animal"
    OBJECT = "object"  # portable things
    FOOD = "food"
    CLOTHING = "clothing"
    VEHICLE = "vehicle"
    TEXT = "text"  # things that are read or written
    EVENT = "event"
    PLACE = "place"  # locations one goes to or is in
    FIXTURE = "fixture"  # fixed parts of buildings and streets


# ---------------------------------------------------------------- nouns (singular)

NOUNS: dict[Kind, tuple[str, ...]] = {
    Kind.PERSON: _split("""
        teacher doctor farmer baker driver nurse pilot singer painter writer student child
        man woman boy girl baby friend neighbor brother sister mother father uncle aunt
        cousin grandmother grandfather son daughter husband wife king queen prince princess
        soldier sailor captain artist actor dancer lawyer judge officer guard fisherman
        postman waiter chef gardener builder carpenter plumber engineer scientist professor
        manager clerk cashier customer visitor tourist stranger guest player coach runner
        swimmer hunter miner musician drummer reporter editor banker dentist surgeon mayor
        president leader worker volunteer passenger traveler pupil lady gentleman person
        partner author poet tailor butcher shepherd mechanic librarian secretary janitor
        firefighter ranger sheriff chief boss owner host hero twin teenager parent nephew
        niece bride groom priest athlete climber explorer inventor detective thief wizard
        giant knight clown magician juggler nanny farmhand cowboy"""),
    Kind.ANIMAL: _split("""
        dog cat horse cow pig sheep goat duck chicken rabbit mouse bird fish frog snake lion
        tiger bear wolf fox deer monkey elephant giraffe zebra camel donkey goose owl eagle
        parrot penguin turtle whale dolphin shark bee ant spider butterfly squirrel kitten
        puppy pony lamb calf bull hen rooster swan crow pigeon beaver otter raccoon hamster
        lizard crab octopus moose kangaroo panda koala rat bat seal hawk sparrow beetle
        snail worm mule buffalo leopard cheetah gorilla rhino ostrich peacock turkey ox"""),
    Kind.OBJECT: _split("""
        book chair table box bag key cup glass bottle plate bowl spoon fork knife pen pencil
        camera phone radio clock watch lamp candle mirror basket bucket blanket pillow
        towel umbrella wallet purse ring necklace bracelet coin stone ball kite doll puzzle
        guitar piano violin drum trumpet flute hammer saw ladder rope chain brush comb
        soap jar vase tray kettle pan pot teapot mug sofa bed desk stool shelf rug
        carpet curtain painting picture photo poster flag tent sack suitcase backpack
        parcel package present toy robot computer laptop keyboard screen printer battery
        torch lantern needle thread button shovel bell whistle flower plant seed
        leaf branch feather shell rock brick board wheel tire engine motor sword
        shield crown trophy medal statue globe compass magnet telescope microscope"""),
    Kind.FOOD: _split("""
        apple orange banana pear peach plum cherry grape lemon lime melon mango pineapple
        strawberry tomato potato carrot onion cabbage cucumber pepper pumpkin bean pea
        sandwich cake pie cookie biscuit muffin cupcake pizza burger sausage egg cheese
        loaf bun roll pancake waffle donut pretzel candy chocolate lollipop peanut walnut
        almond coconut avocado radish turnip lettuce mushroom olive pickle noodle dumpling
        omelet steak chicken salad soup stew pudding tart cracker"""),
    Kind.CLOTHING: _split("""
        hat coat shirt dress jacket scarf sweater glove boot shoe sock belt skirt uniform
        apron cap helmet vest blouse sandal slipper mitten raincoat jumper hood costume
        gown robe tie"""),
    Kind.VEHICLE: _split("""
        car bus train bike bicycle boat truck plane taxi ship tractor van wagon scooter
        canoe helicopter motorbike yacht ferry trailer"""),
    Kind.TEXT: _split("""
        letter card ticket map note newspaper magazine story poem list menu report message
        recipe label diary novel article email postcard song joke schedule invitation
        contract receipt page chapter notebook textbook"""),
    Kind.EVENT: _split("""
        meeting concert party game class show lesson movie match race wedding festival
        lecture picnic trip holiday birthday dinner lunch breakfast parade performance
        interview exam contest tournament ceremony rehearsal film"""),
    Kind.PLACE: _split("""
        park garden kitchen bedroom bathroom office school library museum hospital station
        airport market shop store bank church hotel restaurant cafe bakery farm field forest
        beach river lake hill mountain valley village town city island harbor zoo theater
        cinema stadium gym factory castle palace temple tower cottage cabin house hall
        classroom playground garage barn shed cellar attic studio camp desert jungle meadow
        pond stream coast port square street road avenue tunnel cave supermarket pharmacy
        laboratory university college club gallery mall bookshop yard orchard pier highway
        lane path trail canyon cliff shore bay ocean sea"""),
    Kind.FIXTURE: _split("""
        door window wall roof floor ceiling fence gate bridge tree statue fountain chimney
        balcony porch sink stove oven fridge fireplace mailbox bench hedge pillar elevator
        staircase doorway pipe lighthouse windmill"""),
}

IRREGULAR_PLURALS: dict[str, str] = {
    "man": "men", "woman": "women", "child": "children", "person": "people",
    "fisherman": "fishermen", "postman": "postmen", "gentleman": "gentlemen",
    "mouse": "mice", "goose": "geese", "ox": "oxen", "foot": "feet", "tooth": "teeth",
    "sheep": "sheep", "fish": "fish", "deer": "deer", "moose": "moose",
    "knife": "knives", "wife": "wives", "wolf": "wolves", "calf": "calves",
    "leaf": "leaves", "shelf": "shelves", "loaf": "loaves", "thief": "thieves",
    "scarf": "scarves",
    "hero": "heroes", "potato": "potatoes", "tomato": "tomatoes", "buffalo": "buffaloes",
}

# ---------------------------------------------------------------- proper names

FIRST_NAMES = _split("""
    james john robert michael william david richard joseph thomas charles daniel matthew
    anthony mark paul steven andrew kevin brian george edward ronald timothy jason jeffrey
    ryan jacob gary eric jonathan stephen larry justin scott frank benjamin gregory samuel
    raymond patrick alexander jack dennis jerry tyler aaron henry adam peter nathan walter
    harold kyle carl arthur roger keith jeremy lawrence sean albert ethan jesse billy bruce
    ralph jordan dylan alan wayne roy eugene louis russell bobby vincent philip oliver harry
    leo oscar max simon victor martin hugo felix ivan omar toby ben sam tom
    mary patricia jennifer linda elizabeth barbara susan jessica sarah karen nancy lisa betty
    margaret sandra ashley emily donna michelle carol amanda melissa stephanie rebecca laura
    sharon cynthia kathleen amy shirley angela helen anna brenda pamela nicole emma samantha
    katherine christine rachel catherine carolyn janet ruth maria heather diane julie joyce
    victoria olivia kelly christina lauren joan evelyn megan andrea hannah martha frances
    gloria ann teresa sara janice jean alice madison doris abigail julia judy grace denise
    amber marilyn beverly danielle sophia marie diana natalie isabella charlotte rose lucy
    sophie clara ella chloe mia zoe nora ruby ivy hazel violet eva iris stella daisy lily
    molly jane kate nina tina wendy paula vera""")

PLACE_NAMES = _split("""
    london paris rome berlin madrid vienna moscow tokyo cairo sydney toronto boston chicago
    denver dallas houston seattle portland phoenix atlanta miami detroit memphis nashville
    orlando oakland albany omaha tulsa reno salem dublin glasgow edinburgh manchester
    liverpool leeds bristol oxford cambridge york brighton cardiff belfast aberdeen canada
    mexico brazil peru chile spain france italy germany poland norway sweden finland denmark
    ireland scotland england wales egypt kenya china japan india russia greece portugal
    austria hungary iceland australia texas ohio florida nevada oregon utah alaska kansas
    iowa maine vermont montana arizona colorado africa europe asia america""")

# ---------------------------------------------------------------- adjectives

GENERAL_ADJECTIVES = _split("""
    big small large little tiny huge old new beautiful pretty strange unusual ordinary
    lovely wonderful nice perfect famous different special""")

ADJECTIVES: dict[Kind, tuple[str, ...]] = {
    Kind.PERSON: _split("""
        young tall short kind friendly happy sad angry tired hungry busy brave clever funny
        lazy polite rude quiet shy proud lucky calm nervous honest gentle patient careful
        wise rich poor strong weak sick healthy cheerful serious curious lonely sleepy
        thirsty worried excited bored grumpy smart generous helpful clumsy popular"""),
    Kind.ANIMAL: _split("""
        young wild tame hungry tired sleepy brown black white grey spotted striped fluffy
        furry noisy friendly clever lazy fierce gentle playful lost fast slow strong
        dangerous skinny"""),
    Kind.OBJECT: _split("""
        red blue green yellow purple pink brown black white grey golden silver wooden
        plastic metal heavy light empty full broken shiny dirty clean cheap expensive soft
        hard round square flat sharp dusty rusty fancy plain useful tall short long"""),
    Kind.FOOD: _split("""
        fresh ripe sweet sour bitter salty spicy hot cold warm delicious tasty crispy juicy
        stale raw frozen green red yellow huge"""),
    Kind.CLOTHING: _split("""
        red blue green yellow purple pink brown black white grey warm wet dry dirty clean
        cheap expensive woolen leather cotton silk striped spotted tight loose"""),
    Kind.VEHICLE: _split("""
        fast slow red blue white black silver shiny rusty expensive cheap electric noisy
        quiet dirty clean broken"""),
    Kind.TEXT: _split("""
        long short funny sad boring interesting important secret exciting dull clear
        confusing"""),
    Kind.EVENT: _split("""
        long short boring exciting loud noisy important fun busy formal private early late
        successful"""),
    Kind.PLACE: _split("""
        quiet busy crowded empty noisy peaceful dark bright clean dirty modern ancient
        narrow wide local sunny cold warm dangerous safe"""),
    Kind.FIXTURE: _split("""
        wooden broken painted white red green high low narrow wide heavy metal stone dark
        tall"""),
}

# Adjectives compared with -er/-est (inflected by `comparative`/`superlative`).
SUFFIX_GRADABLE = _split("""
    big small large tiny old new young tall short long fast slow strong weak heavy light
    cheap rich poor happy busy quiet loud warm cold hot bright dark clean dirty wide narrow
    deep high low soft hard sweet fresh brave calm kind wise funny lucky early late safe
    nice proud wild friendly pretty lazy noisy angry hungry sleepy healthy clever gentle
    sharp shiny tasty juicy spicy salty sour crispy smart rude strange""")
# Adjectives compared with "more"/"most".
PERIPHRASTIC_GRADABLE = _split("""
    beautiful famous expensive interesting dangerous important careful patient honest
    polite nervous curious popular modern delicious useful crowded peaceful exciting
    boring generous helpful cheerful serious playful successful""")
IRREGULAR_COMPARISON: dict[str, tuple[str, str]] = {
    "good": ("better", "best"),
    "bad": ("worse", "worst"),
}

INTENSIFIERS = _split("very quite really rather too so extremely fairly")

MANNER_ADVERBS = _split("""
    quickly slowly carefully quietly loudly happily sadly angrily calmly gently softly
    suddenly patiently politely nervously proudly easily badly well early late again
    together alone safely
    silently bravely eagerly kindly secretly smoothly noisily lazily
    cheerfully carelessly honestly seriously brightly warmly firmly neatly""")

PLACE_ADVERBS = _split("outside inside upstairs downstairs away everywhere nearby")

FREQUENCY_ADVERBS = _split("always usually often sometimes rarely seldom never")

WEATHER_ADJECTIVES = _split(
    "cold hot warm windy sunny cloudy foggy rainy stormy freezing wet dry")
WEATHER_VERBS = _split("rain snow")

# ---------------------------------------------------------------- verbs

# kind -> verbs that take a noun of that kind as their direct object
TRANSITIVE_VERBS: dict[Kind, tuple[str, ...]] = {
    Kind.PERSON: _split("""
        see watch notice find follow chase help meet call visit invite thank greet teach
        ask answer hug kiss miss love like trust remember forget know admire recognize
        blame warn pay hire wake save rescue protect guide draw photograph describe
        examine interview marry join obey ignore surprise comfort scare tease hear lead
        need want bring take pass feed count choose forgive believe understand support
        encourage beat catch"""),
    Kind.ANIMAL: _split("""
        see watch notice find lose follow chase feed pet hug call wake save rescue protect
        draw photograph describe examine catch hold carry lift wash buy sell keep own ride
        lead hear train hunt scare tease count love like fear ignore brush hide miss want
        need choose bring take weigh measure"""),
    Kind.OBJECT: _split("""
        see notice find lose carry hold buy sell bring take drop throw catch kick push
        pull lift open close lock fix repair break build paint clean wash dry fill empty
        cover hide share order choose count measure weigh compare collect borrow lend
        return keep need want use show pack wrap hang move touch grab steal hit leave guard
        decorate deliver examine test inspect design destroy burn check like hate forget
        remember admire describe draw photograph search drag polish sharpen shake remove
        replace"""),
    Kind.FOOD: _split("""
        see find buy sell bring carry hold drop share cut cover hide order choose count
        weigh compare cook bake eat taste prepare slice peel boil fry serve smell grab pick
        grow finish want need like hate love enjoy deliver burn wash pack mix chop heat
        chew swallow"""),
    Kind.CLOTHING: _split("""
        wear buy sell find lose wash dry fold hang iron mend sew pack carry hold borrow lend
        steal choose like want need keep remove"""),
    Kind.VEHICLE: _split("""
        see watch notice find buy sell drive ride park fly steer sail fix repair wash clean
        paint push pull chase follow lock load unload rent own borrow lend check test
        inspect design need want use compare crash stop miss catch"""),
    Kind.TEXT: _split("""
        read write send receive sign print copy finish check study explain collect borrow
        lend return keep show fold lose find burn share choose like hate love enjoy need
        want forget remember describe translate publish edit answer deliver post hide drop
        open close"""),
    Kind.EVENT: _split("""
        attend miss enjoy plan organize cancel watch join start finish win lose like hate
        love remember forget describe need want choose leave host announce postpone record
        prepare"""),
    Kind.PLACE: _split("""
        see visit leave enter explore search reach cross climb clean paint build design
        sell buy rent own guard protect decorate describe draw photograph inspect remember
        forget know recognize love like hate miss enjoy choose need want find pass destroy
        sweep tidy lock open close approach avoid measure"""),
    Kind.FIXTURE: _split("""
        see notice open close lock fix repair break build paint clean wash climb cross push
        hit touch decorate inspect design measure destroy sweep polish reach pass guard
        draw photograph describe remove replace cover move"""),
}

# subject kind -> verbs used without an object
INTRANSITIVE_VERBS: dict[Kind, tuple[str, ...]] = {
    Kind.PERSON: _split("""
        laugh smile cry sleep run walk jump swim dance sing shout whisper wait sit stand
        fall arrive leave return rest work play cough sneeze yawn listen nod wave hide
        climb shiver hurry travel relax complain agree disappear appear escape stop crawl
        sail ski skate cycle jog hunt march study cook read write eat drink think speak
        talk shop exercise wake stay wander snore blink tremble scream giggle frown sigh
        stretch kneel vote win lose retire succeed fail panic celebrate practice pause
        blush bow dive pray knock whistle clap shrug grin argue apologize drive paint draw
        fish hike camp sweat wink mumble stumble rush recover"""),
    Kind.ANIMAL: _split("sleep rest eat drink hide wait disappear appear escape wake stay wander"),
}

# verb -> the animals that do it, on top of INTRANSITIVE_VERBS[Kind.ANIMAL] ("the duck quacked")
ANIMAL_VERBS: dict[str, tuple[str, ...]] = {
    "bark": _split("dog puppy fox seal"),
    "growl": _split("dog bear wolf tiger lion leopard"),
    "howl": _split("wolf dog fox"),
    "roar": _split("lion tiger bear leopard"),
    "purr": _split("cat kitten"),
    "hiss": _split("snake cat goose swan lizard"),
    "quack": _split("duck"),
    "moo": _split("cow calf bull"),
    "neigh": _split("horse pony"),
    "bleat": _split("sheep goat lamb"),
    "buzz": _split("bee"),
    "squeak": _split("mouse rat hamster bat"),
    "chirp": _split("bird sparrow hen chicken"),
    "sing": _split("bird sparrow parrot whale"),
    "gallop": _split("horse pony zebra"),
    "graze": _split("cow sheep goat horse deer zebra camel moose buffalo ox"),
    "hop": _split("rabbit frog kangaroo sparrow"),
    "fly": _split("bird owl eagle parrot crow pigeon swan duck goose hawk sparrow bee butterfly bat"),
    "swim": _split("fish whale dolphin shark turtle seal otter beaver duck swan penguin frog octopus"),
    "dive": _split("dolphin whale seal otter penguin duck eagle hawk"),
    "crawl": _split("snail worm spider ant beetle crab turtle lizard snake"),
    "climb": _split("monkey squirrel cat kitten spider gorilla koala goat raccoon"),
    "run": _split("""
        dog cat horse pony rabbit fox wolf deer cheetah leopard lion tiger ostrich mouse rat
        squirrel zebra giraffe elephant puppy kitten"""),
    "jump": _split("frog rabbit kangaroo cat kitten dog puppy monkey dolphin goat squirrel"),
    "walk": _split("""
        dog cat horse cow pig sheep goat duck chicken elephant camel donkey bear penguin mule ox"""),
    "play": _split("dog puppy cat kitten monkey dolphin otter"),
    "sit": _split("dog puppy cat kitten monkey owl parrot"),
    "scratch": _split("cat kitten dog hen chicken"),
    "splash": _split("duck dolphin whale otter seal"),
    "snore": _split("dog cat pig"),
    "stretch": _split("cat kitten dog puppy"),
    "sniff": _split("dog puppy rabbit mouse rat pig"),
}

# verbs that take a destination ("walked to the station")
MOTION_VERBS = _split("""
    go come walk run drive hurry travel return move fly ride rush sail cycle jog wander
    march swim crawl""")
# verbs that take a that-clause ("she said that ...")
REPORTING_VERBS = _split("""
    say think know hope believe hear remember feel explain guess notice dream learn
    promise forget""")
# verbs that take a to-infinitive ("they wanted to visit the museum")
INFINITIVE_VERBS = _split("want need hope plan try decide forget promise learn love like hate")
# verbs used with clock times ("the concert starts at eight", "the bank opens at nine")
EVENT_SCHEDULE_VERBS = _split("start begin end finish")
PLACE_SCHEDULE_VERBS = _split("open close")

IRREGULAR_VERBS: dict[str, tuple[str, str]] = {  # base -> (past, past participle)
    "see": ("saw", "seen"), "find": ("found", "found"), "lose": ("lost", "lost"),
    "hold": ("held", "held"), "buy": ("bought", "bought"), "sell": ("sold", "sold"),
    "bring": ("brought", "brought"), "take": ("took", "taken"), "throw": ("threw", "thrown"),
    "catch": ("caught", "caught"), "hit": ("hit", "hit"), "build": ("built", "built"),
    "break": ("broke", "broken"), "cut": ("cut", "cut"), "eat": ("ate", "eaten"),
    "feed": ("fed", "fed"), "meet": ("met", "met"), "teach": ("taught", "taught"),
    "know": ("knew", "known"), "forget": ("forgot", "forgotten"), "drive": ("drove", "driven"),
    "ride": ("rode", "ridden"), "fly": ("flew", "flown"), "draw": ("drew", "drawn"),
    "read": ("read", "read"), "write": ("wrote", "written"), "send": ("sent", "sent"),
    "choose": ("chose", "chosen"), "lend": ("lent", "lent"), "keep": ("kept", "kept"),
    "show": ("showed", "shown"), "hang": ("hung", "hung"), "steal": ("stole", "stolen"),
    "leave": ("left", "left"), "grow": ("grew", "grown"), "wake": ("woke", "woken"),
    "run": ("ran", "run"), "swim": ("swam", "swum"), "sing": ("sang", "sung"),
    "sit": ("sat", "sat"), "stand": ("stood", "stood"), "fall": ("fell", "fallen"),
    "hide": ("hid", "hidden"), "sleep": ("slept", "slept"), "drink": ("drank", "drunk"),
    "think": ("thought", "thought"), "speak": ("spoke", "spoken"), "win": ("won", "won"),
    "shake": ("shook", "shaken"), "kneel": ("knelt", "knelt"), "wear": ("wore", "worn"),
    "hear": ("heard", "heard"), "lead": ("led", "led"), "pay": ("paid", "paid"),
    "sweep": ("swept", "swept"), "sew": ("sewed", "sewn"), "forgive": ("forgave", "forgiven"),
    "understand": ("understood", "understood"), "beat": ("beat", "beaten"),
    "go": ("went", "gone"), "come": ("came", "come"), "say": ("said", "said"),
    "feel": ("felt", "felt"), "dream": ("dreamed", "dreamed"), "learn": ("learned", "learned"),
    "begin": ("began", "begun"), "panic": ("panicked", "panicked"), "cost": ("cost", "cost"),
}
IRREGULAR_GERUNDS = {"panic": "panicking"}
# one-syllable (or end-stressed) verbs that double their final consonant: stop -> stopped
DOUBLING_VERBS = frozenset(_split("""
    stop drop plan grab hug jog nod chat shop skip clap wrap rob pat tap trip step slip hop
    beg rub scrub ship stir admit prefer regret knit pet hum tip chop mop shrug grin swim run
    sit win begin hit cut forget drag"""))
DOUBLING_ADJECTIVES = frozenset(_split("big hot wet sad thin"))

# ---------------------------------------------------------------- function words

SUBJECT_PRONOUNS = _split("i you he she we they")
OBJECT_PRONOUNS = _split("me you him her us them")
POSSESSIVES = _split("my your his her our their")
SINGULAR_DETERMINERS = _split("the the the the the a a this that")  # repeats weight "the"
PLURAL_DETERMINERS = _split("the the the these those some many several")
PREPOSITIONS_OF_PLACE = _split("in at near behind beside outside inside around")
PREPOSITIONS_OF_FIXTURE = _split("near behind beside under")
PREPOSITIONS_OF_THING = _split("on under beside near behind")
CONJUNCTIONS = _split("and but so")
SUBORDINATORS = _split("when because after before while although since until")
MODALS = _split("can could should must might may would")
CURRENCIES = _split("dollars pounds euros")
# Literal words the sentence templates use besides the lists above.
TEMPLATE_WORDS = _split("""
    a an the to that who which than there it is are am was were be been being will going
    did does do have has not don't doesn't didn't isn't aren't wasn't weren't won't can't
    haven't hasn't please let's by from for of what where when why how many often ever
    never already just recently years old born if more most all home with""")

# ---------------------------------------------------------------- numbers and time

UNITS = _split("""
    one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen""")
TENS = _split("twenty thirty forty fifty sixty seventy eighty ninety")
ORDINALS = _split("""
    first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth
    thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth
    thirtieth""")
DAYS = _split("monday tuesday wednesday thursday friday saturday sunday")
MONTHS = _split("""
    january february march april may june july august september october november december""")
SEASONS = _split("spring summer autumn winter")
PARTS_OF_DAY = _split("morning afternoon evening")
TIME_UNITS = _split("minute hour day week month year")  # plural with -s
ROUTINES = _split("breakfast lunch dinner school work class")  # "after lunch"
TIME_WORDS = _split("""
    yesterday today tomorrow tonight now soon later ago last next this every night weekend
    noon midnight o'clock half past quarter right moment once twice hundred thousand""")


# ---------------------------------------------------------------- inflection

_VOWELS = "aeiou"


def plural(noun: str) -> str:
    """English plural of a singular noun (irregular table, then spelling rules)."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in _VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    """Present tense, third person singular: carry -> carries, watch -> watches."""
    if verb.endswith(("s", "x", "z", "ch", "sh")) or (verb.endswith("o") and verb[-2:] != "oo"):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return verb[:-1] + "ies"
    return verb + "s"


def past_tense(verb: str) -> str:
    """Simple past: irregular table, else -ed with the e/y/doubling spelling rules."""
    if verb in IRREGULAR_VERBS:
        return IRREGULAR_VERBS[verb][0]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return verb[:-1] + "ied"
    if verb in DOUBLING_VERBS:
        return verb + verb[-1] + "ed"
    return verb + "ed"


def past_participle(verb: str) -> str:
    if verb in IRREGULAR_VERBS:
        return IRREGULAR_VERBS[verb][1]
    return past_tense(verb)


def gerund(verb: str) -> str:
    """Present participle: lie -> lying, ride -> riding, stop -> stopping, see -> seeing."""
    if verb in IRREGULAR_GERUNDS:
        return IRREGULAR_GERUNDS[verb]
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "oe", "ye")):
        return verb[:-1] + "ing"
    if verb in DOUBLING_VERBS:
        return verb + verb[-1] + "ing"
    return verb + "ing"


def _graded(adjective: str, suffix: str) -> str:
    if adjective.endswith("e"):
        return adjective + suffix[1:]
    if adjective.endswith("y") and adjective[-2] not in _VOWELS:
        return adjective[:-1] + "i" + suffix
    if adjective in DOUBLING_ADJECTIVES:
        return adjective + adjective[-1] + suffix
    return adjective + suffix


def comparative(adjective: str) -> tuple[str, ...]:
    """Comparative as words: ("taller",) or ("more", "famous")."""
    if adjective in IRREGULAR_COMPARISON:
        return (IRREGULAR_COMPARISON[adjective][0],)
    if adjective in SUFFIX_GRADABLE:
        return (_graded(adjective, "er"),)
    return ("more", adjective)


def superlative(adjective: str) -> tuple[str, ...]:
    """Superlative as words (without "the"): ("tallest",) or ("most", "famous")."""
    if adjective in IRREGULAR_COMPARISON:
        return (IRREGULAR_COMPARISON[adjective][1],)
    if adjective in SUFFIX_GRADABLE:
        return (_graded(adjective, "est"),)
    return ("most", adjective)


@dataclass(frozen=True)
class Noun:
    singular: str
    plural: str
    kind: Kind


@dataclass(frozen=True)
class Verb:
    base: str
    third: str  # he carries
    past: str  # he carried
    participle: str  # it was carried
    gerund: str  # he is carrying


def make_noun(singular: str, kind: Kind) -> Noun:
    return Noun(singular, plural(singular), kind)


def make_verb(base: str) -> Verb:
    return Verb(base, third_person(base), past_tense(base), past_participle(base), gerund(base))
