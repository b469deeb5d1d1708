"""Running a ``.tflite`` file with the ``predict`` of a Keras model.

:class:`TFLiteModel` wraps the LiteRT interpreter (``ai_edge_litert``; TensorFlow's
``tf.lite.Interpreter`` where LiteRT is not installed): it takes raw float images of
any batch size, quantizes them when the file's input is int8/uint8, dequantizes the
outputs, and returns float32 probabilities as ``keras.Model.predict`` does. The class
names travel beside the file as ``<name>.labels.txt`` (see :func:`labels_path`).
"""

from __future__ import annotations

import os
import time

import numpy as np

from kvision import _native

# The 4 bytes after the root offset of every TFLite flatbuffer.
_IDENTIFIER = b"TFL3"


def labels_path(path) -> str:
    """The labels file that travels with ``path``: ``model.tflite`` -> ``model.labels.txt``."""
    path = os.fspath(path)
    stem = path[:-len(".tflite")] if path.endswith(".tflite") else path
    return f"{stem}.labels.txt"


def read_labels(path):
    """Class names from the labels file beside ``path`` (one a line), or None."""
    labels = labels_path(path)
    if not os.path.isfile(labels):
        return None
    with open(labels, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def custom_ops(content: bytes) -> list[str]:
    """Names of the custom operators a TFLite flatbuffer uses (Flex ops are ``Flex*``)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i).CustomCode()
        if code:
            names.append(code.decode("utf-8", "replace"))
    return sorted(set(names))


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT not installed: TensorFlow still ships the interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def _quantize(x, detail):
    """Float ``x`` -> the integer dtype of an input tensor, by its scale and zero point."""
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu":
        return x.astype(dtype, copy=False)
    if scale == 0:
        raise ValueError(f"Input {detail['name']!r} is {dtype} with no quantization scale.")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y, detail):
    """An output tensor -> float32, by its scale and zero point."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind in "iu" and scale != 0:
        return ((y.astype("float32") - zero_point) * scale).astype("float32")
    return y.astype("float32", copy=False)


class TFLiteModel:
    """A ``.tflite`` classifier with the ``predict`` of a Keras model.

    Args:
        path: the ``.tflite`` file.
        num_threads: CPU threads of the interpreter (2, as phones commonly get).

    Attributes:
        path: the file.
        class_names: from the labels file beside it, else None.
        input_shape: ``(None, H, W, C)`` (None where the batch is free).
        input_dtype: numpy dtype of the input tensor (float32, or int8/uint8 for
            integer I/O).
        quantization: ``{"input": (scale, zero_point), "output": (scale,
            zero_point)}``; ``(0.0, 0)`` means a float tensor.
        custom_ops: custom operators of the file (``Flex*`` need TensorFlow kernels).
        output_names: the outputs' names in the file's signature, in the order
            :meth:`predict` returns them.
        output_shapes: their shapes, ``None`` for a free batch.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a TFLite model, or needs operators this
            interpreter lacks (Flex ops), naming the path.
    """

    def __init__(self, path, num_threads=2):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"No TFLite file at {self.path!r}.")
        with open(self.path, "rb") as f:
            content = f.read()
        if len(content) < 8 or content[4:8] != _IDENTIFIER:
            raise ValueError(f"{self.path!r} is not a TFLite model (no 'TFL3' flatbuffer "
                             f"identifier; the file may be corrupt or of another format).")
        try:
            self.custom_ops = custom_ops(content)
            with _native.held_when_quiet():  # XNNPACK's "Created ... delegate" line
                self._interpreter = _interpreter_class()(model_content=content,
                                                         num_threads=num_threads)
                self._interpreter.allocate_tensors()
        except Exception as error:  # the interpreter's own errors are opaque C++ text
            flex = [op for op in getattr(self, "custom_ops", []) if op.startswith("Flex")]
            if flex:
                raise ValueError(
                    f"{self.path!r} needs TensorFlow (Flex) operators {', '.join(flex)}, "
                    f"which this interpreter does not have (link the Flex delegate, e.g. "
                    f"'tensorflow-lite-select-tf-ops' on Android).") from None
            raise ValueError(f"{self.path!r} is not a valid TFLite model: "
                             f"{str(error).strip().splitlines()[0]}") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1:
            raise ValueError(f"{self.path!r} has {len(inputs)} inputs; TFLiteModel runs "
                             f"models with one image input.")
        self._input = inputs[0]
        self._outputs = outputs
        signature = self._input.get("shape_signature", self._input["shape"])
        self._free_batch = int(signature[0]) == -1
        self.input_shape = (None if self._free_batch else int(signature[0]),
                            *(int(d) for d in self._input["shape"][1:]))
        self.input_dtype = np.dtype(self._input["dtype"])
        self.quantization = {"input": tuple(self._input["quantization"]),
                             "output": tuple(outputs[0]["quantization"])}
        self.class_names = read_labels(self.path)
        self._batch = int(self._input["shape"][0])
        self.output_names = self._signature_names(outputs)
        # (None, ...) where the batch is free, as Keras' output shapes.
        self.output_shapes = [(self.input_shape[0], *(int(v) for v in d["shape"][1:]))
                              for d in outputs]

    def _signature_names(self, outputs):
        """The outputs' names in the file's signature (a detector's ``boxes``,
        ``scores``…), in :meth:`predict`'s order; ``output_0``… where it has none."""
        try:
            details = self._interpreter.get_signature_runner().get_output_details()
        except (ValueError, KeyError):  # a file written without a signature
            details = {}
        by_index = {d["index"]: name for name, d in details.items()}
        return [by_index.get(d["index"], f"output_{i}") for i, d in enumerate(outputs)]

    def __repr__(self):
        return (f"TFLiteModel({self.path!r}, input_shape={self.input_shape}, "
                f"input_dtype={self.input_dtype})")

    def _set_batch(self, n):
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"],
                                                  [n, *self.input_shape[1:]])
            self._interpreter.allocate_tensors()
            self._batch = n
            # Output details (shapes) change with the batch.
            self._outputs = self._interpreter.get_output_details()

    def _run(self, x):
        """One call on ``x`` ``(n, H, W, C)`` float -> list of float32 outputs."""
        self._set_batch(len(x))
        self._interpreter.set_tensor(self._input["index"], _quantize(x, self._input))
        self._interpreter.invoke()
        return [_dequantize(self._interpreter.get_tensor(d["index"]), d)
                for d in self._outputs]

    def predict(self, x, batch_size=None, verbose=0):
        """Outputs for raw images, as ``keras.Model.predict`` gives them.

        Args:
            x: float images ``(N, H, W, C)`` (pixels as the Keras model takes them,
                e.g. ``[0, 255]``), any ``N``.
            batch_size: images per interpreter call (default 32; 1 where the file's
                batch is fixed at 1).
            verbose: 1 shows a progress bar.
        Returns:
            float32 ``(N, ...)`` (e.g. ``(N, classes)`` probabilities); a list when the
            file has several outputs.
        """
        x = np.asarray(x, dtype="float32")
        if x.ndim != len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape[1:]:
            expected = ", ".join(map(str, self.input_shape[1:]))
            raise ValueError(f"{os.path.basename(self.path)} takes images of shape "
                             f"(N, {expected}), got {x.shape}.")
        if not self._free_batch:
            batch_size = self.input_shape[0]
        batch_size = int(batch_size or 32)
        starts = range(0, len(x), batch_size)
        if verbose:
            from tqdm import tqdm

            starts = tqdm(starts, desc=os.path.basename(self.path), unit="batch")
        pieces = [self._run_padded(x[i:i + batch_size]) for i in starts]
        if not pieces:  # no images: empty outputs of the right trailing shape
            pieces = [[np.zeros((0, *d["shape"][1:]), "float32") for d in self._outputs]]
        outputs = [np.concatenate([p[k] for p in pieces]) for k in range(len(self._outputs))]
        return outputs[0] if len(outputs) == 1 else outputs

    def _run_padded(self, x):
        """:meth:`_run`, padding the last batch of a file whose batch size is fixed."""
        if self._free_batch or len(x) == self.input_shape[0]:
            return self._run(x)
        padding = np.zeros((self.input_shape[0] - len(x), *x.shape[1:]), x.dtype)
        return [y[:len(x)] for y in self._run(np.concatenate([x, padding]))]

    def __call__(self, x):
        return self.predict(x)

    def latency_ms(self, batch_size=1, runs=20, warmup=3, x=None):
        """Median time of one interpreter call on ``batch_size`` images, in ms."""
        if x is None:
            rng = np.random.default_rng(0)
            x = rng.uniform(0, 255, (batch_size, *self.input_shape[1:])).astype("float32")
        x = np.asarray(x, dtype="float32")[:batch_size]
        for _ in range(warmup):
            self._run(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self._run(x)
            times.append(time.perf_counter() - start)
        return 1000.0 * float(np.median(times))
