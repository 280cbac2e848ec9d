"""Write a small offline text-classification set, train.csv and val.csv (`text,label`), from a seed.

Short news-like sentences about eight topics, built from phrases (nothing is downloaded):

    clear     two to four phrases of the topic among neutral fillers
    weak      one phrase of the topic, or only phrases that two topics share ("at the market")
    contrast  the topic's phrases, then "because of" / "despite" / ... and as many phrases of another
              topic or more: the label is the main clause's, which word counts alone cannot tell

Words are swapped for synonyms and some get a typo; a few train labels are flipped. Weak sentences
that hold only shared phrases are a coin toss between two topics, so no model reaches 100 %, and a
deep model's soft labels on them are what a shallow student can learn from. Same --seed, same bytes.

    python examples/text/make_texts.py [OUT] [--train 4000] [--val 800] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIN_WORDS, MAX_WORDS = 5, 40

TOPICS = {
    "business": ["the quarterly earnings beat forecasts", "shares of the retailer fell", "investors sold bonds",
                 "the central bank raised interest rates", "a merger between two lenders",
                 "the stock index closed higher", "profits at the firm doubled", "the company cut its dividend",
                 "inflation eased slightly", "the startup raised fresh capital", "analysts expect weaker revenue",
                 "the currency slipped"],
    "food": ["the chef prepared a spicy stew", "a bakery sells sourdough bread", "the recipe needs fresh basil",
             "diners praised the dessert", "the restaurant opened a new kitchen", "slow roasted garlic and lamb",
             "a bowl of noodles with broth", "the menu features seasonal vegetables", "she baked a lemon tart",
             "the cafe serves strong espresso", "grilled fish with herbs", "the tasting menu sold out"],
    "health": ["doctors treated the patients", "the hospital expanded its clinic", "a vaccine trial began",
               "nurses reported fewer infections", "the new therapy reduced symptoms", "a study of heart disease",
               "patients waited for surgery", "the flu season started early", "a drug lowered blood pressure",
               "the clinic offers free checkups", "mental health services grew", "the surgeon operated overnight"],
    "politics": ["the senate passed the bill", "voters went to the polls", "the minister resigned",
                 "lawmakers debated the reform", "the president signed an order", "a coalition government formed",
                 "the opposition party protested", "the election campaign began", "parliament approved the treaty",
                 "the mayor vetoed the plan", "the governor announced a recount", "a referendum on the constitution"],
    "science": ["researchers observed a distant galaxy", "the telescope captured images",
                "a fossil of an early reptile", "physicists measured the particle",
                "the experiment confirmed the theory", "chemists found a new molecule",
                "the probe reached the comet", "a study of ancient climate", "biologists sequenced the genome",
                "the rover collected rock samples", "astronomers tracked the asteroid", "the lab cooled atoms"],
    "sports": ["the striker scored twice", "the team won the league", "the coach praised the defence",
               "a late goal decided the final", "the goalkeeper saved a penalty", "the champion defended the title",
               "fans cheered the victory", "the referee showed a red card", "the sprinter broke the record",
               "the club signed a midfielder", "the tennis star reached the semifinal", "the match went to overtime"],
    "technology": ["the software update fixed bugs", "engineers released a new smartphone", "the chip runs faster",
                   "hackers breached the servers", "the app gained million users", "a robot assembled the parts",
                   "the laptop battery lasts longer", "developers shipped the code", "the network outage ended",
                   "the cloud service crashed", "a new processor was unveiled", "the browser blocks trackers"],
    "travel": ["tourists crowded the beaches", "the airline added direct flights", "a hotel near the old harbour",
               "travellers queued at the airport", "the cruise ship docked", "hikers reached the mountain village",
               "the resort reopened for summer", "backpackers explored the islands", "the train crossed the border",
               "visitors toured the castle", "the guesthouse was fully booked", "passengers boarded the ferry"],
}

# Phrases two topics share: alone, a sentence of them is a coin toss between the two.
SHARED = [
    (("business", "food"), ["at the market", "prices of produce rose", "the supply of grain"]),
    (("health", "technology"), ["a new virus spread", "the screening tool", "the monitor showed data"]),
    (("politics", "sports"), ["the race is close", "the ruling in court", "the campaign for a win"]),
    (("science", "health"), ["the cells in the sample", "energy levels dropped", "the study was published"]),
    (("travel", "business"), ["the budget was tight", "booking fees went up", "the long trip for the deal"]),
    (("technology", "science"), ["the new model", "the data from the sensor", "the lab tested the device"]),
    (("food", "health"), ["a healthy diet", "sugar and salt intake", "the vitamin content"]),
    (("sports", "travel"), ["the long journey", "the away trip", "the tour of the country"]),
]

FILLERS = ["on sunday", "last week", "according to the report", "this year", "officials said", "for the second time",
           "in the city", "experts believe", "at long last", "as expected", "people say", "early on monday",
           "in a statement", "on the first day", "in the rain", "in recent months", "sources told reporters",
           "at the weekend", "once again", "by the end of the day", "many people noticed", "in the north"]
CONNECTORS = ["because of", "despite", "while", "even though", "after", "unlike"]
OPENERS = ["", "", "", "meanwhile", "today", "reportedly", "in other news", "breaking", "update"]

SYNONYMS = {"the": ["the", "the", "the", "this", "that"], "new": ["new", "fresh", "latest"],
            "fell": ["fell", "dropped", "slid"], "rose": ["rose", "climbed", "jumped"],
            "team": ["team", "side", "squad"], "doctors": ["doctors", "physicians"],
            "patients": ["patients", "people"], "voters": ["voters", "citizens"],
            "researchers": ["researchers", "scientists"], "firm": ["firm", "company"],
            "company": ["company", "firm", "group"], "won": ["won", "clinched", "took"],
            "scored": ["scored", "netted"], "tourists": ["tourists", "visitors", "holidaymakers"],
            "faster": ["faster", "quicker"], "study": ["study", "paper", "survey"],
            "hotel": ["hotel", "inn", "lodge"], "released": ["released", "launched"],
            "bill": ["bill", "law", "measure"], "chef": ["chef", "cook"], "bread": ["bread", "loaves"]}
TYPO_RATE, FLIP_RATE = 0.06, 0.04
TIERS = (("clear", 0.5), ("weak", 0.25), ("contrast", 0.25))


def typo(word: str, rng: random.Random) -> str:
    """One slip of the keyboard: two letters swapped, one dropped, or one doubled."""
    if len(word) < 4:
        return word
    at = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:at] + word[at + 1] + word[at] + word[at + 2:]
    if kind == 1:
        return word[:at] + word[at + 1:]
    return word[:at] + word[at] + word[at:]


def reword(phrase: str, rng: random.Random) -> list[str]:
    words = []
    for word in phrase.split():
        word = rng.choice(SYNONYMS[word]) if word in SYNONYMS else word
        words.append(typo(word, rng) if rng.random() < TYPO_RATE else word)
    return words


def shared_with(topic: str) -> list[tuple[str, list[str]]]:
    """(the other topic, the phrases) of every pair `topic` is in."""
    return [(pair[1] if pair[0] == topic else pair[0], phrases) for pair, phrases in SHARED if topic in pair]


def main_clause(topic: str, tier: str, rng: random.Random) -> tuple[list[str], int]:
    """The words of the sentence's own topic among fillers, and how many of its phrases they hold."""
    if tier == "weak":
        own = [rng.choice(TOPICS[topic])] if rng.random() < 0.5 else []
        chosen = own + [rng.choice(rng.choice(shared_with(topic))[1])]
    else:
        own = rng.sample(TOPICS[topic], rng.randint(1, 2) if tier == "contrast" else rng.randint(2, 4))
        chosen = own + ([rng.choice(rng.choice(shared_with(topic))[1])] if rng.random() < 0.3 else [])
    chosen += rng.sample(FILLERS, rng.randint(0, 3))
    rng.shuffle(chosen)
    return [word for phrase in chosen for word in reword(phrase, rng)], len(own)


