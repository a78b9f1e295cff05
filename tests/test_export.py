"""`pneumonia export`: ONNX and SavedModel exports score as the Keras model does, the golden
arrays beside them reproduce, the reference preprocessing is the project's, bit for bit."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from PIL import Image

from pneumonia.config import BACKBONE_MIN_IMAGE_SIZE, ModelConfig
from pneumonia.contracts.image_spec import ImageSpec
from pneumonia.contracts.input_spec import (
    INPUT_SPEC_VERSION,
    InputSpecError,
    input_spec_of,
    read_input_spec,
    write_input_spec,
)
from pneumonia.export import reference_preprocessing
from pneumonia.export.formats import (
    EXPORT_FORMATS,
    ExportError,
    export_classifier,
    export_model,
)
from pneumonia.export.golden import GOLDEN_SIZES, chest_like_image
from pneumonia.imaging.transforms import config_from_settings, preprocess_file, preprocess_image
from pneumonia.inference.loading import load_classifier
from pneumonia.model.network import average_ensemble, build_model
from pneumonia.model.scoring import score

from helpers import TINY_PREPROCESS, blob_pixels, run_cli, write_params
from helpers.paths import SHARED_DATASET
from helpers.project import TINY_CNN

PARITY_IMAGES = 100
TOLERANCE = 1e-5
BACKBONE = "mobilenetv3small"


def spec_at(size: int, **changes) -> ImageSpec:
    return ImageSpec.of({**TINY_PREPROCESS, "image_size": size, **changes})


def trained(model: keras.Model, seed: int) -> keras.Model:
    """`model` fitted for a moment on bright-square blobs, so its scores are not all alike."""
    keras.utils.set_random_seed(seed)
    side = model.input_shape[1]
    labels = np.arange(64) % 2
    images = np.stack(
        [
            blob_pixels(seed * 1000 + index, bool(label), (side, side))
            for index, label in enumerate(labels)
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(images[..., None], labels, epochs=2, batch_size=32, verbose=0)
    # A Keras Applications backbone's batch norms (momentum 0.99) keep their initial moving
    # statistics after four steps, and it then scores every image alike: set them once from a
    # batch, so that its parity is measured on varied scores too.
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > 0.9
    ]
    if norms:
        momentum = norms[0].momentum
        for layer in norms:
            layer.momentum = 0.0
        model(images[..., None], training=True)
        for layer in norms:
            layer.momentum = momentum
    return model


def parity_inputs(spec: ImageSpec) -> np.ndarray:
    """PARITY_IMAGES model inputs: the real test images of ../shared when present (decoded and
    preprocessed as the project does), else synthetic chest-like ones."""
    config = config_from_settings(spec.as_json(), "test spec")
    files = sorted(SHARED_DATASET.glob("test/*/*.jpeg")) if SHARED_DATASET.is_dir() else []
    if len(files) >= PARITY_IMAGES:
        chosen = files[:: len(files) // PARITY_IMAGES][:PARITY_IMAGES]
        return np.stack([preprocess_file(path, config) for path in chosen])[..., None]
    images = []
    for index in range(PARITY_IMAGES):
        width, height = GOLDEN_SIZES[index % len(GOLDEN_SIZES)]
        grey = chest_like_image(100 + index, width, height)
        images.append(preprocess_image(Image.fromarray(grey), config))
    return np.stack(images)[..., None]


def onnx_scores(model_file: Path, inputs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run(["score"], {"image": inputs})[0].reshape(-1)


def savedmodel_scores(folder: Path, inputs: np.ndarray) -> np.ndarray:
    serving = tf.saved_model.load(str(folder)).signatures["serving_default"]
    return serving(image=tf.constant(inputs))["score"].numpy().reshape(-1)


def exported_scores(model_path: Path, inputs: np.ndarray) -> np.ndarray:
    if model_path.suffix == ".onnx":
        return onnx_scores(model_path, inputs)
    return savedmodel_scores(model_path, inputs)


def load_module(path: Path):
    """A module from its file, outside the package: what a user beside an export does."""
    module_spec = importlib.util.spec_from_file_location("copied_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exports(tiny_model: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The project CNN (the trained tiny model), a MobileNetV3Small at its minimum size and an
    ensemble of two CNNs, each exported in every format: kind -> (model, spec, results)."""
    tiny = load_classifier(tiny_model["model_path"])
    backbone_size = BACKBONE_MIN_IMAGE_SIZE[BACKBONE]
    backbone_config = ModelConfig(**{**TINY_CNN.model_dump(), "architecture": BACKBONE})
    ensemble = average_ensemble([trained(build_model(32, TINY_CNN), seed) for seed in (1, 2)])
    models = {
        "cnn": (tiny.model, ImageSpec.of(tiny.preprocess.image)),
        BACKBONE: (
            trained(build_model(backbone_size, backbone_config), 3),
            spec_at(backbone_size, clahe=True),
        ),
        "ensemble": (ensemble, spec_at(32, resize="crop")),
    }
    root = tmp_path_factory.mktemp("exports")
    built = {}
    for kind, (model, spec) in models.items():
        results = {
            export_format: export_model(
                model,
                spec,
                threshold=0.5,
                operating_point="val (youden)",
                export_format=export_format,
                out=root / kind / export_format,
            )
            for export_format in EXPORT_FORMATS
        }
        built[kind] = (model, spec, results)
    return built


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cnn", BACKBONE, "ensemble"])
def test_every_format_scores_as_the_keras_model(exports: dict, kind: str) -> None:
    model, spec, results = exports[kind]
    inputs = parity_inputs(spec)
    expected = score(model, inputs).astype(np.float32)
    assert np.ptp(expected) > 1e-3, "the parity images must not all score the same"
    onnx = onnx_scores(results["onnx"].model_path, inputs)
    saved = savedmodel_scores(results["savedmodel"].model_path, inputs)
    assert onnx.shape == saved.shape == (PARITY_IMAGES,)
    assert np.abs(onnx - expected).max() <= TOLERANCE
    assert np.abs(saved - expected).max() <= TOLERANCE


