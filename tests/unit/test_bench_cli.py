"""python -m bench: FLOP counting, machine description and peaks, statistics, report, argument checks."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import report as rep
from bench.__main__ import (Spec, UsageError, build_parser, compute_precision, main, parse_backends,
                            parse_batch_sizes)
from bench.flops import FlopCountError, count_flops
from bench.machine import (PEAK_TABLE, describe_machine, machine_name, read_cpuinfo, table_peak, unit_class)
from bench.worker import time_calls


# ---------------------------------------------------------------- FLOP counting

def _graph(nodes, inits, out_shape, in_shape=("N", 3, 8, 8)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _w(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


def test_conv_then_gemm_counts_known_macs():
    # Conv 3->4, 3x3, pad 1 on 8x8: 4*8*8 outputs x 3*3*3 MACs; Gemm 256 -> 10.
    model = _graph([
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "w2"], ["y"]),
    ], [_w("w", (4, 3, 3, 3)), _w("w2", (256, 10))], ("N", 10))
    per_image = 4 * 8 * 8 * 27 + 256 * 10
    c = count_flops(model, batch=2)
    assert c.macs == 2 * per_image
    assert c.flops == 4 * per_image and c.flops_per_image == 2 * per_image
    assert c.by_op == {"Conv": 2 * 4 * 8 * 8 * 27, "Gemm": 2 * 2560} and c.nodes == 2


def test_strided_grouped_conv_and_transposed_gemm():
    # Depthwise 3x3 stride 2 on 3 channels (8x8 -> 4x4), then Gemm with transB (W stored as (5, 48)).
    model = _graph([
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], group=3),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1),
    ], [_w("w", (3, 1, 3, 3)), _w("w2", (5, 48))], ("N", 5))
    c = count_flops(model, batch=1)
    assert c.by_op["Conv"] == 3 * 4 * 4 * 9
    assert c.by_op["Gemm"] == 48 * 5


def test_qdq_weights_count_like_float_weights():
    """INT8 Q/DQ graphs count the same as FP32: the weight shape is read through DequantizeLinear."""
    float_model = _graph([helper.make_node("Conv", ["x", "w"], ["y"])], [_w("w", (4, 3, 3, 3))], ("N", 4, 6, 6))
    qdq_model = _graph([
        helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["y"]),
    ], [_w("wq", (4, 3, 3, 3), np.int8), numpy_helper.from_array(np.float32(0.1), "s")], ("N", 4, 6, 6))
    assert count_flops(qdq_model, 3).macs == count_flops(float_model, 3).macs == 3 * 4 * 6 * 6 * 27


def test_batched_matmul_broadcasts_leading_dims():
    model = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [_w("w", (8, 5))], ("N", 3, 8, 5))
    assert count_flops(model, batch=2).macs == 2 * 3 * 8 * 8 * 5


def test_unknown_shapes_are_an_error_not_zero(tmp_path):
    # The weight is a graph input of unknown shape: counting it as 0 would make every GFLOP/s wrong.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x, w], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(FlopCountError, match="bad.onnx.*Conv"):
        count_flops(path)


def test_unreadable_file_names_it(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_text("not a model")
    with pytest.raises(FlopCountError, match="junk.onnx"):
        count_flops(path)


def test_batch_must_be_positive():
    with pytest.raises(ValueError, match="batch"):
        count_flops(_graph([], [], ("N", 3, 8, 8)), batch=0)


# ---------------------------------------------------------------- machine and peaks

CPUINFO_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz\t\t: 2600.000
flags\t\t: fpu avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16

processor\t: 1
vendor_id\t: GenuineIntel
"""


def test_read_cpuinfo_first_block_and_flags():
    info = read_cpuinfo(CPUINFO_SPR)
    assert info["model name"].startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert "amx_int8" in info["flags"] and info["processor"] == "0"


