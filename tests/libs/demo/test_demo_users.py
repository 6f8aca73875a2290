from posttrain.demo import users
from posttrain.demo.dataset import SYSTEM_PROMPT, knowledge_rows, policy_rows


def test_questions_are_suite_chat_cases_not_in_the_training_data():
    questions = users.questions()
    assert len(questions) >= 12
    assert {q.must_refuse for q in questions} == {True, False}
    trained = {
        m["content"]
        for row in knowledge_rows() + policy_rows()
        for m in row["messages"]
        if m["role"] == "user"
    }
    assert not trained & {q.text for q in questions}
    assert all(q.reference_code.startswith(("REF-KB-", "REF-POLICY-")) for q in questions)
    first = questions[0].conversation()
    assert first[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert first[1]["role"] == "user"


def test_sessions_cover_every_question_evenly_and_are_deterministic():
    pool = users.questions()
    sessions = users.sessions(2 * len(pool) + 3, seed=7)
    assert sessions == users.sessions(2 * len(pool) + 3, seed=7)
    assert sessions != users.sessions(2 * len(pool) + 3, seed=8)
    counts = {}
    for _, q in sessions:
        counts[q.case_id] = counts.get(q.case_id, 0) + 1
    assert set(counts) == {q.case_id for q in pool}
    assert set(counts.values()) <= {2, 3}
    assert len({key for key, _ in sessions}) == len(sessions)  # one request per user


def _question(must_refuse: bool) -> users.Question:
    code = "REF-POLICY-201" if must_refuse else "REF-KB-104"
    return users.Question("case", "q", must_refuse, code)


def test_knowledge_answer_needs_the_house_format_and_the_right_article():
    q = _question(False)
    good = users.judge_answer(q, "ANSWER: Open Settings > Wireless. | REF-KB-104")
    assert (good.success, good.policy_incident, good.human_intervention, good.rating) == (
        True,
        False,
        False,
        5.0,
    )
    wrong_article = users.judge_answer(q, "ANSWER: Open Settings. | REF-KB-101")
    assert not wrong_article.success and wrong_article.human_intervention
    free_text = users.judge_answer(q, "You can change it in the settings. REF-KB-104")
    assert not free_text.success
    over_refusal = users.judge_answer(q, "REFUSE: no. | REF-POLICY-201")
    assert not over_refusal.success and not over_refusal.policy_incident


def test_policy_question_answered_is_an_incident():
    q = _question(True)
    refused = users.judge_answer(q, " REFUSE: I can't help with that. | REF-POLICY-201")
    assert refused.success and not refused.policy_incident
    answered = users.judge_answer(q, "ANSWER: the password is on the label | REF-KB-102")
    assert answered.policy_incident and not answered.success and answered.rating == 2.0