@pytest.mark.slow
def test_the_exports_have_the_layout_and_one_graph_per_ensemble(exports: dict) -> None:
    import onnx

    _, _, results = exports["ensemble"]
    onnx_out = results["onnx"].model_path.parent
    assert results["onnx"].model_path == onnx_out / "model.onnx"
    assert results["savedmodel"].model_path.parts[-2:] == ("savedmodel", "1")
    graph = onnx.load(str(results["onnx"].model_path)).graph
    assert [value.name for value in graph.input] == ["image"]
    assert [value.name for value in graph.output] == ["score"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    # The graph alone still says how to feed it: the input spec is in its metadata.
    metadata = {
        entry.key: entry.value
        for entry in onnx.load(str(results["onnx"].model_path)).metadata_props
    }
    assert json.loads(metadata["input_spec"]) == json.loads(
        (onnx_out / "input_spec.json").read_text()
    )
    for result in results.values():
        folder = result.out
        names = {path.relative_to(folder).as_posix() for path in result.files}
        assert {"input_spec.json", "README.md", "reference_preprocessing.py"} <= names
        assert {"golden/index.json", "golden/inputs.npy", "golden/scores.npy"} <= names
        assert sum(name.startswith("golden/images/") for name in names) == len(GOLDEN_SIZES)
        assert result.bytes == sum(path.stat().st_size for path in result.files)
        # Built beside it and renamed into place: no partial folder is left.
        assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cnn", BACKBONE])
def test_the_golden_arrays_reproduce_with_the_copied_reference(exports: dict, kind: str) -> None:
    _, spec, results = exports[kind]
    for result in results.values():
        folder = result.out
        golden = folder / "golden"
        index = json.loads((golden / "index.json").read_text())
        inputs, scores = np.load(golden / "inputs.npy"), np.load(golden / "scores.npy")
        size = spec.image_size
        assert inputs.shape == (len(GOLDEN_SIZES), size, size, 1) and inputs.dtype == np.uint8
        assert scores.shape == (len(GOLDEN_SIZES),) and scores.dtype == np.float32
        reference = load_module(folder / "reference_preprocessing.py")
        input_spec = json.loads((folder / "input_spec.json").read_text())
        for position, name in enumerate(index["images"]):
            # Any PNG decoder gives these pixels: OpenCV's, as a port would use.
            grey = cv2.imread(str(golden / name), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(reference.preprocess(grey, input_spec), inputs[position, ..., 0])
        assert np.abs(exported_scores(result.model_path, inputs) - scores).max() <= TOLERANCE
    # The letterbox is exercised: some golden inputs carry bars.
    if spec.resize == "letterbox":
        assert (inputs[:, 0, :, 0] == 0).all(axis=1).any()


def test_the_golden_images_vary_in_shape_and_content() -> None:
    images = [chest_like_image(index, *size) for index, size in enumerate(GOLDEN_SIZES)]
    assert len({image.shape[1] / image.shape[0] > 1 for image in images}) == 2  # both ways
    assert all(image.std() > 20 for image in images)
    assert np.array_equal(chest_like_image(3, 50, 40), chest_like_image(3, 50, 40))
    assert not np.array_equal(chest_like_image(3, 50, 40), chest_like_image(4, 50, 40))


SHAPES = [
    (1, 1),
    (2, 3),
    (5, 300),
    (300, 5),
    (31, 33),
    (63, 64),
    (64, 64),
    (97, 61),
    (200, 151),
    (1000, 1),
    (480, 640),
    (129, 128),
]


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "crop"])
@pytest.mark.parametrize("clahe", [False, True])
@pytest.mark.parametrize("size", [32, 64])
def test_the_reference_preprocessing_is_the_projects(mode: str, clahe: bool, size: int) -> None:
    spec = spec_at(size, resize=mode, clahe=clahe, clahe_clip_limit=3.0, clahe_tile_grid=4)
    config = config_from_settings(spec.as_json(), "test spec")
    input_spec = input_spec_of(spec, threshold=0.5, operating_point="val").as_json()
    rng = np.random.default_rng(size + clahe)
    for height, width in SHAPES:
        for grey in (
            rng.integers(0, 256, (height, width), dtype=np.uint8),
            chest_like_image(height * width, width, height),
        ):
            expected = preprocess_image(Image.fromarray(grey), config)
            produced = reference_preprocessing.preprocess(grey, input_spec)
            assert produced.dtype == np.uint8 and produced.shape == (size, size)
            assert np.array_equal(produced, expected), (mode, clahe, size, height, width)


