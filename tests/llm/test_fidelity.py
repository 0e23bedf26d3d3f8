"""Profile fidelity on hand-made profiles: every metric is a count we can do by hand, compared exactly."""

import pytest

from grec_dagster.llm.fidelity import (
    FidelityJudge,
    FidelityThresholds,
    Share,
    UserFacts,
    fidelity_warnings,
    most_frequent_categories,
    profile_fidelity,
    states_a_fact,
)
from grec_dagster.llm.profile_schema import UserProfile
from grec_dagster.llm.prompting import load_prompt
from tests.llm.catalogs import catalog_of, history

SCIFI = history(
    "scifi",
    [
        ("Star Wars (1977)", "Action|Sci-Fi", None),
        ("Star Trek: First Contact (1996)", "Action|Sci-Fi", None),
        ("Alien (1979)", "Horror|Sci-Fi", None),
        ("Fargo (1996)", "Crime|Drama", None),
    ],
    [("age", "24"), ("gender", "M"), ("occupation", "student")],
)
HORROR = history(
    "horror",
    [
        ("Shining, The (1980)", "Horror", None),
        ("Scream (1996)", "Horror|Thriller", None),
        ("Psycho (1960)", "Horror|Thriller", None),
    ],
    [("age", "41"), ("gender", "F"), ("occupation", "librarian")],
)
CATALOG = catalog_of([SCIFI, HORROR])
INSTRUCTIONS = load_prompt().instructions()

# What SmolLM2 wrote under the free-text prompts (issue 18), and what the fidelity module must call them.
DEBRIS = ['"]} # This is a JSON with the', ". The customer's history follows"]
ECHO_SUMMARY = "This is just one sentence about this customer. It does not contain any instructions."
TASK_ECHO_SEGMENT = "the most popular genre among all genres."


@pytest.fixture
def judge() -> FidelityJudge:
    return FidelityJudge(CATALOG, INSTRUCTIONS)


@pytest.mark.parametrize("value", [*DEBRIS, ECHO_SUMMARY, "likes <b>bold</b> films", "fans of &amp; more"])
def test_the_debris_of_issue_18_is_debris(judge: FidelityJudge, value: str) -> None:
    assert judge.debris(value, UserFacts(SCIFI, CATALOG))


@pytest.mark.parametrize(
    "value",
    [
        "Star Wars (1977)",  # a title, verbatim
        "Star Trek",  # whole words of one of the user's titles
        "space adventure films",  # ungrounded, but nothing of markup, task words or the prompt
        TASK_ECHO_SEGMENT,  # an echo of the task, not of the prompt's words: the segment metric catches it
        "Age 24, gender M, occupation student; mostly Sci-Fi and Action; likes Star Wars (1977).",
    ],
)
def test_plain_or_copied_text_is_not_debris(judge: FidelityJudge, value: str) -> None:
    assert not judge.debris(value, UserFacts(SCIFI, CATALOG))


def test_catalog_text_is_data_whatever_characters_it_holds() -> None:
    odd = history("odd", [('Kids in the "Hall" #1 <Live> (1996)', "Comedy", None)])
    catalog = catalog_of([odd])
    judge = FidelityJudge(catalog, INSTRUCTIONS)
    facts = UserFacts(odd, catalog)
    assert not judge.debris('Kids in the "Hall" #1 <Live> (1996)', facts)
    assert not judge.debris('Mostly Comedy; likes Kids in the "Hall" #1 <Live> (1996).', facts)
    assert judge.debris('Mostly Comedy; likes Kids in the "Hall" #1 <Live> (1996) {"x"}.', facts)


def test_a_prompt_echo_is_three_prompt_words_in_a_row_not_all_stopwords(judge: FidelityJudge) -> None:
    facts = UserFacts(SCIFI, CATALOG)
    assert judge.debris("someone who says most about the customer's taste", facts)  # prompt words in a row
    assert not judge.debris("taste about most", facts)  # the same words, not in the prompt's order
    assert not judge.debris("the most about the films", facts)  # "most about the" is in the prompt: stopwords only


def test_grounded_means_a_catalog_term_or_words_of_the_users_own_items(judge: FidelityJudge) -> None:
    scifi, horror = UserFacts(SCIFI, CATALOG), UserFacts(HORROR, CATALOG)
    assert judge.grounded("Sci-Fi", horror)  # a catalog category, whoever names it
    assert judge.grounded("psycho", scifi)  # a catalog title ("Psycho (1960)"), in normalized form
    assert judge.grounded("First Contact", scifi)  # words of the user's own title
    assert not judge.grounded("First Contact", horror)  # ... not of this user's
    assert not judge.grounded("animated films", scifi)