def sentence(topic: str, rng: random.Random) -> str:
    tier = rng.choices([name for name, _ in TIERS], [weight for _, weight in TIERS])[0]
    words, own = main_clause(topic, tier, rng)
    words = rng.choice(OPENERS).split() + words
    if tier == "contrast":  # as many phrases of another topic, or one more, after the connector
        other = rng.choice([name for name in TOPICS if name != topic])
        words += rng.choice(CONNECTORS).split()
        for phrase in rng.sample(TOPICS[other], rng.randint(own, own + 1)):
            words += reword(phrase, rng)
    while len(words) < MIN_WORDS:
        words += reword(rng.choice(FILLERS), rng)
    text = " ".join(words[:MAX_WORDS])
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "", "!"])


def rows(count: int, flip_rate: float, rng: random.Random) -> list[tuple[str, str]]:
    """`count` (text, label) rows, the classes as even as `count` allows, in a shuffled order."""
    names = sorted(TOPICS)
    labels = [names[i % len(names)] for i in range(count)]
    rng.shuffle(labels)
    made = []
    for label in labels:
        text = sentence(label, rng)
        if rng.random() < flip_rate:
            label = rng.choice([name for name in names if name != label])
        made.append((text, label))
    return made


def csv_bytes(table: list[tuple[str, str]]) -> bytes:
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(table)
    return stream.getvalue().encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE / "data", help="default: data/ beside this script")
    parser.add_argument("--train", type=int, default=4000, help="train rows (default 4000)")
    parser.add_argument("--val", type=int, default=800, help="val rows (default 800; their labels are not flipped)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 1 or args.val < 1:
        parser.error("--train and --val must be at least 1")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.csv").write_bytes(csv_bytes(rows(args.train, FLIP_RATE, rng)))
    (args.out / "val.csv").write_bytes(csv_bytes(rows(args.val, 0.0, rng)))
    print(f"wrote {args.train} train and {args.val} val texts over {len(TOPICS)} topics to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
