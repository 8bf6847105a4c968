from factory.records import content_hash, normalise_text, problem_id


def test_problem_id_ignores_whitespace_and_unicode_forms_but_not_case():
    assert problem_id("What is  1+1?\n") == problem_id("What is 1+1?")
    assert problem_id("ｘ＝１") == problem_id("x=1")  # NFKC folds full-width forms
    assert problem_id("Find x") != problem_id("find x")


def test_content_hash_is_stable_and_order_sensitive():
    assert content_hash("a", 1, {"b": 2, "a": 1}) == content_hash("a", 1, {"a": 1, "b": 2})
    assert content_hash("a", 1) != content_hash(1, "a")
    assert len(content_hash("x")) == 32


def test_normalise_text():
    assert normalise_text("  a\t b \n") == "a b"
