import pytest

from pneumonia.data.layout import LayoutError, check_layout, discover

ARCHIVE = [
    "chest_xray/train/NORMAL/IM-0115-0001.jpeg",
    "chest_xray/train/PNEUMONIA/person1_bacteria_1.JPEG",
    "chest_xray/train/PNEUMONIA/person2_virus_3.jpg",
    "chest_xray/test/NORMAL/IM-0001-0001.png",
    "chest_xray/test/PNEUMONIA/person1_virus_6.jpeg",
    "chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg",
    "chest_xray/.DS_Store",
    "chest_xray/train/.DS_Store",
    "chest_xray/chest_xray/train/NORMAL/IM-0115-0001.jpeg",
    "chest_xray/chest_xray/test/PNEUMONIA/person1_virus_6.jpeg",
    "chest_xray/chest_xray/.DS_Store",
    "__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg",
    "__MACOSX/chest_xray/._.DS_Store",
    "chest_xray/train/NORMAL/notes.txt",
    "README.md",
]


def test_discover_counts_each_image_once_and_reports_what_it_skipped():
    discovery = discover(ARCHIVE)
    assert [image.relative_path for image in discovery.images] == [
        "test/NORMAL/IM-0001-0001.png",
        "test/PNEUMONIA/person1_virus_6.jpeg",
        "train/NORMAL/IM-0115-0001.jpeg",
        "train/PNEUMONIA/person1_bacteria_1.JPEG",
        "train/PNEUMONIA/person2_virus_3.jpg",
        "val/NORMAL/NORMAL2-IM-1427-0001.jpeg",
    ]
    assert discovery.roots == ["chest_xray", "chest_xray/chest_xray"]
    assert dict(discovery.skipped) == {
        "duplicate_tree": 2,
        "macos_metadata": 2,
        "system_file": 3,
        "unsupported_extension": 1,
        "outside_layout": 1,
    }
    # The primary (shallowest) tree wins.
    assert all(not image.source.startswith("chest_xray/chest_xray") for image in discovery.images)


def test_discover_keeps_images_only_the_nested_tree_has():
    discovery = discover(
        [
            "chest_xray/train/NORMAL/a-IM-1-1.jpeg",
            "chest_xray/chest_xray/train/NORMAL/IM-0002-0001.jpeg",
        ]
    )
    assert {image.name for image in discovery.images} == {"a-IM-1-1.jpeg", "IM-0002-0001.jpeg"}


def test_top_level_layout_and_case_insensitive_folders():
    discovery = discover(["Train/normal/IM-1-1.jpeg", "TEST/Pneumonia/person1_virus_1.jpeg"])
    assert [image.relative_path for image in discovery.images] == [
        "test/PNEUMONIA/person1_virus_1.jpeg",
        "train/NORMAL/IM-1-1.jpeg",
    ]


def test_check_layout_names_missing_split_and_class():
    discovery = discover(
        [
            "train/NORMAL/IM-1-1.jpeg",
            "train/PNEUMONIA/person1_virus_1.jpeg",
            "test/NORMAL/IM-2-1.jpeg",
        ]
    )
    with pytest.raises(LayoutError, match=r"missing test/PNEUMONIA \(found .*train/NORMAL: 1"):
        check_layout(discovery, "my-source")


def test_check_layout_with_no_images_says_what_it_found_and_what_to_do():
    discovery = discover(["images/a.jpeg", "images/b.jpeg", "labels.csv"])
    with pytest.raises(LayoutError) as error:
        check_layout(discovery, "/data/wrong")
    message = str(error.value)
    assert "/data/wrong" in message
    assert "images/a.jpeg" in message
    assert "download.source" in message
