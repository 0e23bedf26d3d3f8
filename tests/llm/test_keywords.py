"""Catalog keywords: phrases that name a kind of item, read from the real MovieLens titles, the
synthetic shop's titles and descriptions, and hand-made catalogs that isolate each rule."""

from pathlib import Path

import pytest

from grec_dagster.data.movielens import load_movielens_100k
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.llm.keywords import CatalogItem, Keywords, catalog_keywords, contains_phrase, normalize
from grec_dagster.llm.vocabulary import catalog_items


def test_normalize_drops_case_punctuation_and_the_release_year() -> None:
    assert normalize("Star Trek: First Contact (1996)") == "star trek first contact"
    assert normalize("  Children's   Sci-Fi ") == "children's sci-fi"
    assert contains_phrase("Star Trek: First Contact (1996)", "first CONTACT")
    assert not contains_phrase("Star Trekking (1996)", "Star Trek")  # whole words only


def test_movielens_titles_give_franchises_not_filler_words(movielens_folder: Path) -> None:
    keywords = set(catalog_keywords(catalog_items(load_movielens_100k(movielens_folder).items)).vocabulary)
    assert {"Star Trek", "Batman", "Die Hard", "Free Willy", "Jaws", "Dracula", "Frankenstein"} <= keywords
    assert not keywords & {"The", "All", "Man", "Love", "Trek", "Once", "You"}  # filler, or a fragment of "Star Trek"


@pytest.fixture(scope="module")
def shop_keywords() -> set[str]:
    items = generate_synthetic(SyntheticConfig(n_interactions=100_000)).items
    return set(catalog_keywords(catalog_items(items)).vocabulary)


def test_the_synthetic_shop_gives_product_nouns_and_selling_points(shop_keywords: set[str]) -> None:
    assert {
        "running shoe",
        "trail shoe",
        "trail mix",
        "breathable mesh",
        "noise cancelling",
        "cast iron",
    } <= shop_keywords


def test_model_names_brands_and_categories_are_not_keywords(shop_keywords: set[str]) -> None:
    model_names = {"Aero", "Classic", "Pro", "Lite", "Max", "One", "Prime", "Flex", "Nova", "Core", "Edge", "Terra"}
    assert not {keyword for keyword in shop_keywords if set(keyword.split()) & model_names}
    assert not shop_keywords & {"Nordic Trail", "Nordic", "Running Shoes", "Headphones", "range"}


def item(title: str, category: str, description: str | None = None, brand: str | None = None) -> CatalogItem:
    return CatalogItem(title, description, tuple(category.split("|")), brand)


def test_a_phrase_must_recur_and_concentrate_in_one_category() -> None:
    items = [
        item("Moon Walker (1990)", "Sci-Fi"),
        item("Moon Walker II (1992)", "Sci-Fi"),
        item("Moon Walker III (1994)", "Sci-Fi|Action"),
        item("Walker (1990)", "Drama"),
        item("Sunset (1990)", "Drama"),
        item("Sunset Again (1991)", "Comedy"),
        item("Sunset Three (1992)", "Western"),
        *(item(title, genre) for title, genre in [("Rain", "Drama"), ("Laughs", "Comedy"), ("Horses", "Western")]),
        *(item(title, genre) for title, genre in [("Quiet Days", "Drama"), ("Storm", "Action")]),
    ]
    found = set(catalog_keywords(items).vocabulary)
    assert "Moon Walker" in found  # three items, all Sci-Fi
    assert "Moon" not in found  # always inside "Moon Walker": a fragment
    assert "Walker" in found  # four items, three of them Sci-Fi (3 of 12 in the catalog): its own keyword
    assert "Sunset" not in found  # three items in three categories


def test_keywords_found_in_a_text_are_whole_word_phrases_in_text_order() -> None:
    keywords = Keywords(["trail shoe", "breathable mesh", "Star Trek"])
    assert keywords.found_in("Breathable mesh: our best trail shoe. Trail shoes too.") == [
        "breathable mesh",
        "trail shoe",
    ]
    assert keywords.found_in("Star Trekking") == []
