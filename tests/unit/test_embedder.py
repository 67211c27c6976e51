"""The embedder: order under the thread pool, batching, per-image failures, strict mode, cache."""
from __future__ import annotations

import json
import os
import random
import time

import cv2
import numpy as np
import pytest

import engine.embedder as embedder_module
from conftest import synthetic_face, write_jpeg
from engine.backends import open_backend
from engine.embedder import Embedder
from engine.preprocess import ImageError, load_image
from tiny_model import TINY, tiny_model_folder

S, D = TINY["input_size"], TINY["embedding_dim"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    return [write_jpeg(root / f"{i:03d}.jpg", synthetic_face(i, size=48 + (i % 5) * 8)) for i in range(23)]


def backend(**kw):
    return open_backend(tiny_model_folder(), backend="onnxruntime", precision="fp32", **kw)


def one_at_a_time(paths):
    with backend() as be:
        return np.concatenate([be.embed(load_image(p, S)[None]) for p in paths])


@pytest.fixture(scope="module")
def reference(faces):
    return one_at_a_time(faces)


def test_order_is_kept_with_many_workers_and_scrambled_decode_times(faces, reference, monkeypatch):
    real = embedder_module.Preprocessor.load
    rng = random.Random(0)

    def slow_random(self, path, data=None):  # later images often finish first
        time.sleep(rng.uniform(0, 0.01))
        return real(self, path, data)

    monkeypatch.setattr(embedder_module.Preprocessor, "load", slow_random)
    with Embedder(backend(), workers=4, batch_size=4, prefetch=2, progress=False) as emb:
        res = emb.embed_paths(faces)
    assert res.ok.all() and res.failures == []
    np.testing.assert_allclose(res.embeddings, reference, rtol=0, atol=1e-6)
    assert res.n_embedded == len(faces)
    # Rows differ from each other: equality above could not come from a constant output.
    assert np.abs(res.embeddings[1:] - res.embeddings[:-1]).max() > 1e-3


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_any_batch_size_gives_the_same_rows(faces, reference, batch_size):
    with Embedder(backend(max_batch=4), batch_size=batch_size, workers=2, progress=False) as emb:
        res = emb.embed_paths(faces)
    np.testing.assert_allclose(res.embeddings, reference, rtol=0, atol=1e-6)


def test_results_are_not_views_of_reused_buffers(faces, reference):
    with Embedder(backend(), batch_size=3, prefetch=1, progress=False) as emb:
        first = emb.embed_paths(faces[:3])
        emb.embed_paths(faces[10:20])
    np.testing.assert_allclose(first.embeddings, reference[:3], rtol=0, atol=1e-6)


def test_repeated_paths_are_embedded_once(faces, reference):
    paths = [faces[0], faces[1], faces[0], faces[2], faces[1]]
    with Embedder(backend(), progress=False) as emb:
        res = emb.embed_paths(paths)
    assert res.n_embedded == 3
    np.testing.assert_allclose(res.embeddings, reference[[0, 1, 0, 2, 1]], rtol=0, atol=1e-6)


@pytest.fixture
def bad_images(tmp_path, faces):
    files = {}
    files["corrupt"] = tmp_path / "corrupt.jpg"  # a JPEG cut in half, as by an interrupted copy
    data = faces[0].read_bytes()
    files["corrupt"].write_bytes(data[:len(data) // 2])
    files["text"] = tmp_path / "notes.jpg"
    files["text"].write_text("hello, I am a text file")
    files["tiny"] = tmp_path / "tiny.png"
    cv2.imwrite(str(files["tiny"]), np.zeros((1, 1, 3), np.uint8))
    files["missing"] = tmp_path / "missing.jpg"
    files["folder"] = tmp_path / "a_folder.jpg"
    files["folder"].mkdir()
    return files


def test_unusable_images_are_reported_and_the_rest_embedded(faces, reference, bad_images, tmp_path):
    flat = tmp_path / "flat.png"  # one colour: a valid image, but nothing to verify in it
    cv2.imwrite(str(flat), np.full((60, 60, 3), 128, np.uint8))
    paths = [faces[0], bad_images["corrupt"], faces[1], bad_images["text"], bad_images["tiny"], flat,
             bad_images["missing"], bad_images["folder"], faces[2]]
    with Embedder(backend(), batch_size=4, progress=False) as emb:
        res = emb.embed_paths(paths)
    assert res.ok.tolist() == [True, False, True, False, False, False, False, False, True]
    np.testing.assert_allclose(res.embeddings[[0, 2, 8]], reference[:3], rtol=0, atol=1e-6)
    assert np.isnan(res.embeddings[~res.ok]).all()
    reasons = {f.path.name: f.reason for f in res.failures}
    assert reasons == {
        "corrupt.jpg": "truncated JPEG (no end-of-image marker)",
        "notes.jpg": "not a decodable image",
        "tiny.png": "image is 1x1, smaller than 8px on a side",
        "flat.png": "blank image (one colour throughout): no face to verify",
        "missing.jpg": "no such file",
        "a_folder.jpg": "is a directory, not an image",
    }
    assert str(res.failures[0]) == f"{bad_images['corrupt']}: truncated JPEG (no end-of-image marker)"


def test_strict_stops_at_the_first_unusable_image(faces, bad_images):
    with Embedder(backend(), strict=True, batch_size=2, progress=False) as emb:
        with pytest.raises(ImageError, match=f"{bad_images['corrupt']}: truncated JPEG"):
            emb.embed_paths([faces[0], faces[1], faces[2], bad_images["corrupt"], faces[3]])


def test_cache_skips_known_files_and_notices_changes(faces, reference, tmp_path):
    cache = tmp_path / "cache"
    paths = [tmp_path / f"{i}.jpg" for i in range(4)]
    for src, dst in zip(faces, paths):
        dst.write_bytes(src.read_bytes())
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        first = emb.embed_paths(paths)
    assert (first.n_embedded, first.n_cached) == (4, 0)
    (folder,) = cache.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npy", "index.json"]

    write_jpeg(paths[2], synthetic_face(999, size=64))  # changed file: must be embedded again
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        second = emb.embed_paths(paths + [faces[5]])
    assert (second.n_embedded, second.n_cached) == (2, 3)
    np.testing.assert_array_equal(second.embeddings[[0, 1, 3]], first.embeddings[[0, 1, 3]])
    np.testing.assert_allclose(second.embeddings[2], one_at_a_time([paths[2]])[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(second.embeddings[4], reference[5], rtol=0, atol=1e-6)

    # Another precision is another model: its own cache folder, nothing reused.
    with Embedder(open_backend(tiny_model_folder(), backend="onnxruntime", precision="int8"), cache_dir=cache,
                  progress=False) as emb:
        third = emb.embed_paths(paths)
    assert third.n_cached == 0 and len(list(cache.iterdir())) == 2


def test_a_new_preprocessing_version_reuses_no_cached_embedding(faces, tmp_path, monkeypatch):
    """Crops of the same file change with the preprocessing (EXIF, tiles, refinement): old rows must not return."""
    import engine.embedder as embedder_module

    cache = tmp_path / "cache"
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        assert emb.embed_paths(faces[:3]).n_embedded == 3
    monkeypatch.setattr(embedder_module, "PREPROCESS_VERSION", embedder_module.PREPROCESS_VERSION + 1)
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        again = emb.embed_paths(faces[:3])
    assert (again.n_embedded, again.n_cached) == (3, 0) and len(list(cache.iterdir())) == 2


def _damage(folder, kind):
    array, index = folder / "embeddings.npy", folder / "index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["entries"]))
    if kind == "garbage array":
        array.write_bytes(b"garbage")
    elif kind == "0-byte array":
        array.write_bytes(b"")
    elif kind == "int array":
        np.save(array, np.ones((2, D), np.int64))
    elif kind == "object array":
        np.save(array, np.array([[None] * D] * 2, dtype=object), allow_pickle=True)
    elif kind == "nan rows":
        np.save(array, np.full((2, D), np.nan, np.float32))
    elif kind == "short entry":
        data["entries"][first] = []
    elif kind == "negative row":  # would silently be the LAST row under numpy indexing
        data["entries"][first] = -1
    elif kind == "row past the end":
        data["entries"][first] = 2
    elif kind == "index not json":
        index.write_text("{")
    elif kind == "array missing":
        array.unlink()
    if kind.endswith(("entry", "row", "end")):
        index.write_text(json.dumps(data))


@pytest.mark.parametrize("kind", ["garbage array", "0-byte array", "int array", "object array", "nan rows",
                                  "short entry", "negative row", "row past the end", "index not json",
                                  "array missing"])
def test_a_damaged_cache_is_ignored_with_a_warning_and_rebuilt(faces, reference, tmp_path, caplog, kind):
    cache = tmp_path / "cache"
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        emb.embed_paths(faces[:2])
    (folder,) = cache.iterdir()
    _damage(folder, kind)
    with caplog.at_level("WARNING", logger="engine.embedder"):
        with Embedder(backend(), cache_dir=cache, progress=False) as emb:
            res = emb.embed_paths(faces[:2])
    assert res.n_cached == 0 and res.n_embedded == 2
    np.testing.assert_allclose(res.embeddings, reference[:2], rtol=0, atol=1e-6)
    assert [r.message for r in caplog.records if "damaged embedding cache ignored and rebuilt" in r.message]
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:  # rebuilt: used again
        again = emb.embed_paths(faces[:2])
    assert again.n_cached == 2
    np.testing.assert_allclose(again.embeddings, reference[:2], rtol=0, atol=1e-6)


def test_a_file_replaced_with_the_same_size_and_mtime_is_not_a_cache_hit(tmp_path):
    cache, path = tmp_path / "cache", tmp_path / "photo.bmp"

    def bmp(seed):  # uncompressed: any two images of one size are files of one size
        return cv2.imencode(".bmp", synthetic_face(seed, 64))[1].tobytes()

    path.write_bytes(bmp(1))
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        first = emb.embed_paths([path])
    st = path.stat()
    path.write_bytes(bmp(2))  # as a restore or `cp -p` does: same size, same mtime, other pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        second = emb.embed_paths([path])
    assert (second.n_cached, second.n_embedded) == (0, 1)
    np.testing.assert_allclose(second.embeddings[0], one_at_a_time([path])[0], rtol=0, atol=1e-6)
    assert np.abs(second.embeddings[0] - first.embeddings[0]).max() > 1e-3


def test_embedder_owns_and_closes_its_backend():
    be = backend()
    with Embedder(be, progress=False):
        pass
    assert be.closed


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(backend(), batch_size=0)
    with pytest.raises(ValueError, match="workers"):
        Embedder(backend(), workers=0)


def test_a_given_preprocessor_must_make_the_backends_input_size():
    from engine.preprocess import Preprocessor

    with pytest.raises(ValueError, match="px inputs"):
        Embedder(backend(), preprocessor=Preprocessor(size=S + 16))


def test_a_cache_that_cannot_be_written_costs_speed_never_the_result(faces, reference, tmp_path, caplog):
    cache = tmp_path / "cache"
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        emb.embed_paths(faces[:1])
    (folder,) = cache.iterdir()
    (folder / "index.json").unlink()
    (folder / "index.json").mkdir()  # unreadable and unwritable under that name
    with caplog.at_level("WARNING", logger="engine.embedder"):
        with Embedder(backend(), cache_dir=cache, progress=False) as emb:
            res = emb.embed_paths(faces[:2])
    np.testing.assert_allclose(res.embeddings, reference[:2], rtol=0, atol=1e-6)
    assert any("embedding cache not saved" in r.message for r in caplog.records)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # no scratch file left


def test_cache_writes_never_follow_a_planted_symlink(faces, tmp_path):
    """A shared cache folder: another user plants links under the scratch names; their targets stay untouched."""
    cache = tmp_path / "cache"
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        emb.embed_paths(faces[:1])
    (folder,) = cache.iterdir()
    victims = []
    for name in (".embeddings.npy.tmp", ".index.json.tmp", "index.json.tmp"):
        victim = tmp_path / f"victim{len(victims)}.txt"
        victim.write_text("precious")
        (folder / name).symlink_to(victim)
        victims.append(victim)
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:
        assert emb.embed_paths(faces[:3]).n_embedded == 2
    assert all(v.read_text() == "precious" for v in victims)
    with Embedder(backend(), cache_dir=cache, progress=False) as emb:  # and the cache itself was saved
        assert emb.embed_paths(faces[:3]).n_cached == 3
