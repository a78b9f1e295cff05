import pytest

from pneumonia.data.patients import parse_patient_id, patient_key


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person1_virus_11_2.jpeg", "person1"),
        ("Person3_Virus_1.JPG", "person3"),
        ("IM-0115-0001.jpeg", "IM-115"),
        ("IM-0011-0001-0002.jpeg", "IM-11"),
        ("NORMAL2-IM-0246-0001-0001.jpeg", "NORMAL2-IM-246"),
        ("normal2-im-0001-0001.png", "NORMAL2-IM-1"),
        ("scan.jpeg", None),
        ("person_bacteria_1.jpeg", None),
    ],
)
def test_parse_patient_id(filename, expected):
    assert parse_patient_id(filename) == expected


def test_normal_and_normal2_are_different_series():
    assert parse_patient_id("IM-0115-0001.jpeg") != parse_patient_id("NORMAL2-IM-0115-0001.jpeg")


def test_numbering_restarts_in_test_so_keys_are_scoped():
    train_key, _ = patient_key("train", "person1_bacteria_1.jpeg")
    val_key, _ = patient_key("val", "person1_bacteria_2.jpeg")
    test_key, _ = patient_key("test", "person1_virus_6.jpeg")
    assert train_key == val_key == "trainval:person1"
    assert test_key == "test:person1"


def test_unparsed_name_becomes_its_own_patient():
    key, parsed = patient_key("train", "scan 7.jpeg")
    assert (key, parsed) == ("trainval:file:scan 7", False)