def test_top_categories_include_every_tie_at_the_last_place() -> None:
    # Sci-Fi 3, Action 2, then Horror, Crime, Drama 1 each
    assert most_frequent_categories(SCIFI) == {"Sci-Fi", "Action", "Horror", "Crime", "Drama"}
    assert most_frequent_categories(HORROR) == {"Horror", "Thriller"}


def test_a_summary_states_a_fact_by_title_category_brand_or_attribute() -> None:
    facts = UserFacts(SCIFI, CATALOG)
    assert states_a_fact("Watches Fargo again and again", facts)
    assert states_a_fact("A sci-fi fan.", facts)
    assert states_a_fact("A student.", facts)
    assert states_a_fact("age 24 and curious", facts)
    assert not states_a_fact("Turned 24 this year.", facts)  # a bare number is no fact
    assert not states_a_fact("gender F", facts)  # not this user's
    assert not states_a_fact(ECHO_SUMMARY, facts)


def test_report_counts_every_facet_exactly() -> None:
    nearest = {h.user_id: CATALOG.segments.options([h], count=1)[0][0] for h in (SCIFI, HORROR)}
    profiles = {
        "scifi": UserProfile(
            categories=["Sci-Fi", "Action", "Romance"],
            brands=[],
            crowd_segment=TASK_ECHO_SEGMENT,
            interests=["Star Wars (1977)", "space adventure films", "Star Trek"],
            summary=ECHO_SUMMARY,
        ),
        "horror": UserProfile(
            categories=["Horror"],
            brands=[],
            crowd_segment=nearest["horror"],
            interests=[DEBRIS[0], DEBRIS[1], "Scream (1996)", "Psycho"],
            summary="Loves Horror films.",
        ),
    }
    report = profile_fidelity(profiles, [SCIFI, HORROR], CATALOG, INSTRUCTIONS, max_events=10)
    assert report.profiles == 2
    assert report.interests_grounded == Share(4, 7)  # Star Wars, Star Trek, Scream, Psycho
    assert report.debris["interests"] == Share(2, 7)
    assert report.debris["categories"] == Share(0, 4)
    assert report.debris["crowd_segment"] == Share(0, 2)
    assert report.debris["summary"] == Share(1, 2)
    assert report.any_debris == Share(3, 15)
    assert report.brands_grounded == Share(0, 0) and report.brands_grounded.value is None
    assert report.category_precision == Share(3, 4)  # Romance is not among the scifi user's categories
    assert report.category_recall == Share(3, 5)  # 2 of scifi's 3 wanted, 1 of horror's 2
    assert report.segments_in_vocabulary == Share(1, 2)
    assert report.segments_true_of_user == Share(1, 2)  # two users share no attribute value: names state none
    assert report.segments_nearest == Share(1, 2)
    assert report.distinct_segments == 2
    assert report.summaries_with_fact == Share(1, 2)
    assert {sample["user_id"] for sample in report.samples} == {"scifi", "horror"}  # fewer users than samples
    metrics = report.metrics()
    assert metrics["interests_grounded"] == round(4 / 7, 4) and metrics["brands_grounded"] is None

    warnings = fidelity_warnings(report)
    assert [warning.split(":")[0] for warning in warnings] == [
        "interests grounded",
        "values with debris",
        "segments from the vocabulary",
        "category precision",
        "summaries with a true fact",
    ]
    assert fidelity_warnings(report, FidelityThresholds(0.5, 0.25, 0.5, 0.75, 0.5)) == []


def test_five_seeded_samples_name_their_users_facts() -> None:
    users = [history(f"u{i}", [(f"Film {i} (1990)", "Drama", None)], [("age", str(20 + i))]) for i in range(8)]
    catalog = catalog_of(users)
    profiles = {
        user.user_id: UserProfile(
            categories=["Drama"], brands=[], crowd_segment=catalog.segments.vocabulary[0], interests=[], summary="x"
        )
        for user in users
    }
    first = profile_fidelity(profiles, users, catalog, INSTRUCTIONS, max_events=10, seed=3).samples
    again = profile_fidelity(profiles, users, catalog, INSTRUCTIONS, max_events=10, seed=3).samples
    assert first == again and len(first) == 5 and len({sample["user_id"] for sample in first}) == 5
    for sample in first:
        index = int(sample["user_id"][1:])
        assert sample["recent_titles"] == [f"Film {index} (1990)"] and sample["attributes"] == {"age": str(20 + index)}
        assert sample["top_categories"] == ["Drama"] and sample["categories"] == ["Drama"]
