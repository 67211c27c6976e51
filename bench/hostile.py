"""``python -m bench.hostile``: hostile and careless inputs against every entry point, and what each one did.

Each case builds its own inputs in a scratch folder (nothing is committed),
runs one command (the Python CLI, ``engine.datasets``, ``engine.submission``,
``training.prepare``, ``convert``, or the C++ runner when built) in a child
process, and judges what happened against the product's rules:

* **wrong decision**: a case that must be refused ended with exit 0 or 1 (a
  verdict), or printed one;
* **traceback**: a Python traceback on stderr instead of one line;
* **data loss**: a file the case protects (its inputs, a bystander) changed
  or vanished;
* **write through a link**: the target of a planted symlink changed;
* **resources**: over 30 s wall time or 1 GiB peak memory (the child's
  VmHWM, polled every 10 ms).

A refusal is exit 2 with one ``error:`` line. The table it prints (``--markdown``)
is docs/reliability.md's::

    python -m bench.hostile --cpp build/pytest-cpp/faceverify --json bench/results/hostile.json \\
        --markdown bench/results/hostile.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MAX_SECONDS, MAX_BYTES = 30.0, 1 << 30


@dataclass
class Case:
    klass: str            # the class: "1 tampered model", "3 not a face", ...
    name: str
    argv: list[str]
    expect: str = "refused"  # "refused" | "decided"
    protect: list[Path] = field(default_factory=list)  # must be byte-identical afterwards
    links: list[Path] = field(default_factory=list)    # symlink targets that must not change
    stdout_to: str | None = None  # "full" (/dev/full) or "closed"


def digest(path: Path) -> str | None:
    """What a protected path holds: its file's SHA-256, "dir", or None when it is gone."""
    from engine.integrity import sha256_file

    try:
        return sha256_file(path) if path.is_file() else ("dir" if path.is_dir() else None)
    except OSError:
        return None


def _hwm(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, bytes); 0 once it is gone.

    Read from /proc while it runs: the rusage of a child forked from a large
    process (pytest) counts the parent's pages from before the exec.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_case(case: Case, cwd: Path) -> dict:
    """Run one case in a child process (output to files), polling its peak memory until it exits."""
    before = {p: digest(p) for p in case.protect + case.links}
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKEAWARE_CACHE_DIR": str(cwd / ".cache")}
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        stdout = open("/dev/full", "wb") if case.stdout_to == "full" else out_f  # noqa: SIM115
        start = time.perf_counter()
        proc = subprocess.Popen(case.argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err_f,
                                preexec_fn=(lambda: os.close(1)) if case.stdout_to == "closed" else None)
        status, peak = 0, 0
        while True:
            peak = max(peak, _hwm(proc.pid))
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > 120:
                proc.kill()
                _, status, _ = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if stdout is not out_f:
            stdout.close()
        out_f.seek(0)
        err_f.seek(0)
        out_text = out_f.read().decode("utf-8", "replace")
        err_text = err_f.read().decode("utf-8", "replace")
    rss = peak or None
    errors = [line for line in err_text.splitlines() if "error:" in line]
    rc = proc.returncode
    outcome = "refused" if rc == 2 and len(errors) == 1 else ("decided" if rc in (0, 1) else f"exit {rc}")
    after = {p: digest(p) for p in case.protect + case.links}
    row = {"class": case.klass, "case": case.name, "command": " ".join([Path(case.argv[0]).name, *case.argv[1:4]]),
           "expect": case.expect, "outcome": outcome, "exit": rc, "seconds": round(seconds, 2),
           "peak_mb": round(rss / 2**20, 1) if rss else None,
           "error": errors[0][-200:] if errors else "",
           "traceback": "Traceback (most recent call last)" in err_text,
           "data_loss": [str(p.name) for p in case.protect if before[p] != after[p]],
           "link_write": [str(p.name) for p in case.links if before[p] != after[p]]}
    verdict = any(v in out_text.replace(" ", "") for v in ('"match":true', '"match":false', "sameperson"))
    row["wrong_decision"] = case.expect == "refused" and (outcome == "decided" or verdict)
    row["as_expected"] = outcome == case.expect
    row["over_budget"] = seconds > MAX_SECONDS or (rss or 0) > MAX_BYTES
    return row


