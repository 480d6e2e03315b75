"""One-off writer of the hand-made real-format sample (tests/data/preprocess/real_format/raw)."""
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(2023)
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def uid():
    return "A" + "".join(rng.choice(ALNUM) for _ in range(27))


def asin():
    return "B0" + "".join(rng.choice(ALNUM) for _ in range(8))


titles = [
    "Mario Kart 8 Deluxe - Nintendo Switch",
    "The Legend of Zelda: Breath of the Wild",
    "Pok\u00e9mon Scarlet\u2122 - Nintendo Switch",
    "PlayStation 5 DualSense Wireless Controller &amp; Charging Station",
    "Razer BlackShark V2 X Gaming Headset: 7.1 Surround Sound &quot;Pro&quot;",
    "Logitech G502 HERO High Performance Wired Gaming Mouse",
    "Minecraft - Xbox One",
    "Animal Crossing: New Horizons",
    "Elden Ring - PlayStation 5",
    "Super Smash Bros. Ultimate",
    "Red Dead Redemption 2 (PS4)",
    "Nintendo Switch Pro Controller",
    "<span id=\"productTitle\">SanDisk 256GB microSDXC Card for Nintendo Switch</span>",
    "Math Blaster: 3 < 5 > 2 Edition (PC)",
    "Kids Love It &lt;3 Puzzle Pack",
    "Xbox Wireless Headset &amp;amp; Stand",
    "God of War Ragnar\u00f6k Launch Edition",
    "Hogwarts Legacy\u00a0- PC",
    "Turtle Beach Stealth 600 Gen 2",
    "Final Fantasy VII Remake Intergrade",
    "Stardew Valley <br> Collector's Edition",
    "Hades",
    "Cyberpunk 2077: Ultimate Edition",
    "HORI Split Pad Compact (Gengar)",
    "Sonic Frontiers",
    "Persona 5 Royal",
    "Monster Hunter Rise + Sunbreak",
    "Splatoon 3",
    "Kirby and the Forgotten Land",
    "Steam Deck Carrying Case \u2013 Hard Shell",
    "Gran Turismo 7",
    "Diablo IV",
    "Metroid Dread",
    "Fire Emblem: Three Houses",
    "Resident Evil 4",
    "Street Fighter 6",
    "Tears of the Kingdom Official Guide",
    "Ghost of Tsushima Director's Cut",
    "Astro's Playroom Figure",
    "Retro Arcade Stick",
]
bad_meta = [  # dropped by the item filter, each for one reason
    {"title": None, "price": 9.99},
    {"title": "", "price": 19.99},
    {"title": "Brand New Factory Sealed Complete In Box With Manual And Bonus Downloadable Content Code "
              "For Extra Levels Characters And Costumes Limited Time", "price": 5.0},
    {"title": "Controller Grip Caps", "price": None},
    {"title": "Carrying Case", "price": "None"},
    {"title": "Charging Dock", "price": "\u2014"},
    {"title": "Thumb Grips Set", "price": "from 12.99"},
]
prices = [59.99, 49.99, "59.99", 69.0, 99.99, 39.99, 19.99, "$1,299.00", 69.99, 59.0]
rated = [asin() for _ in range(len(titles) + len(bad_meta))]
unrated = [asin() for _ in range(6)]