def test_describe_and_peak_for_sapphire_rapids():
    desc = describe_machine(read_cpuinfo(CPUINFO_SPR), cores=2, with_gpu=False)
    assert desc["unit_class"] == "amx" and desc["isa"]["amx_int8"] and not desc["isa"]["avx512_fp16"]
    assert desc["nominal_ghz"] == 2.6
    # The figure: 2 cores x 2.6 GHz x 2048 int8 ops/cycle ~ 10.6 TOPS.
    assert table_peak(desc, "int8").ops_per_s == pytest.approx(2 * 2.6e9 * 2048)
    assert table_peak(desc, "bf16").ops_per_s == pytest.approx(2 * 2.6e9 * 1024)
    assert table_peak(desc, "fp32").ops_per_s == pytest.approx(2 * 2.6e9 * 64)
    assert table_peak(desc, "int8", ghz=3.5).ops_per_s == pytest.approx(2 * 3.5e9 * 2048)
    assert machine_name(desc) == "intel-xeon-platinum-8481c-amx-2c"


@pytest.mark.parametrize("vendor,family,flags,expected", [
    ("AuthenticAMD", 0x1A, {"avx2", "fma", "avx512f", "avx512_vnni"}, "avx512-2fma"),  # Zen 5
    ("AuthenticAMD", 0x19, {"avx2", "fma", "avx512f", "avx512_vnni"}, "avx512-256bit"),  # Zen 4
    ("GenuineIntel", 6, {"avx2", "fma", "avx_vnni"}, "avx2-vnni"),
    ("GenuineIntel", 6, {"avx2", "fma"}, "avx2-fma"),
    ("", None, {"asimd", "asimddp"}, None),  # ARM: not in the table
])
def test_unit_class(vendor, family, flags, expected):
    assert unit_class(vendor, family, flags) == expected


def test_unknown_cpu_has_no_table_peak():
    desc = describe_machine({"flags": ["asimd"], "model name": "Cortex-A78AE"}, cores=8, with_gpu=False)
    assert desc["unit_class"] is None and table_peak(desc, "int8") is None
    assert machine_name(desc) == "cortex-a78ae-8c"


def test_peak_table_orders_precisions():
    for row in PEAK_TABLE.values():
        assert row["int8"] >= row["bf16"] >= row["fp32"] > 0


def test_compute_precision_maps_cpu_fp16_to_fp32():
    assert compute_precision("onnxruntime", "fp16") == "fp32"
    assert compute_precision("openvino", "bf16") == "bf16"
    assert compute_precision("tensorrt", "fp16") == "fp16"


# ---------------------------------------------------------------- statistics and report

def test_summarise_medians_over_rounds():
    s = rep.summarise(4, [[10.0, 20.0, 30.0], [10.0, 10.0, 10.0]], flops_per_image=1e9, peak_ops_per_s=1e12)
    # round throughputs: 4 / 20 ms = 200, 4 / 10 ms = 400 -> median 300 img/s
    assert s["throughput_per_round"] == [200.0, 400.0] and s["throughput_img_s"] == 300.0
    assert s["latency_ms"]["min"] == 10.0 and s["latency_ms"]["max"] == 30.0
    assert s["latency_ms"]["median"] == 10.0 and s["latency_ms"]["mean"] == pytest.approx(90 / 6)
    assert s["gflop_s"] == pytest.approx(300.0) and s["percent_of_peak"] == pytest.approx(30.0)
    assert s["timed_calls"] == 6 and s["throughput_best_img_s"] == 400.0


def test_latency_percentiles():
    st = rep.latency_stats(np.arange(1, 101, dtype=float))
    assert st["p90"] == pytest.approx(90.1) and st["p99"] == pytest.approx(99.01) and st["median"] == 50.5
    with pytest.raises(ValueError):
        rep.latency_stats([])


