"""Load-failure reasons (server/runtime/load_reasons.py), version-folder stamps and the readiness setting:
pure functions and onnxruntime's real messages, no server."""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from server import config
from server.__main__ import parse_args
from server.runtime.layout import version_stamp
from server.runtime.load_reasons import MAX_LINE, failure_reason
from tests.v2_repository import _save


def ort_error(path: Path) -> Exception:
    """onnxruntime's own exception for loading `path`."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises several types
        return err
    raise AssertionError(f"{path} loaded")


def test_a_missing_operator_keeps_the_first_line_without_source_references(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"], domain="example.custom")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    model.ir_version = 8
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(model.SerializeToString())
    err = ort_error(path)
    reason = failure_reason(err, {str(path.parent): "m/1"})
    assert "NoSuchOperator" in reason and "\n" not in reason and str(tmp_path) not in reason
    assert ".cc:" not in reason and "onnxruntime::" not in reason
    assert reason.startswith(("INVALID_GRAPH", "FAIL", "NOT_IMPLEMENTED")), reason


def test_first_and_last_lines_are_kept_and_each_is_bounded() -> None:
    message = (
        "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model failed:"
        " /onnxruntime_src/onnxruntime/core/graph/graph.cc:1234 void onnxruntime::Graph::Resolve(const Options&) "
        + "x" * 1000 + "\nmiddle line nobody needs\n  the cause: shape mismatch in node Conv_3  \n"
    )
    reason = failure_reason(RuntimeError(message))
    first, last = reason.split(" | ")
    assert first.startswith("INVALID_GRAPH: Load model failed: xxx") and len(first) <= MAX_LINE and " ... " in first
    assert last == "the cause: shape mismatch in node Conv_3"
    assert "middle line" not in reason and "graph.cc" not in reason and "Resolve" not in reason


@pytest.mark.parametrize("err,expected", [
    (RuntimeError(""), "RuntimeError"),
    (ValueError("one line only"), "one line only"),
    (RuntimeError("same\nsame"), "same"),
])
def test_plain_messages(err, expected) -> None:
    assert failure_reason(err) == expected


def test_the_missing_locale_says_what_to_install() -> None:
    message = (
        "[ONNXRuntimeError] : 1 : FAIL : Exception during initialization: /onnxruntime_src/onnxruntime/core/"
        "providers/cpu/text/string_normalizer.cc:235 onnxruntime::StringNormalizer::Locale::Locale(const std::string&)"
        "::<lambda()> Failed to construct locale with name:en_US.UTF-8:locale::facet::_S_create_c_locale name not "
        "valid:Please, install necessary language-pack-XX and configure locales\n"
    )
    reason = failure_reason(RuntimeError(message))
    assert reason.startswith("onnxruntime needs the en_US.UTF-8 locale") and "apt-get install locales" in reason
    assert "localedef -i en_US -f UTF-8 en_US.UTF-8" in reason and "\n" not in reason


def test_a_version_stamp_changes_with_any_file_of_the_folder(tmp_path) -> None:
    folder = tmp_path / "m" / "1"
    path = _save(helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    ), opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    stamps = [version_stamp(path)]
    (folder / "model.onnx.data").write_bytes(b"\0" * 16)
    stamps.append(version_stamp(path))
    os.utime(folder / "model.onnx.data", ns=(1, 1))  # rewritten: another modification time
    stamps.append(version_stamp(path))
    (folder / "weights").mkdir()
    (folder / "weights" / "part.bin").write_bytes(b"1")
    stamps.append(version_stamp(path))
    (folder / "model.onnx.data").unlink()
    stamps.append(version_stamp(path))
    assert len(set(stamps)) == len(stamps)
    assert version_stamp(path) == stamps[-1]  # and nothing else moves it
    path.unlink()
    assert version_stamp(path) is None


def test_strict_readiness_is_on_by_default_and_takes_words() -> None:
    assert config.from_environment({})["STRICT_READINESS"] is True
    assert config.from_environment({"STRICT_READINESS": "off"})["STRICT_READINESS"] is False
    assert parse_args(["--strict-readiness", "false"]).STRICT_READINESS is False
    with pytest.raises(config.ConfigError, match="STRICT_READINESS: received 'maybe'"):
        config.from_environment({"STRICT_READINESS": "maybe"})
