"""Generate a corpus of seed-shaped article files for benchmarks (deterministic by seed).

Records look like ``seeds/*.txt``: YAML front matter with double-quoted strings, 2-4 KB,
1-3 topics out of 40, 0-3 related items, ~80% published, quality 0-250, a ``secured`` blob.
Variety: some mojibake, HTML entities, non-ASCII titles, relative image URLs, duplicate
URLs, and ~1% bad files of several kinds.

    python benchmarks/generate.py --count 100000 --seed 1 --out /tmp/corpus-100k
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

TOPICS = [
    "AI", "Computer Vision", "Robotics", "Natural Language Processing", "Machine Learning",
    "Deep Learning", "Autonomous Vehicles", "AI Ethics & Policy", "Healthcare AI", "Chips",
    "Cloud", "Cybersecurity", "Privacy", "Startups", "Funding", "Big Tech", "Regulation",
    "Quantum Computing", "Drones", "Space", "Climate Tech", "Energy", "Fintech", "Crypto",
    "Gaming", "AR/VR", "Smartphones", "Open Source", "Developer Tools", "Data Science",
    "Education", "Jobs & Automation", "Research", "Biotech", "Surveillance", "Social Media",
    "Künstliche Intelligenz", "Intelligence artificielle", "人工知能", "E-commerce",
]
PROVIDERS = [
    ("The Guardian", "theguardian.com"), ("TechCrunch", "techcrunch.com"),
    ("Japan Today", "japantoday.com"), ("TechSpot", "techspot.com"),
    ("Common Dreams", "commondreams.org"), ("Wired", "wired.com"), ("The Verge", "theverge.com"),
    ("Reuters", "reuters.com"), ("Heise Online", "heise.de"), ("Le Monde", "lemonde.fr"),
    ("Ars Technica", "arstechnica.com"), ("VentureBeat", "venturebeat.com"),
    ("ZDNet", "zdnet.com"), ("Nikkei Asia", "asia.nikkei.com"), ("BBC News", "bbc.co.uk"),
]
_WORD_TEXT = (
    "european parliament insists facial recognition technology ban biometric surveillance "
    "model training data startup raises funding round robots warehouse chip shortage "
    "cloud security breach privacy regulators investigate algorithm bias researchers "
    "release open source language model autonomous vehicle test city drone delivery "
    "quantum computer breakthrough climate energy battery smartphone launch platform "
    "users policy lawmakers vote statement leaked memo outcry deployment hospital "
    "diagnosis accuracy benchmark"
)
WORDS = _WORD_TEXT.split()
NON_ASCII_TITLES = [
    "Künstliche Intelligenz: Bundestag berät über Gesichtserkennung",
    "L'intelligence artificielle au cœur du débat européen",
    "人工知能の規制をめぐる議論が活発に",
    "¿Puede la IA reemplazar a los médicos? Un estudio lo analiza",
    "Robots “that learn” — a new era 🚀",
    "Ασφάλεια δεδομένων και τεχνητή νοημοσύνη",
]
IMAGE_HOSTS = ["i.guim.co.uk/img/media", "cdn.example-news.com/images", "static.site.io"]
START = datetime(2019, 1, 1, tzinfo=UTC)
SPAN_SECONDS = int((datetime(2024, 12, 31, tzinfo=UTC) - START).total_seconds())
BAD_SHARE = 0.01
MIN_BYTES, MAX_BYTES = 2048, 4096
DUPLICATE_SHARE = 0.01


def q(text: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


def sentence(rng: random.Random, low: int, high: int) -> str:
    """Random words, capitalised."""
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize()


def mojibake(text: str) -> str:
    """UTF-8 read as Windows-1252, like the seeds' ``â€”``."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


