"""trainers/data/amazon_items.py: the title/text cleaning and price parsing of the item metadata."""
from __future__ import annotations

from trainers.data.amazon_items import clean_text, parse_price, valid_title


def test_cleaning_helpers():
    assert clean_text("  <span>Racing</span>&amp;Co<br>Turbo \n 3 ") == "Racing &Co Turbo 3"
    # tags go, literal "<" and ">" stay (the old `<[^>]*>` turned "3 < 5 > 2" into "3 2")
    assert clean_text("3 < 5 > 2") == "3 < 5 > 2" and clean_text("Kids &lt;3 it") == "Kids <3 it"
    assert clean_text('<span id="t">Zelda</span> <br/>&lt;b&gt;BOTW&lt;/b&gt; <!-- x -->a>b') == "Zelda BOTW a>b"
    assert valid_title(None) is None and valid_title("<span></span>") is None
    assert valid_title(" ".join(["w"] * 21)) is None and valid_title(" ".join(["w"] * 20))
    assert parse_price(12) == 12.0 and parse_price("$1,299.00") == 1299.0
    assert parse_price("None") is None and parse_price("\u2014") is None and parse_price(None) is None
    assert parse_price(float("nan")) is None and parse_price(True) is None