def _results():
    def res(backend, precision, tput):
        return {"backend": backend, "precision": precision, "cuda_graphs": False,
                "peak": {"precision": "int8", "gops_per_s": 1000.0},
                "kernels": {"brgconv_avx512_I8": 33} if backend == "openvino" else None,
                "batches": [{"batch": 8, "throughput_img_s": tput, "throughput_best_img_s": 2 * tput,
                             "gflop_s": 10.0, "percent_of_peak": 1.0,
                             "latency_ms": dict(min=1.0, median=2.0, mean=2.5, p90=3.0, p99=4.0, max=5.0)}]}
    return {"torch:fp32": res("torch", "fp32", 100.0), "openvino:int8": res("openvino", "int8", 850.0)}


def test_ratios_and_markdown_table():
    results = _results()
    rep.add_ratios(results, "torch:fp32")
    assert results["openvino:int8"]["batches"][0]["ratio_to_baseline"] == pytest.approx(8.5)
    assert results["openvino:int8"]["batches"][0]["best_ratio_to_baseline"] == pytest.approx(8.5)
    table = rep.markdown_table(results, "torch:fp32")
    lines = table.splitlines()
    assert lines[0].startswith("| backend | precision | batch | img/s | best img/s | p50 ms")
    assert "| x torch:fp32 | x torch:fp32 (best) |" in lines[0]
    assert len(lines) == 4
    assert "| openvino | int8 | 8 | 850.0 | 1,700.0 | 2.00 | 3.00 | 4.00 |" in table
    assert table.rstrip().endswith("| 8.50 | 8.50 |")
    assert "brgconv_avx512_I8 x33" in rep.kernels_section(results)
    assert rep.gpu_split_table(results) == ""


def test_gpu_split_table_when_present():
    results = _results()
    results["torch:fp32"]["batches"][0]["gpu_split_ms"] = {"h2d": 0.1, "compute": 1.5, "d2h": 0.02}
    assert "| torch | fp32 | off | 8 | 0.100 | 1.500 | 0.020 |" in rep.gpu_split_table(results)


# ---------------------------------------------------------------- arguments

def test_parse_backends():
    assert parse_backends("onnxruntime:fp32, openvino:int8") == [Spec("onnxruntime", "fp32"), Spec("openvino", "int8")]
    for bad, match in [("onnxruntime", "backend:precision"), ("onnx:fp32", "unknown backend"),
                       ("openvino:int4", "unknown precision"), ("torch:fp32,torch:fp32", "twice"), ("", "no backend")]:
        with pytest.raises(UsageError, match=match):
            parse_backends(bad)


def test_parse_batch_sizes():
    assert parse_batch_sizes("1,8,32") == [1, 8, 32]
    for bad in ("0,8", "a", "", "8,8"):
        with pytest.raises(UsageError):
            parse_batch_sizes(bad)


def test_help_explains_every_flag():
    text = build_parser().format_help()
    for flag in ("--model", "--backends", "--baseline", "--batch-sizes", "--warmup", "--iterations", "--duration",
                 "--rounds", "--threads", "--device", "--cuda-graphs", "--peak", "--cpu-ghz", "--no-kernels", "--out",
                 "--name", "--timeout"):
        assert flag in text


