"""Exporting an embedding model (issue 19, "Export"): the SavedModel's signature takes
raw pixels and answers unit embeddings in TF Serving's session-based loader, the
float32 TFLite file embeds every image at cosine >= 0.9999 to Keras, int8's change
of held-out rank-1 is measured (equal to a NumPy nearest-neighbour count on each
model's own embeddings) and gated, and ``kvision evaluate`` measures the exports.

The model is a tiny embedding model that needs no training to rank glyphs above
chance: 4x4 average pooling of the pixels, flattened, a seeded random projection to 32
dimensions and unit length (random projections keep cosine neighbours roughly).
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision import cli, embedding
from kvision.data.glyphs import glyphs

SIZE, DIM = 32, 32


def pixels_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(inputs))
    return embedding.build(keras.Model(inputs, x), dim=DIM, input_shape=(SIZE, SIZE, 3),
                           name="pixels")


def held_out(identities=20):
    images, labels, _ = glyphs(identities, 4, image_size=SIZE, split="test", seed=0)
    return images.astype("float32"), labels


def numpy_rank1(e, labels):
    """Leave-one-out rank-1 by cosine, written out here."""
    e = np.asarray(e, "float64")
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    similarity = e @ e.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[np.argmax(similarity, axis=1)] == labels))


def interpreter_outputs(path, images):
    """The .tflite file run image by image with TF's own interpreter: {name: array}."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()
    parts = [runner(**{name: images[i:i + 1]}) for i in range(len(images))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def cosines(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``kvision export``'s function: the SavedModel and the float32 TFLite file."""
    from kvision.export.command import export

    folder = tmp_path_factory.mktemp("embedding_export")
    model = pixels_model()
    model.save(folder / "pixels.keras")
    results = export(str(folder / "pixels.keras"), formats=("savedmodel", "tflite"),
                     quantize=(None,), out=str(folder / "out"))
    return model, folder, {r.format: r for r in results}


def test_savedmodel_serves_raw_pixels_to_unit_embeddings(exported):
    model, folder, results = exported
    x = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 3)).astype("float32")
    # TF Serving's C++ loader is the session-based one (what saved_model_cli run uses).
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"],
                                                    results["savedmodel"].path)
        signature = meta.signature_def["serving_default"]
        assert list(signature.inputs) == ["images"]
        assert list(signature.outputs) == ["embeddings"]
        got = session.run(signature.outputs["embeddings"].name,
                          {signature.inputs["images"].name: x})
    reference = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(got, reference).min() >= 0.9999


def test_float32_tflite_embeds_every_image_as_keras_does(exported):
    model, folder, results = exported
    images, labels = held_out()
    got = interpreter_outputs(results["tflite"].path, images)
    assert list(got) == ["embeddings"]                 # named: the export says its task
    similarity = cosines(got["embeddings"], model.predict(images, verbose=0))
    assert similarity.min() >= 0.9999
    assert results["tflite"].parity["min_cosine"] >= 0.9999


def test_int8_rank1_change_is_measured_and_gated(exported, tmp_path):
    from kvision.export import tflite

    model, _, _ = exported
    images, labels = held_out()
    calibration, _, _ = glyphs(12, 4, image_size=SIZE, split="train", seed=1)
    result = tflite(model, tmp_path / "p.int8.tflite", "int8",
                    calibration.astype("float32"), check_data=images, check_labels=labels)
    p = result.parity
    keras_rank1 = numpy_rank1(model.predict(images, verbose=0), labels)
    int8_rank1 = numpy_rank1(interpreter_outputs(result.path, images)["embeddings"], labels)
    assert keras_rank1 > 0.1                        # the measure can move: above chance
    assert p["rank1_reference"] == pytest.approx(keras_rank1, abs=1e-9)
    assert p["rank1_candidate"] == pytest.approx(int8_rank1, abs=1e-9)
    assert p["rank1_drop"] == pytest.approx(100 * (keras_rank1 - int8_rank1))
    assert p["rank1_drop"] <= 2.0
    # Calibrated on black images, int8 saturates: the gate refuses it, nothing written.
    with pytest.raises(ValueError, match=r"held-out rank-1 .* points below"):
        tflite(model, tmp_path / "black.int8.tflite", "int8",
               np.zeros_like(calibration, "float32"), check_data=images,
               check_labels=labels)
    assert not (tmp_path / "black.int8.tflite").exists()


def test_evaluate_measures_the_exports(exported, capsys):
    model, _, results = exported
    images, labels = held_out(10)              # what --max-images 40 draws
    expected = numpy_rank1(interpreter_outputs(results["tflite"].path,
                                               images)["embeddings"], labels)
    for path in (results["tflite"].path, results["savedmodel"].path):
        capsys.readouterr()
        assert cli.main(["evaluate", path, "--max-images", "40", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["task"] == "embedding" and report["images"] == 40
        assert report["rank1"] == pytest.approx(expected, abs=0.026)  # one query of 40