def meta_row(a, title, price, k):
    desc = []
    if k % 3 == 0:
        desc = ["Product Description", f"<p>Experience <b>{k}</b> hours of fun &amp; adventure.</p><br>"]
    elif k % 3 == 1:
        desc = [f"From the manufacturer: bundle #{k}"]
    feats = [] if k % 4 == 0 else [f"Feature {j} &ndash; works great" for j in range(k % 4)]
    details = {"Release date": f"March {k % 28 + 1}, 20{10 + k % 13}",
               "Best Sellers Rank": {"Video Games": 1000 + 37 * k, "PC Games": 12 * k},
               "Is Discontinued By Manufacturer": "No" if k % 2 else "Yes"}
    if k % 5 == 0:
        details = {}
    images = [{"thumb": f"https://m.media-amazon.com/images/I/{a}._SS40_.jpg",
               "large": f"https://m.media-amazon.com/images/I/{a}.jpg", "variant": "MAIN",
               "hi_res": None if k % 2 else f"https://m.media-amazon.com/images/I/{a}._SL1500_.jpg"}]
    row = {
        "main_category": None if k % 11 == 0 else ("Video Games" if k % 7 else "All Electronics"),
        "title": title,
        "average_rating": None if k % 13 == 0 else round(3 + (k % 20) / 10, 1),
        "rating_number": None if k % 13 == 0 else 10 * k + 3,
        "features": feats,
        "description": desc,
        "price": price,
        "images": images if k % 6 else [],
        "videos": [] if k % 4 else [{"title": "Trailer", "url": f"https://www.amazon.com/vdp/{k:08x}",
                                     "user_id": ""}],
        "store": None if k % 9 == 0 else ["Nintendo", "Sony", "Razer", "Logitech &amp; Co"][k % 4],
        "categories": [] if k % 8 == 0 else ["Video Games", ["PC", "Nintendo Switch", "PlayStation 5"][k % 3],
                                             "Accessories"],
        "details": details,
        "parent_asin": a,
        "bought_together": None,
    }
    if k % 10 == 3:  # some categories carry these
        row["subtitle"] = None
        row["author"] = None
    return row


metas = []
for k, (a, t) in enumerate(zip(rated, titles)):
    metas.append(meta_row(a, t, prices[k % len(prices)], k))
for j, (a, b) in enumerate(zip(rated[len(titles):], bad_meta)):
    metas.append(meta_row(a, b["title"], b["price"], 100 + j))
for j, a in enumerate(unrated):
    metas.append(meta_row(a, f"Unrated Accessory {j}", 4.99 + j, 200 + j))
rng.shuffle(metas)

# Ratings: 5-core-like users (5-12 ratings), Zipf-ish item choice, ms timestamps 2016..2023.
t0 = int(datetime(2016, 6, 1, tzinfo=timezone.utc).timestamp() * 1000)
t1 = int(datetime(2023, 9, 1, tzinfo=timezone.utc).timestamp() * 1000)
weights = [1 / (r + 1) ** 0.6 for r in range(len(rated))]
rows = []
users = [uid() for _ in range(55)]
for n, u in enumerate(users):
    k = rng.randint(5, 12)
    ts = sorted(rng.randint(t0, t1) for _ in range(k))
    items = []
    while len(items) < k:
        a = rng.choices(rated, weights)[0]
        if a not in items:
            items.append(a)
    for a, t in zip(items, ts):
        rows.append([u, a, float(rng.choices([5, 4, 3, 2, 1], [50, 25, 10, 7, 8])[0]), t])
    if n % 6 == 0:  # a re-purchase: the same item again, later
        rows.append([u, items[0], 5.0, ts[-1] + 86_400_000 * (n + 1)])
    if n % 9 == 1:  # two items in the same millisecond (tie broken by parent_asin)
        rows.append([u, [a for a in rated if a not in items][0], 4.0, ts[2]])
# same timestamp across users (tie broken by user_id)
rows.append([users[3], rated[5], 3.0, rows[0][3]])
rows.append([users[4], rated[6], 2.0, rows[0][3]])
for i in (5, 50, 120, 200):  # exact duplicate lines, as in the real files
    rows.append(list(rows[i]))
rng.shuffle(rows)

with open(out / "Video_Games.csv", "w", encoding="utf-8") as f:
    f.write("user_id,parent_asin,rating,timestamp\n")
    for u, a, r, t in rows:
        f.write(f"{u},{a},{r},{t}\n")
with open(out / "meta_Video_Games.jsonl", "w", encoding="utf-8") as f:
    for m in metas:
        f.write(json.dumps(m, ensure_ascii=False) + "\n")
print(len(rows), "ratings", len(metas), "meta rows")