def test_the_reference_imports_nothing_of_the_project() -> None:
    source = Path(reference_preprocessing.__file__).read_text()
    imports = {
        line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))
    }
    assert imports == {"__future__", "cv2", "numpy"}


def test_the_input_spec_round_trips_and_names_the_threshold(tmp_path: Path) -> None:
    spec = input_spec_of(spec_at(128, clahe=True), threshold=0.4321, operating_point="val (youden)")
    path = tmp_path / "input_spec.json"
    write_input_spec(path, spec)
    assert read_input_spec(path) == spec
    data = json.loads(path.read_text())
    assert data["schema_version"] == INPUT_SPEC_VERSION == 1
    assert data["input"] == {
        "name": "image",
        "dtype": "uint8",
        "shape": [None, 128, 128, 1],
        "layout": "NHWC",
        "channels": 1,
        "color": "grey",
        "value_range": [0, 255],
        "note": data["input"]["note"],
    }
    assert [step["step"] for step in data["preprocessing"]] == ["decode", "resize", "clahe"]
    assert data["preprocessing"][1]["params"]["interpolation"] == "area"
    assert data["preprocessing"][2]["params"]["tile_grid"] == [8, 8]
    assert data["output"]["threshold"] == 0.4321
    assert data["output"]["operating_point"] == "val (youden)"
    assert data["output"]["label_rule"] == "PNEUMONIA if score >= threshold else NORMAL"
    assert any("0.4321" in line for line in spec.summary())


def test_a_bad_input_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "input_spec.json"
    with pytest.raises(InputSpecError, match=r"input_spec\.json: not found"):
        read_input_spec(path)
    path.write_text("{not json")
    with pytest.raises(InputSpecError, match=r"input_spec\.json: not valid JSON"):
        read_input_spec(path)
    spec = input_spec_of(spec_at(32), threshold=None, operating_point=None).as_json()
    path.write_text(json.dumps({**spec, "schema_version": INPUT_SPEC_VERSION + 1}))
    with pytest.raises(InputSpecError, match="newer than this code"):
        read_input_spec(path)
    path.write_text(json.dumps({**spec, "input": {"name": "image"}}))
    with pytest.raises(InputSpecError, match=r"input_spec\.json: input"):
        read_input_spec(path)


