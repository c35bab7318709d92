"""SQuAD loading: sources, deterministic order, and a clear error for every malformed input."""

import json

import pytest

from interlingua.data import squad
from interlingua.data.squad import SquadDataError, SquadExample, load_squad
from tests.conftest import SQUAD_MINI


def test_file_and_folder_give_the_same_examples():
    from_folder = load_squad("validation", str(SQUAD_MINI))
    from_file = load_squad("validation", str(SQUAD_MINI / "dev-v1.1.json"))
    assert from_folder == from_file and len(from_folder) == 8
    assert all(isinstance(e, SquadExample) and e.answers for e in from_folder)
    lighthouse = next(e for e in from_folder if e.id == "dev-a-0-0")
    assert lighthouse.answers == ("near the old lighthouse", "the old lighthouse")
    assert lighthouse.title == "Harbour_Town" and lighthouse.question == "Where does the river reach the sea?"


def test_train_split_reads_the_train_file():
    ids = {e.id for e in load_squad("train", str(SQUAD_MINI))}
    assert ids and all(i.startswith("train-") for i in ids)


def test_reconstructed_train_file_is_accepted(tmp_path):
    (tmp_path / "train-v1.1.reconstructed.json").write_text((SQUAD_MINI / "train-v1.1.json").read_text())
    assert len(load_squad("train", str(tmp_path))) == 8


def test_env_var_is_used_by_auto(monkeypatch):
    monkeypatch.setenv("INTERLINGUA_SQUAD_DIR", str(SQUAD_MINI))
    assert load_squad("validation", "auto") == load_squad("validation", str(SQUAD_MINI))


def test_seeded_order_and_limit():
    a = [e.id for e in load_squad("validation", str(SQUAD_MINI), seed=0)]
    assert a == [e.id for e in load_squad("validation", str(SQUAD_MINI), seed=0)]
    assert a != [e.id for e in load_squad("validation", str(SQUAD_MINI), seed=1)]
    assert [e.id for e in load_squad("validation", str(SQUAD_MINI), limit=3, seed=0)] == a[:3]
    with pytest.raises(SquadDataError, match="limit"):
        load_squad("validation", str(SQUAD_MINI), limit=0)


def test_unknown_split_lists_the_known_ones():
    with pytest.raises(SquadDataError, match="train, validation"):
        load_squad("test", str(SQUAD_MINI))


def test_missing_file_in_folder_names_folder_and_files(tmp_path):
    with pytest.raises(SquadDataError) as info:
        load_squad("validation", str(tmp_path))
    assert str(tmp_path) in str(info.value) and "dev-v1.1.json" in str(info.value)


def test_missing_source_path_says_what_to_set(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SquadDataError) as info:
        load_squad("validation", str(missing))
    message = str(info.value)
    assert str(missing) in message and "neither a file nor a folder" in message
    assert "data.source" in message and "dev-v1.1.json" in message


def test_hub_failure_says_how_to_use_local_files(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv("INTERLINGUA_SQUAD_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    squad._load_hub.cache_clear()
    with pytest.raises(SquadDataError) as info:
        load_squad("validation", "auto")
    assert "INTERLINGUA_SQUAD_DIR" in str(info.value) and "data.source" in str(info.value)
    assert "no network" in str(info.value)


def _valid():
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "C x", "qas": [
        {"id": "q1", "question": "Q?", "answers": [{"answer_start": 2, "text": "x"}]}]}]}]}


def _with(mutate):
    payload = _valid()
    mutate(payload)
    return json.dumps(payload)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "file is empty"),
        ('{"data": [', "not valid JSON (line 1"),
        ('{"version": "1.1"}', "needs a 'data' list"),
        ("[1, 2]", "needs a 'data' list"),
        (_with(lambda p: p["data"][0].pop("paragraphs")), "data[0] has no 'paragraphs'"),
        (_with(lambda p: p["data"][0]["paragraphs"][0].pop("context")), "data[0].paragraphs[0] has no 'context'"),
        (_with(lambda p: p["data"][0]["paragraphs"][0].pop("qas")), "data[0].paragraphs[0] has no 'qas'"),
        (_with(lambda p: p["data"][0]["paragraphs"][0]["qas"][0].pop("question")), "qas[0] has no 'question'"),
        (_with(lambda p: p["data"][0]["paragraphs"][0]["qas"][0].pop("id")), "qas[0] has no 'id'"),
        (_with(lambda p: p["data"][0]["paragraphs"][0]["qas"][0].update(answers=[])), "empty 'answers' list"),
        (_with(lambda p: p["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].pop("text")),
         "answers[0] has no 'text'"),
        (_with(lambda p: p["data"][0]["paragraphs"][0]["qas"][0].update(question=7)), "question should be a str"),
        (_with(lambda p: p["data"][0]["paragraphs"][0]["qas"].append(dict(p["data"][0]["paragraphs"][0]["qas"][0]))),
         "repeats the id 'q1'"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "dev-v1.1.json"
    path.write_text(content)
    with pytest.raises(SquadDataError) as info:
        load_squad("validation", str(path))
    assert str(path) in str(info.value) and expected in str(info.value)


def test_a_fixed_file_is_reread_after_it_changes(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text("{")
    with pytest.raises(SquadDataError):
        load_squad("validation", str(path))
    path.write_text(json.dumps(_valid()))
    assert [e.id for e in load_squad("validation", str(path))] == ["q1"]