def title_for(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.06:
        return rng.choice(NON_ASCII_TITLES)
    if roll < 0.09:
        return mojibake(sentence(rng, 6, 12) + " — “quoted”")
    if roll < 0.11:
        return sentence(rng, 5, 10) + " &amp; more"
    return sentence(rng, 6, 14)


def excerpt_for(rng: random.Random, low: int, high: int) -> str:
    text = ". ".join(sentence(rng, 8, 20) for _ in range(rng.randint(low, high))) + "."
    roll = rng.random()
    if roll < 0.04:
        return mojibake(text + " — it’s “big”")
    if roll < 0.07:
        return text + ' She said: "fundamental rights" &amp; more.'
    return text


def slug(text: str) -> str:
    words = ["".join(c for c in word if c.isascii() and c.isalnum()) for word in text.split()]
    return "-".join(word for word in words[:10] if word).lower() or "story"


def timestamp(rng: random.Random) -> datetime:
    return START + timedelta(seconds=rng.randrange(SPAN_SECONDS))


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:00Z")


def article_url(rng: random.Random, domain: str, moment: datetime, title: str) -> str:
    return f"https://www.{domain}/{moment:%Y/%m/%d}/{slug(title)}-{rng.randrange(10**6)}"


def image_lines(rng: random.Random, indent: str, title: str | None) -> list[str]:
    roll = rng.random()
    if roll < 0.1:
        url = f"/media/{rng.randrange(10**8):08x}.jpg"  # relative: resolved against webUrl
    else:
        host = rng.choice(IMAGE_HOSTS)
        url = (f"https://{host}/{rng.randrange(16**16):016x}/master/{rng.randint(600, 3500)}."
               f"{rng.choice(['jpg', 'jpg', 'png', 'webp'])}?width=300&quality=45&auto=format")
    lines = [f"{indent}- url: {q(url)}",
             f"{indent}  width: {rng.choice([600, 800, 1024, 1200, 2896])}",
             f"{indent}  height: {rng.choice([360, 450, 630, 682, 1947])}"]
    if title is not None:
        lines.append(f"{indent}  title: {q(title)}")
    if rng.random() < 0.5:
        lines.append(f"{indent}  isCached: true")
    return lines


def provider_lines(rng: random.Random, indent: str) -> tuple[list[str], str]:
    name, domain = rng.choice(PROVIDERS)
    lines = [f"{indent}provider:", f"{indent}  name: {name}", f"{indent}  domain: {domain}"]
    if rng.random() < 0.3:
        lines += [f"{indent}  images:",
                  f'{indent}    - url: "/assets/images/organizations/{domain}-50x50.jpg"',
                  f"{indent}      width: 50", f"{indent}      height: 50"]
    return lines, domain


def related_lines(rng: random.Random) -> list[str]:
    count = rng.choices([0, 1, 2, 3], weights=[2, 3, 3, 2])[0]
    if count == 0:
        return []
    lines = ["related:"]
    for _ in range(count):
        title = title_for(rng)
        moment = timestamp(rng)
        plines, domain = provider_lines(rng, "    ")
        url = article_url(rng, domain, moment, title)
        lines += [f"  - title: {q(title)}",
                  f"    excerpt: {q(excerpt_for(rng, 1, 2))}",
                  f"    publishedDateTime: {iso(moment)}",
                  f"    webUrl: {q(url)}"]
        if rng.random() < 0.5:
            lines.append(f"    ampWebUrl: {q(url + '/amp')}")
        lines += ["    type: article", *plines, f"    quality: {rng.randint(0, 120)}"]
        if rng.random() < 0.7:
            lines += ["    images:", *image_lines(rng, "      ", None)]
    return [*lines, ""]


def secured_blob(rng: random.Random, size: int) -> str:
    """An opaque base64 blob of about ``size`` characters, like the seeds' ``secured``."""
    body = base64.b64encode(rng.randbytes(max(size, 160) * 3 // 4)).decode()
    return f"{body};{base64.b64encode(rng.randbytes(16)).decode()}"


def record_text(rng: random.Random, url_override: str | None = None) -> str:
    """One valid article file, seed-shaped."""
    title = title_for(rng)
    moment = timestamp(rng)
    plines, domain = provider_lines(rng, "")
    url = url_override or article_url(rng, domain, moment, title)
    amp = url.replace("https://www.", "https://amp.")
    quality = min(250, int(rng.triangular(0, 250, 60)))
    topics = rng.sample(TOPICS[:12], 1) + rng.sample(TOPICS, rng.randint(0, 2))
    lines = ["---", "category: news", f"title: {q(title)}",
             f"excerpt: {q(excerpt_for(rng, 2, 3))}", f"publishedDateTime: {iso(moment)}"]
    if rng.random() < 0.4:
        lines.append(f"originalUrl: {q(url)}")
    lines += [f"webUrl: {q(url)}", f"ampWebUrl: {q(amp)}",
              f"cdnAmpWebUrl: {q('https://amp-cdn.ampproject.org/c/s/' + amp[8:])}",
              "type: article", f"quality: {quality}", f"heat: {quality + rng.randint(0, 40)}",
              f"published: {'true' if rng.random() < 0.8 else 'false'}", "", *plines, "",
              "topics:", *(f"  - {q(t)}" for t in dict.fromkeys(topics)), "",
              "images:", *image_lines(rng, "  ", title if rng.random() < 0.5 else None), "",
              *related_lines(rng)]
    head = "\n".join(lines)
    target = rng.randint(MIN_BYTES, MAX_BYTES)  # the blob pads each file to 2-4 KB
    blob = secured_blob(rng, target - len(head.encode()) - 40)
    return f'{head}\nsecured: {q(blob)}\n---\n'



# --- bad files: one kind each, ~1% of the corpus -----------------------------------------------

def _missing_title(rng: random.Random) -> bytes:
    return record_text(rng).replace("\ntitle:", "\nheadline:", 1).encode()


def _malformed_yaml(rng: random.Random) -> bytes:
    return record_text(rng).replace("\ntopics:\n", "\ntopics: [unclosed\n", 1).encode()


def _no_front_matter(rng: random.Random) -> bytes:
    return record_text(rng).removeprefix("---\n").encode()


def _not_closed(rng: random.Random) -> bytes:
    return record_text(rng).rstrip("\n").removesuffix("---").encode()


def _not_utf8(rng: random.Random) -> bytes:
    return record_text(rng).replace("category: news", "category: n\xe9ws").encode("latin-1",
                                                                                  "replace")


def _bad_url(rng: random.Random) -> bytes:
    return record_text(rng).replace('webUrl: "https://', 'webUrl: "ftp://', 1).encode()


def _bad_date(rng: random.Random) -> bytes:
    text = record_text(rng)
    start = text.index("publishedDateTime:")
    end = text.index("\n", start)
    return (text[:start] + "publishedDateTime: last tuesday" + text[end:]).encode()


def _bad_quality(rng: random.Random) -> bytes:
    text = record_text(rng)
    start = text.index("\nquality:")
    end = text.index("\n", start + 1)
    return (text[:start] + '\nquality: "very high"' + text[end:]).encode()


def _list_front_matter(rng: random.Random) -> bytes:
    return b"---\n- just\n- a list\n---\n"


def _empty(rng: random.Random) -> bytes:
    return b""


BAD_KINDS: list[Callable[[random.Random], bytes]] = [
    _missing_title, _malformed_yaml, _no_front_matter, _not_closed, _not_utf8, _bad_url,
    _bad_date, _bad_quality, _list_front_matter, _empty,
]


def file_bytes(rng: random.Random, urls: list[str]) -> bytes:
    """One file: mostly valid, ~1% a duplicate URL, ~1% bad."""
    roll = rng.random()
    if roll < BAD_SHARE:
        return rng.choice(BAD_KINDS)(rng)
    if roll < BAD_SHARE + DUPLICATE_SHARE and urls:
        return record_text(rng, url_override=rng.choice(urls)).encode()
    text = record_text(rng)
    start = text.index('webUrl: "') + len('webUrl: "')
    urls.append(text[start : text.index('"', start)])
    return text.encode()


def generate(count: int, seed: int, out: Path) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    urls: list[str] = []
    for index in range(count):
        data = file_bytes(rng, urls)
        (out / f"{index:06d}_{rng.randrange(16**16):016x}.txt").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} is not empty; refusing to mix corpora", file=sys.stderr)
        return 1
    generate(args.count, args.seed, args.out)
    print(f"wrote {args.count} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