# ------------------------------------------------------------------ inputs

def face_photo(path: Path, seed: int = 0) -> Path:
    """A real photo from FACE_DATA when present (LFW), else a drawn face; written fresh for each case."""
    root = Path(os.environ.get("FACE_DATA", REPO.parent / "shared" / "data")) / "lfw-deepfunneled"
    photos = sorted(root.glob("George_W_Bush/*.jpg"))
    if photos:
        shutil.copy(photos[seed % len(photos)], path)
    else:
        from engine.canary import canary_images

        cv2.imwrite(str(path), cv2.cvtColor(canary_images(250, 1, seed)[0], cv2.COLOR_RGB2BGR))
    return path


def write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def png_header(width: int, height: int, depth: int = 8) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def tiff_float64(width: int, height: int) -> bytes:
    """A little-endian TIFF header for width x height x 3 float64 (strip data absent): 2.6 GB if decoded."""
    import struct

    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 64), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, width * height * 24),
               (339, 3, 1, 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + ifd


TAMPERS = ("byte-flipped", "unrecorded-file", "canaries-negated", "conv-zeroed-digest-updated",
           "canaries-of-another-generator", "canaries-malformed")


def tampered_model(dst: Path, kind: str) -> Path:
    """A copy of the bundled model folder changed as an attacker or an accident would (``TAMPERS``).

    Every kind must be refused before any decision, by the Python runtime and the C++ runner alike.
    """
    from engine.integrity import sha256_file

    shutil.copytree(REPO / "engine" / "models", dst, ignore=shutil.ignore_patterns("detector", "*.md", "*.csv"))
    onnx_file, config_file = dst / "model.fp16.onnx", dst / "model.json"
    config = json.loads(config_file.read_text())
    canary = config["extra"]["canary"]
    if kind == "byte-flipped":  # same size, mtime put back: only the content says it changed
        st = onnx_file.stat()
        data = bytearray(onnx_file.read_bytes())
        data[len(data) // 2] ^= 0x5A
        onnx_file.write_bytes(bytes(data))
        os.utime(onnx_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif kind == "unrecorded-file":  # a file convert did not write, chosen before the recorded one
        shutil.copy(onnx_file, dst / "model.fp32.onnx")
    elif kind == "canaries-negated":
        canary["fp32"] = [[-v for v in row] for row in canary["fp32"]]
    elif kind == "conv-zeroed-digest-updated":  # the digest cannot tell; the canaries must
        import onnx
        from onnx import numpy_helper

        model = onnx.load(onnx_file)
        weights = {i.name: i for i in model.graph.initializer}
        producer = {out: node for node in model.graph.node for out in node.output}
        conv = [n for n in model.graph.node if n.op_type == "Conv"][5]
        name = conv.input[1]
        while name not in weights and name in producer:  # through the FP16 -> FP32 Cast
            name = producer[name].input[0]
        array = numpy_helper.to_array(weights[name])
        weights[name].CopyFrom(numpy_helper.from_array(np.zeros_like(array), name))
        onnx.save(model, onnx_file)
        config["extra"]["onnx_sha256"]["fp16"] = sha256_file(onnx_file)
    elif kind == "canaries-of-another-generator":
        canary.pop("generator")
    elif kind == "canaries-malformed":
        canary["count"] = canary["count"] + 1
    else:
        raise ValueError(kind)
    config_file.write_text(json.dumps(config))
    return dst


def cases(work: Path, cpp: Path | None) -> list[Case]:
    py = [sys.executable, "-m", "engine.verify"]
    runners = [("python", py)] + ([("c++", [str(cpp)])] if cpp else [])
    a = face_photo(work / "a.jpg", 0)
    b = face_photo(work / "b.jpg", 1)
    out: list[Case] = []

    # Class 3: not faces, with detection and with --align none
    from bench.face_gate import KINDS, non_face

    for kind in KINDS:
        for seed in (1, 2):
            img = write_png(work / f"{kind.replace(' ', '_')}-{seed}.png", non_face(kind, 4242 + seed))
            for who, cmd in runners:
                out.append(Case("3 not a face", f"{kind} {seed} vs a face ({who})", cmd + [str(img), str(a)]))
            out.append(Case("3 not a face", f"{kind} {seed}, --align none (python)",
                            py + ["--align", "none", str(img), str(img)]))

    # Class 6/9: files that are not images, or are images too big to decode
    bad = {"empty file": b"", "text": b"hello, not an image\n", "truncated jpeg": a.read_bytes()[:2000],
           "png 100k x 100k header": png_header(100000, 100000),
           "16-bit png 20k x 20k header": png_header(20000, 20000, 16),
           "float64 tiff 7000x7000": tiff_float64(7000, 7000), "html": b"<html><body>photo</body></html>",
           "gzip": b"\x1f\x8b\x08\x00" + bytes(100), "random bytes": np.random.default_rng(0).bytes(5000)}
    for name, data in bad.items():
        path = work / f"bad-{name.replace(' ', '_')}.jpg"
        path.write_bytes(data)
        for who, cmd in runners:
            out.append(Case("6/9 not an image", f"{name} ({who})", cmd + [str(path), str(a)], protect=[path]))
    specials = {"a directory": work, "/dev/zero": Path("/dev/zero"), "/dev/null": Path("/dev/null"),
                "missing file": work / "nope.jpg", "empty path": Path("")}
    fifo = work / "fifo.jpg"
    os.mkfifo(fifo)
    specials["a FIFO"] = fifo
    loop = work / "loop.jpg"
    os.symlink(loop, loop)
    specials["a symlink loop"] = loop
    broken = work / "broken.jpg"
    os.symlink(work / "gone.jpg", broken)
    specials["a broken symlink"] = broken
    for name, path in specials.items():
        for who, cmd in runners:
            arg = "" if name == "empty path" else str(path)
            out.append(Case("6/9 not an image", f"{name} ({who})", cmd + [arg, str(a)]))

    # Class 8: names that try to repaint the terminal
    for name in ("\x1b[2J\x1b[31m OK same person \x1b[0m.jpg", "a\u202egpj.exe", "new\nline.jpg"):
        path = work / name
        path.write_bytes(b"not an image")
        for who, cmd in runners:
            out.append(Case("8 escapes in names", f"{name!r} ({who})", cmd + [str(path), str(a)]))

    # Class 1/2: tampered or contradictory model folders
    for kind in TAMPERS:
        folder = tampered_model(work / f"model-{kind}", kind)
        for who, cmd in runners:
            out.append(Case("1 tampered model", f"{kind} ({who})", cmd + ["--model", str(folder), str(a), str(b)]))
    for name, change in (("template of one point", {"template": [[50, 50]] * 4}),
                         ("collinear template", {"template": [[30, 50], [50, 50], [70, 50], [90, 50]]}),
                         ("threshold 2", {"threshold": 2.0}), ("NaN threshold", {"threshold": "NaN"}),
                         ("input size 0", {"input_size": 0}), ("unknown key", {"surprise": 1}),
                         ("detector path", {"detector": "../../etc/passwd"}), ("margin 100", {"margin": 100})):
        folder = work / f"model-{name.replace(' ', '_')}"
        shutil.copytree(REPO / "engine" / "models", folder, ignore=shutil.ignore_patterns("detector", "*.md", "*.csv"))
        config = json.loads((folder / "model.json").read_text())
        config.update(change)
        text = json.dumps(config).replace('"NaN"', "NaN")
        (folder / "model.json").write_text(text)
        for who, cmd in runners:
            out.append(Case("2 contract values", f"{name} ({who})", cmd + ["--model", str(folder), str(a), str(b)]))
    garbage = work / "model-garbage"
    garbage.mkdir()
    (garbage / "model.json").write_text("{not json")
    for who, cmd in runners:
        out.append(Case("2 contract values", f"model.json not JSON ({who})",
                        cmd + ["--model", str(garbage), str(a), str(b)]))

    # Class 4/5/7: outputs: never over an input, never through a link, failures are exit 2
    pairs = work / "pairs"
    for pid in ("00000001", "00000002"):
        (pairs / "images" / pid).mkdir(parents=True)
        shutil.copy(a, pairs / "images" / pid / "0.jpg")
        shutil.copy(b, pairs / "images" / pid / "1.jpg")
    image0 = pairs / "images" / "00000001" / "0.jpg"
    bystander = work / "bystander.txt"
    bystander.write_text("the user's file\n")
    link = work / "link.csv"
    os.symlink(bystander, link)
    out += [
        Case("4/5 outputs", "--out is an input image (python)", py + ["--pairs", str(pairs), "--out", str(image0)],
             protect=[image0]),
        # written beside and renamed over: the link itself is replaced, its target never written
        Case("4/5 outputs", "--out over a planted symlink (python)", py + ["--pairs", str(pairs), "--out", str(link)],
             expect="decided", links=[bystander]),
        Case("4/5 outputs", "--out into a missing folder (python)",
             py + ["--pairs", str(pairs), "--out", str(work / "no" / "such" / "sub.csv")]),
        Case("4/5 outputs", "--report into the pairs folder (python)",
             py + ["--pairs", str(pairs), "--labels", str(work / "nolabels.csv"), "--report", str(pairs)],
             protect=[image0]),
        Case("7 output failures", "result to /dev/full (python)", py + [str(a), str(b)], stdout_to="full"),
        Case("7 output failures", "stdout closed (python)", py + [str(a), str(b)], stdout_to="closed"),
        Case("7 output failures", "--json to /dev/full (python)", py + ["--json", str(a), str(b)], stdout_to="full"),
    ]
    if cpp:
        link2 = work / "link2.txt"
        os.symlink(bystander, link2)
        out += [
            Case("4/5 outputs", "--dump-embeddings over an input image (c++)",
                 [str(cpp), "--dump-embeddings", str(a), str(a), str(b)], protect=[a]),
            # the C++ runner refuses a link outright (Python's --out replaces the link itself): neither writes through
            Case("4/5 outputs", "--dump-embeddings over a planted symlink (c++)",
                 [str(cpp), "--dump-embeddings", str(link2), str(a), str(b)], links=[bystander]),
            Case("4/5 outputs", "--dump-crops into a file (c++)",
                 [str(cpp), "--embed", str(a), "--dump-crops", str(bystander)], protect=[bystander]),
            Case("7 output failures", "result to /dev/full (c++)", [str(cpp), str(a), str(b)], stdout_to="full"),
            Case("7 output failures", "stdout closed (c++)", [str(cpp), str(a), str(b)], stdout_to="closed"),
        ]
    data = work / "kryptonite"
    (data / "train").mkdir(parents=True)
    (data / "train" / "meta.json").write_text("{}")
    (data / "val.csv").write_text("label,path,split,is_query,is_gallery\n")
    (data / "notes.txt").write_text("the user's notes\n")
    keep = [data / "train" / "meta.json", data / "val.csv", data / "notes.txt"]
    ds = [sys.executable, "-m", "engine.datasets", "kryptonite-val", str(data / "val.csv"), "--root", str(data)]
    out += [Case("4/5 outputs", "datasets --out DATA --force", ds + ["--out", str(data), "--force"], protect=keep),
            Case("4/5 outputs", "datasets --out DATA/train --force", ds + ["--out", str(data / "train"), "--force"],
                 protect=keep),
            Case("4/5 outputs", "datasets --out parent --force", ds + ["--out", str(work), "--force"], protect=keep)]
    lfw_like = work / "people"
    (lfw_like / "Someone").mkdir(parents=True)
    shutil.copy(a, lfw_like / "Someone" / "Someone_0001.jpg")
    prep = [sys.executable, "-m", "training.prepare", "--source", str(lfw_like)]
    out += [Case("4/5 outputs", "prepare --out SOURCE --force", prep + ["--out", str(lfw_like), "--force"],
                 protect=[lfw_like / "Someone" / "Someone_0001.jpg"]),
            Case("4/5 outputs", "prepare --out a user folder --force", prep + ["--out", str(data), "--force"],
                 protect=keep)]
    conv = [sys.executable, "-m", "convert", "--checkpoint", str(work / "norun")]
    out += [Case("4/5 outputs", "convert --out DATA --force", conv + ["--out", str(data), "--force"], protect=keep)]

    # Class 6: counts a user can type, files that never end
    for flag, value in (("--workers", "1000000000"), ("--bootstrap", "1000000000"), ("--batch-size", "0"),
                        ("--batch-size", "-1"), ("--batch-size", "1000000000"), ("--workers", "-3"),
                        ("--threshold", "nan"), ("--threshold", "5")):
        out.append(Case("6 resources", f"{flag} {value} (python)", py + [flag, value, str(a), str(b)]))
    if cpp:
        for value in ("5", "nan", "-2"):
            out.append(Case("6 resources", f"--threshold {value} (c++)",
                            [str(cpp), "--threshold", value, str(a), str(b)]))
    labels = work / "labels.csv"
    labels.write_text("pair_id,label\n00000001,1\n")
    sub = [sys.executable, "-m", "engine.submission", "--labels", str(labels), "--submission"]
    out += [Case("6 resources", "submission from /dev/zero", sub + ["/dev/zero"]),
            Case("6 resources", "submission from a FIFO", sub + [str(fifo)]),
            Case("6 resources", "submission of binary junk", sub + [str(work / "bad-random_bytes.jpg")])]
    huge_line = work / "huge.csv"
    huge_line.write_bytes(b"pair_id,similarity\n" + b"9" * 50_000_000 + b",0.5\n")
    out.append(Case("6 resources", "submission with a 50 MB line", sub + [str(huge_line)]))

    # Controls: what must still work (a refusal here would be a false alarm)
    for who, cmd in runners:
        out.append(Case("controls", f"same person ({who})", cmd + [str(a), str(b)], expect="decided"))
    return out


# ------------------------------------------------------------------ the server

def _tree_hwm(pid: int) -> int:
    """Peak resident memory of a process and its descendants (engine.serve, tritonserver, the Python stub)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _hwm(p)
        try:
            for child in Path(f"/proc/{p}/task/{p}/children").read_text().split():
                todo.append(int(child))
        except OSError:
            pass
    return total


def server_rows(work: Path, serve_python: Path) -> list[dict]:
    """Start ``python -m engine.serve`` under ``serve_python`` and send it hostile requests; one row each."""
    import urllib.error
    import urllib.request

    from bench.face_gate import non_face
    from engine.client import FaceClient, ServeError
    from engine.serve import free_port

    a, b = face_photo(work / "sa.jpg", 0), face_photo(work / "sb.jpg", 1)
    ports = [free_port() for _ in range(3)]
    argv = [str(serve_python), "-m", "engine.serve", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
            "--metrics-port", str(ports[2]), "--max-image-bytes", "2000000", "--max-request-bytes", "4000000"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "FAKEAWARE_CACHE_DIR": str(work / ".cache")})
    url = f"127.0.0.1:{ports[0]}"
    noise = cv2.imencode(".png", non_face("gaussian noise", 4243))[1].tobytes()
    bomb = tiff_float64(7000, 7000)
    infer = f"http://{url}/v2/models/verify/infer"
    raw = {"body not JSON": (b"{not json", {}), "inputs not a list": (b'{"inputs": 5}', {}),
           "body over the limit": (b"x" * 5_000_000, {}),
           "JSON header not JSON": (b"{no" + b"\0" * 8, {"Inference-Header-Content-Length": "3"})}
    calls = {"noise vs a face": lambda c: c.verify(noise, a), "float64 TIFF bomb": lambda c: c.verify(bomb, a),
             "text vs a face": lambda c: c.verify(b"not an image", a), "empty image": lambda c: c.verify(b"", a),
             "image over --max-image-bytes": lambda c: c.verify(b"\xff\xd8\xff" + bytes(2_100_000), a),
             "same person (control)": lambda c: c.verify(a, b)}
    rows = []
    try:
        with FaceClient(url) as client:
            client.wait_ready(180, alive=lambda: proc.poll() is None)
            for name, (body, headers) in raw.items():
                start = time.perf_counter()
                try:
                    request = urllib.request.Request(infer, data=body, headers=headers)
                    with urllib.request.urlopen(request, timeout=60) as r:
                        outcome = f"HTTP {r.status}"
                except urllib.error.HTTPError as exc:
                    outcome = "refused" if 400 <= exc.code < 500 else f"HTTP {exc.code}"
                rows.append(_server_row(name, "refused", outcome, time.perf_counter() - start))
            for name, call in calls.items():
                start = time.perf_counter()
                try:
                    call(client)
                    outcome = "decided"
                except ServeError:
                    outcome = "refused"
                expect = "decided" if "control" in name else "refused"
                rows.append(_server_row(name, expect, outcome, time.perf_counter() - start))
        peak = _tree_hwm(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    for row in rows:
        row["peak_mb"] = round(peak / 2**20, 1)
        row["over_budget"] = row["seconds"] > MAX_SECONDS or peak > MAX_BYTES
    return rows


def _server_row(name: str, expect: str, outcome: str, seconds: float) -> dict:
    return {"class": "9 server", "case": f"{name} (server)", "command": "engine.serve", "expect": expect,
            "outcome": outcome, "exit": None, "seconds": round(seconds, 2), "peak_mb": None, "error": "",
            "traceback": False, "data_loss": [], "link_write": [],
            "wrong_decision": expect == "refused" and outcome == "decided",
            "as_expected": outcome == expect, "over_budget": False}


def markdown(rows: list[dict]) -> str:
    classes: dict[str, list[dict]] = {}
    for r in rows:
        classes.setdefault(r["class"], []).append(r)
    lines = ["| class | cases | as expected | wrong decisions | tracebacks | data loss | writes through links | "
             "over 30 s / 1 GiB | slowest (s) | peak (MB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for klass, group in classes.items():
        peak = max((r["peak_mb"] or 0) for r in group)
        lines.append(f"| {klass} | {len(group)} | {sum(r['as_expected'] for r in group)} | "
                     f"{sum(r['wrong_decision'] for r in group)} | {sum(r['traceback'] for r in group)} | "
                     f"{sum(bool(r['data_loss']) for r in group)} | {sum(bool(r['link_write']) for r in group)} | "
                     f"{sum(r['over_budget'] for r in group)} | {max(r['seconds'] for r in group):.1f} | {peak:.0f} |")
    total = len(rows)
    lines.append(f"| **all** | {total} | {sum(r['as_expected'] for r in rows)} | "
                 f"{sum(r['wrong_decision'] for r in rows)} | {sum(r['traceback'] for r in rows)} | "
                 f"{sum(bool(r['data_loss']) for r in rows)} | {sum(bool(r['link_write']) for r in rows)} | "
                 f"{sum(r['over_budget'] for r in rows)} | {max(r['seconds'] for r in rows):.1f} | "
                 f"{max((r['peak_mb'] or 0) for r in rows):.0f} |")
    odd = [r for r in rows if not r["as_expected"]]
    if odd:
        lines += ["", "Not as expected:", ""]
        lines += [f"- {r['class']} / {r['case']}: {r['outcome']} (expected {r['expect']}) {r['error']}" for r in odd]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpp", type=Path, help="the C++ runner (build/.../faceverify) to include")
    p.add_argument("--serve-python", type=Path, help="an interpreter that can run `python -m engine.serve` (PyTriton "
                   "with NumPy 1): adds the server's cases")
    p.add_argument("--only", help="run only cases whose class or name contains this text")
    p.add_argument("--json", type=Path, help="write every row to this JSON file")
    p.add_argument("--markdown", type=Path, help="write the table to this file")
    args = p.parse_args(argv)
    args.cpp = args.cpp.resolve() if args.cpp else None
    if args.cpp is not None and not os.access(args.cpp, os.X_OK):
        print(f"python -m bench.hostile: error: {args.cpp}: not an executable C++ runner", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        todo = [c for c in cases(work, args.cpp) if not args.only or args.only in c.klass or args.only in c.name]
        rows = []
        for k, case in enumerate(todo, 1):
            rows.append(run_case(case, work))
            r = rows[-1]
            flag = "" if r["as_expected"] and not (r["traceback"] or r["data_loss"] or r["link_write"]
                                                   or r["over_budget"]) else "  <-- look"
            print(f"[{k}/{len(todo)}] {case.klass} / {case.name}: {r['outcome']} {r['seconds']} s{flag}",
                  file=sys.stderr)
        if args.serve_python is not None and (not args.only or args.only in "9 server"):
            rows += server_rows(work, args.serve_python)
    table = markdown(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    bad = sum(r["wrong_decision"] or r["traceback"] or bool(r["data_loss"]) or bool(r["link_write"])
              or r["over_budget"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