@pytest.mark.parametrize("argv,match", [
    (["--rounds", "0"], "--rounds"),
    (["--warmup", "-1"], "--warmup"),
    (["--duration", "0"], "--duration"),
    (["--backends", "torch:fp32", "--baseline", "openvino:int8"], "--baseline"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--batch-sizes", "1,x"], "--batch-sizes"),
    (["--name", "../x"], "--name"),
    (["--cpu-ghz", "0"], "--cpu-ghz"),
])
def test_bad_arguments_are_one_line_errors(argv, match, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and err.startswith("python -m bench: error:")
    assert not (tmp_path / "out").exists()  # nothing written


def test_iterations_and_duration_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["--iterations", "5", "--duration", "1"])
    assert "not allowed with" in capsys.readouterr().err


def test_missing_precision_file_is_named(tmp_path, capsys):
    from tiny_model import copy_model

    model = copy_model(tmp_path / "m")  # model.json + fp32 only
    assert main(["--model", str(model), "--backends", "onnxruntime:int8", "--out", str(tmp_path / "out")]) == 2
    assert "no int8 ONNX file" in capsys.readouterr().err


# ---------------------------------------------------------------- worker timing loop

def test_time_calls_counts_warmup_and_iterations():
    calls = []
    lat, extra = time_calls(lambda: calls.append(1), warmup=2, iterations=5, duration=None, after=lambda: "x")
    assert len(calls) == 7 and len(lat) == 5 and extra == ["x"] * 5 and all(v >= 0 for v in lat)


def test_time_calls_duration_has_a_minimum_of_calls():
    lat, _ = time_calls(lambda: None, warmup=0, iterations=None, duration=1e-9, min_iterations=3)
    assert len(lat) == 3


# ---------------------------------------------------------------- end to end

def test_end_to_end_writes_json_and_markdown(tmp_path, capsys):
    from tiny_model import tiny_model_folder

    out = tmp_path / "results"
    rc = main(["--model", str(tiny_model_folder()), "--backends", "onnxruntime:fp32,onnxruntime:int8",
               "--baseline", "onnxruntime:fp32", "--batch-sizes", "1,2", "--iterations", "2", "--warmup", "1",
               "--rounds", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    name = machine_name(describe_machine(with_gpu=False))
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"onnxruntime-fp32-{name}.json", f"onnxruntime-int8-{name}.json", f"report-{name}.md"])
    data = json.loads((out / f"onnxruntime-int8-{name}.json").read_text())
    res = data["result"]
    assert data["baseline"] == "onnxruntime:fp32" and data["settings"]["rounds"] == 2
    assert [b["batch"] for b in res["batches"]] == [1, 2]
    assert all(b["timed_calls"] == 4 and b["throughput_img_s"] > 0 for b in res["batches"])
    assert res["gflops_per_image"] > 0 and res["describe"]["backend"] == "onnxruntime"
    assert res["kernels"] and any(k.startswith("QuantizeLinear") or "Conv" in k for k in res["kernels"])
    assert data["loadavg_before"] is not None and data["machine"]["cores"] >= 1
    fp32 = json.loads((out / f"onnxruntime-fp32-{name}.json").read_text())["result"]
    assert all(b["ratio_to_baseline"] == 1.0 == b["best_ratio_to_baseline"] for b in fp32["batches"])
    md = (out / f"report-{name}.md").read_text()
    assert "| onnxruntime | int8 | 2 |" in md and md in capsys.readouterr().out
    assert "Model: resnet18 at 32x32, 16-d embeddings." in md and data["model_config"]["arch"] == "resnet18"


def test_model_line_shows_conversion_gates():
    line = rep.model_line({"model_config": {"arch": "resnet34", "input_size": 112, "embedding_dim": 512},
                           "model_gates": {"int8": {"gate": "pass", "cos_min": 0.99832}}})
    assert line == ("Model: resnet34 at 112x112, 512-d embeddings; conversion gates: "
                    "int8 pass (min cosine to PyTorch 0.9983).")


def test_startup_baseline_runs_the_other_checkouts_code(tmp_path, capsys):
    """--baseline DIR times DIR's engine.verify, not this installed one; a folder that is no checkout is refused."""
    from bench import startup

    old = tmp_path / "old"
    (old / "engine").mkdir(parents=True)
    (old / "engine" / "__init__.py").write_text("")
    (old / "engine" / "verify.py").write_text(
        "import os, sys\nopen(os.path.join(os.environ['FAKEAWARE_CACHE_DIR'] + '.ran'), 'w').write(repr(sys.argv))\n")
    cache = str(tmp_path / "c")
    assert startup.one_call("a.jpg", "b.jpg", cache, [], str(old)) > 0
    assert "a.jpg" in (tmp_path / "c.ran").read_text()
    with pytest.raises(SystemExit) as e:
        startup.main(["a.jpg", "b.jpg", "--baseline", str(tmp_path)])
    assert e.value.code == 2 and "not a checkout of this repository" in capsys.readouterr().err


def test_frame_photo_pastes_the_photo_unchanged_inside_the_frame():
    from bench.framing import frame_photo

    photo = np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    frame = frame_photo(photo, 1600, 1200, np.random.default_rng(1))
    assert frame.shape == (1200, 1600, 3)
    import cv2

    diff = cv2.matchTemplate(frame, photo, cv2.TM_SQDIFF)
    assert diff.min() == 0 and (diff == 0).sum() == 1  # the photo, pixel for pixel, in one place


def test_framing_bench_on_a_few_lfw_pairs(face_data, tmp_path, capsys):
    from bench.framing import main

    out = tmp_path / "rows.json"
    assert main(["--lfw", str(face_data / "lfw-deepfunneled"), "--lfw-pairs", str(face_data / "lfw-pairs.txt"),
                 "--limit", "4", "--frames", "1600x1200", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["frame"] for r in rows] == ["as it is", "1600x1200"]
    assert all(r["framed"] == 4 and r["same"] == 2 and r["different"] == 2 for r in rows)
    assert rows[1]["framed_found"] == 4  # the whole frame at 192 px shows the face too small; tiles find it
    assert "second photo's face found 4/4" in capsys.readouterr().out


def test_framing_bench_refuses_a_bad_frame_size(capsys):
    from bench.framing import main

    with pytest.raises(SystemExit) as exc:
        main(["--lfw", "x", "--lfw-pairs", "y", "--frames", "100x100"])
    assert exc.value.code == 2 and "--frames" in capsys.readouterr().err


def test_upright_bench_counts_each_rule_on_a_few_lfw_photos(face_data, tmp_path, capsys):
    from bench.upright import main

    out = tmp_path / "rows.json"
    assert main(["--lfw", str(face_data / "lfw-deepfunneled"), "--count", "6", "--turned", "6",
                 "--json", str(out)]) == 0
    rows = {r["turn"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["upright", "90 clockwise", "90 anticlockwise", "180"]
    assert rows["upright"]["detections"] == 6 and rows["upright"]["refused"] == 0
    for r in rows.values():  # the runtime's check refuses at least what either rule alone does
        assert max(r["refused_eye_line"], r["refused_tilt"]) <= r["refused"] <= r["detections"] <= r["photos"]
    assert rows["90 clockwise"]["refused"] >= 1 and "largest tilt" in capsys.readouterr().out


# ---------------------------------------------------------------- hostile-input sweep

@pytest.mark.slow
def test_hostile_sweep_judges_cases_and_finds_no_failures(tmp_path, capsys):
    """A slice of `python -m bench.hostile` (docs/reliability.md): escaped names and the controls, Python runner."""
    pytest.importorskip("openvino")
    from bench.hostile import main as hostile

    rows_file = tmp_path / "rows.json"
    assert hostile(["--only", "escapes", "--json", str(rows_file)]) == 0
    rows = json.loads(rows_file.read_text())
    assert len(rows) == 3 and all(r["as_expected"] and r["outcome"] == "refused" for r in rows)
    assert all(not (r["traceback"] or r["data_loss"] or r["link_write"] or r["wrong_decision"]) for r in rows)
    assert "| 8 escapes in names | 3 | 3 | 0 | 0 | 0 | 0 | 0 |" in capsys.readouterr().out


def test_hostile_sweep_refuses_a_runner_that_is_not_executable(tmp_path, capsys):
    from bench.hostile import main as hostile

    assert hostile(["--cpp", str(tmp_path / "missing")]) == 2
    assert "not an executable C++ runner" in capsys.readouterr().err