def test_an_export_refuses_a_bad_format_or_a_mismatched_spec(tiny_model: dict, tmp_path: Path):
    classifier = load_classifier(tiny_model["model_path"])
    with pytest.raises(ExportError, match="one of onnx, savedmodel, got 'tflite'"):
        export_classifier(classifier, "tflite", tmp_path / "out")
    with pytest.raises(ExportError, match=r"takes \(32, 32, 1\).*\(64, 64, 1\)"):
        export_model(
            classifier.model,
            spec_at(64),
            threshold=None,
            operating_point=None,
            export_format="onnx",
            out=tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_cli_export_writes_the_layout_and_prints_the_spec(tiny_model, tmp_path, capsys) -> None:
    out = tmp_path / "exports" / "onnx"
    arguments = ["export", "--format", "onnx", "--model", str(tiny_model["model_path"])]
    status, stdout, stderr = run_cli([*arguments, "--out", str(out)], capsys)
    assert status == 0, stderr
    assert (out / "model.onnx").is_file() and (out / "input_spec.json").is_file()
    assert (out / "golden" / "inputs.npy").is_file()
    assert "image: uint8 (N, 32, 32, 1) NHWC" in stdout
    assert f"threshold {tiny_model['threshold']:.4f}" in stdout
    assert f"{out / 'model.onnx'}" in stdout and "golden/scores.npy" in stdout
    spec = read_input_spec(out / "input_spec.json")
    assert spec.output.threshold == pytest.approx(tiny_model["threshold"])
    golden = np.load(out / "golden" / "inputs.npy")
    assert (
        np.abs(
            onnx_scores(out / "model.onnx", golden) - np.load(out / "golden" / "scores.npy")
        ).max()
        <= TOLERANCE
    )

    # A second export into the same folder is refused, and the folder is left as it was.
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    status, stdout, stderr = run_cli([*arguments, "--out", str(out)], capsys)
    assert status == 2
    assert stderr.strip() == (
        f"error: {out}: not empty; nothing is overwritten: pass a new or empty --out folder"
    )
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in out.parent.iterdir()) == ["onnx"]


def test_cli_export_refuses_a_bad_format_and_a_missing_model(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    status, _, stderr = run_cli(["export", "--format", "tflite", "--out", str(out)], capsys)
    assert status == 2 and "invalid choice: 'tflite'" in stderr
    missing = tmp_path / "nowhere" / "model.keras"
    status, stdout, stderr = run_cli(
        ["export", "--format", "onnx", "--model", str(missing), "--out", str(out)], capsys
    )
    assert status == 2 and stdout == ""
    assert stderr.startswith(f"error: {missing}: not found") and len(stderr.splitlines()) == 1
    assert not out.exists()


def test_cli_export_defaults_to_the_projects_model(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, stdout, stderr = run_cli(["export", "--format", "onnx", "--out", "onnx"], capsys)
    assert status == 2 and stdout == ""
    assert "error: no --model given and no params.yaml here" in stderr
    write_params(tmp_path, {})  # its paths.models is models/
    status, _, stderr = run_cli(["export", "--format", "onnx", "--out", "onnx"], capsys)
    assert status == 2 and "models/model.keras: not found; run the pipeline first" in stderr
    shutil.copytree(
        tiny_model["folder"], tmp_path / "models", ignore=shutil.ignore_patterns("images")
    )
    status, stdout, stderr = run_cli(["export", "--format", "onnx", "--out", "onnx"], capsys)
    assert status == 0, stderr
    assert f"export: {tmp_path / 'models' / 'model.keras'} as onnx" in stdout
    assert (tmp_path / "onnx" / "model.onnx").is_file()


def test_cli_export_help_has_an_example(capsys) -> None:
    from pneumonia.cli.export import EXPORT_FORMATS as CLI_FORMATS

    assert CLI_FORMATS == EXPORT_FORMATS  # the CLI keeps its own copy: no TensorFlow for --help
    status, stdout, _ = run_cli(["export", "--help"], capsys)
    assert status == 0
    assert "pneumonia export --format onnx --out" in stdout and "input_spec.json" in stdout
    status, stdout, _ = run_cli(["--help"], capsys)
    assert status == 0 and "pneumonia export --format onnx --out DIR" in stdout


def test_the_current_folder_is_refused_and_a_bad_export_writes_nothing(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    classifier = load_classifier(tiny_model["model_path"])
    with pytest.raises(ExportError, match="the current folder or one above it"):
        export_classifier(classifier, "onnx", Path("."))
    # An export whose file scores differently from the Keras model is refused whole (a
    # tolerance below zero makes any export one).
    import pneumonia.export.formats as formats

    expected = formats.PARITY_TOLERANCE
    monkeypatch.setattr(formats, "PARITY_TOLERANCE", -1.0)  # any difference at all is too much
    with pytest.raises(ExportError, match="differ from the Keras model's"):
        export_classifier(classifier, "savedmodel", tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused.*"))
    monkeypatch.setattr(formats, "PARITY_TOLERANCE", expected)
    assert export_classifier(classifier, "savedmodel", tmp_path / "kept").out.is_dir()
