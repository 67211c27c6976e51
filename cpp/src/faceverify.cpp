// The C API (faceverify.h) over the pipeline of engine/embedder.py and
// engine/preprocess.Preprocessor: read -> decode -> (detect -> main face ->
// upright check -> align) or centre crop -> embed in batches -> cosine.
// Every C entry point catches everything: no exception crosses the boundary.
#include "faceverify.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <sys/stat.h>
#include <thread>

#include "internal.h"

#ifndef FV_DEFAULT_MODEL_DIR
#define FV_DEFAULT_MODEL_DIR "engine/models"
#endif

namespace {

thread_local std::string last_error;

constexpr int CPU_MAX_BATCH = 32;  // engine/backends CPU_MAX_BATCH
const char* const ALL_PRECISIONS[] = {"fp32", "fp16", "int8", "bf16"};

bool is_file(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// A model file that is there but not a regular file (a FIFO would block its reader) is an error naming
// what it is, as in Python (engine/files.py), not a file that is missing.
void refuse_special(const std::string& p, const char* what) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
        throw fv::Error(p + ": is " + fv::file_kind(st.st_mode) + ", not " + what);
}

}  // namespace

// engine/cpu.py has_int8_dot: 1 = x86 with VNNI/AMX, 0 = x86 (AVX2) without one, -1 = not
// x86 or unknown. Without one OpenVINO's INT8 is slower than FP32 (bench/results/avx2-only),
// so auto does not pick INT8 there.
int fv::has_int8_dot() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("flags", 0) != 0) continue;
        std::istringstream words(line.substr(line.find(':') + 1));
        bool avx2 = false, dot = false;
        for (std::string w; words >> w;) {
            avx2 = avx2 || w == "avx2";
            dot = dot || w == "avx512_vnni" || w == "avx_vnni" || w == "amx_int8";
        }
        return avx2 ? (dot ? 1 : 0) : -1;
    }
    return -1;
}

namespace {

struct Prepared {
    cv::Mat crop;
    fv_face face{};
    std::vector<std::string> warnings;
};

}  // namespace

struct fv_handle {
    std::string model_dir, backend, precision, reason, device;
    fv::ModelConfig config;
    std::unique_ptr<fv::Runner> embedder;
    // One detector per preparing thread (a runner serves one thread at a time).
    std::vector<std::unique_ptr<fv::Runner>> detectors;
    std::vector<fv_face> faces;  // of the last fv_embed
    std::vector<bool> ok;
    std::string warnings;
    double canary_cos = std::numeric_limits<double>::quiet_NaN();  // NaN: the folder records no canaries
    bool explicit_precision = false;
    std::vector<std::string> available_;  // files of the chosen backend (for the canary fallback)

    fv_handle(const char* dir, const char* backend_arg, const char* precision_arg) {
        model_dir = dir && *dir ? dir : FV_DEFAULT_MODEL_DIR;
        while (model_dir.size() > 1 && model_dir.back() == '/') model_dir.pop_back();
        std::string want_backend = backend_arg && *backend_arg ? backend_arg : "auto";
        std::string want_precision = precision_arg && *precision_arg ? precision_arg : "";
        if (want_backend != "auto" && want_backend != "openvino" && want_backend != "tensorrt")
            throw fv::Error("unknown backend '" + want_backend + "'; choose auto, openvino, tensorrt");
        if (!want_precision.empty() && std::find(std::begin(ALL_PRECISIONS), std::end(ALL_PRECISIONS),
                                                 want_precision) == std::end(ALL_PRECISIONS))
            throw fv::Error("unknown precision '" + want_precision + "'; choose fp32, fp16, int8, bf16");
        struct stat st {};
        if (::stat(model_dir.c_str(), &st) != 0) throw fv::Error(model_dir + ": no such file or folder");
        if (S_ISDIR(st.st_mode)) refuse_special(model_dir + "/model.json", "a model.json");
        if (!S_ISDIR(st.st_mode) || !is_file(model_dir + "/model.json"))
            throw fv::Error(model_dir + ": not a model folder (no model.json); expected the output of "
                            "`python -m convert`");
        config = fv::load_model_config(model_dir + "/model.json");
        explicit_precision = !want_precision.empty();
        choose(want_backend, want_precision);
        open_runners();
    }

    std::string file(const std::string& p, const char* ext) const { return model_dir + "/model." + p + ext; }

    // engine.backends.choose: an explicit backend/precision wins and is checked;
    // otherwise TensorRT needs a plan, this build's TensorRT and a GPU.
    void choose(const std::string& want_backend, const std::string& want_precision) {
        std::vector<std::string> plans, onnx;
        for (const char* p : ALL_PRECISIONS) {
            refuse_special(file(p, ".plan"), "a TensorRT plan");
            refuse_special(file(p, ".onnx"), "an ONNX model");
            if (is_file(file(p, ".plan"))) plans.emplace_back(p);
            if (is_file(file(p, ".onnx"))) onnx.emplace_back(p);
        }
        if (std::find(onnx.begin(), onnx.end(), "fp32") != onnx.end()) onnx.emplace_back("bf16");
        backend = want_backend;
        reason = "asked for";
        if (backend == "auto") {
            bool has_plan = want_precision.empty() ? !plans.empty()
                                                   : std::find(plans.begin(), plans.end(), want_precision) != plans.end();
            std::string why;
            int gpus = has_plan && fv::tensorrt_built() ? fv::cuda_device_count(&why) : 0;
            if (has_plan && fv::tensorrt_built() && gpus > 0) {
                backend = "tensorrt";
                reason = "a TensorRT plan, TensorRT and a GPU are present";
            } else {
                std::string missing;
                for (auto [what, ok] : {std::pair{"plan", has_plan}, {"TensorRT in this build", fv::tensorrt_built()},
                                        {"GPU", gpus > 0}})
                    if (!ok) missing += (missing.empty() ? "no " : ", no ") + std::string(what);
                if (!fv::openvino_built())
                    throw fv::Error(model_dir + ": " + missing + " for TensorRT, and this build has no OpenVINO");
                backend = "openvino";
                reason = missing + " for TensorRT; OpenVINO is the CPU path";
            }
        }
        const auto& available = backend == "tensorrt" ? plans : onnx;
        available_ = available;
        const char* what = backend == "tensorrt" ? "plan" : "ONNX file";
        static const char* const tensorrt_order[] = {"int8", "fp16", "fp32"};
        static const char* const openvino_order[] = {"int8", "fp32", "fp16"};  // INT8 Q/DQ on VNNI/AMX kernels
        auto list = [&] {
            std::string s;
            for (const auto& p : available) s += (s.empty() ? "" : ", ") + p;
            return s.empty() ? std::string("none") : s;
        };
        if (want_precision.empty()) {
            // Only where another file can run instead: a folder with INT8 alone still runs it.
            const bool skip_int8 = backend == "openvino" && fv::has_int8_dot() == 0 && available.size() > 1 &&
                                   std::find(available.begin(), available.end(), "int8") != available.end();
            if (skip_int8)
                reason += "; INT8 not chosen: this CPU has no int8 dot-product instruction (VNNI/AMX), where "
                          "OpenVINO's INT8 is slower than FP32 (--precision int8 to try it)";
            for (const char* p : backend == "tensorrt" ? tensorrt_order : openvino_order)
                if (!(skip_int8 && std::string(p) == "int8") &&
                    std::find(available.begin(), available.end(), p) != available.end()) {
                    precision = p;
                    break;
                }
            if (precision.empty())
                throw fv::Error(model_dir + ": no " + what + " for the " + backend + " backend (has: " + list() + ")");
        } else if (std::find(available.begin(), available.end(), want_precision) == available.end()) {
            throw fv::Error(model_dir + ": no " + want_precision + " " + what + " for the " + backend +
                            " backend (available: " + list() + ")");
        } else {
            precision = want_precision;
        }
    }

    void open_runners() {
        open_embedder();
        check_canaries();
        open_detector();  // with align none too: a crop must hold a face (engine.preprocess refuse_non_faces)
    }

    std::string embedder_file() const {
        return backend == "tensorrt" ? file(precision, ".plan") : file(precision == "bf16" ? "fp32" : precision, ".onnx");
    }

    void open_embedder() {
        const auto& c = config;
        const std::string source = embedder_file();
        if (backend == "tensorrt") {
            embedder = fv::open_tensorrt(source, c.input_name, c.output_name, 0);
        } else {  // the bytes whose digest model.json records are the bytes OpenVINO compiles
            embedder = fv::open_openvino(source, fv::verified_model(source, c), c.input_name, c.output_name, precision,
                                         0, CPU_MAX_BATCH);
        }
        device = embedder->device();
        if (embedder->input_size() != c.input_size)
            throw fv::Error(source + ": input size " + std::to_string(embedder->input_size()) + ", model.json says " +
                            std::to_string(c.input_size));
        if (embedder->output_dim() != c.embedding_dim)
            throw fv::Error(source + ": embedding dim " + std::to_string(embedder->output_dim()) +
                            ", model.json says " + std::to_string(c.embedding_dim));
    }

    // engine.backends.open_backend: does this precision, on this CPU/GPU, agree with the FP32
    // embeddings convert stored? An automatic choice falls back to the next precision; an
    // explicit one is refused. Embedding the 8 canaries costs one batch at open.
    void check_canaries() {
        if (!config.canary.present) return;
        if (!config.canary.problem.empty()) throw fv::Error(model_dir + ": model.json: " + config.canary.problem);
        std::string tried;
        while (true) {
            canary_cos = fv::canary_cosine(*embedder, config.canary, config.input_size);
            if (canary_cos >= fv::CANARY_MIN_COSINE) {
                if (!tried.empty()) reason += "; " + tried + "; using " + precision;
                return;
            }
            char cos[32];
            std::snprintf(cos, sizeof cos, "%.4f", canary_cos);
            const std::string failed = backend + " " + precision + " disagrees with FP32 on this machine (canary cosine " +
                                       cos + " < 0.98)";
            tried += (tried.empty() ? "" : "; ") + failed;
            embedder.reset();
            if (explicit_precision) throw fv::Error(model_dir + ": " + failed + "; choose another --precision");
            const auto& order = backend == "tensorrt" ? std::vector<std::string>{"int8", "fp16", "fp32"}
                                                      : std::vector<std::string>{"int8", "fp32", "fp16"};
            auto at = std::find(order.begin(), order.end(), precision);
            std::string next;
            for (auto it = at == order.end() ? order.end() : at + 1; it != order.end() && next.empty(); ++it)
                if (std::find(available_.begin(), available_.end(), *it) != available_.end()) next = *it;
            if (next.empty()) throw fv::Error(model_dir + ": " + tried + "; no other precision to fall back to");
            precision = next;
            open_embedder();
        }
    }

    // The detector file: <model_dir>/detector/<name>.onnx when the folder has one,
    // else the one shipped in engine/models/detector (where the Python runtime looks).
    void open_detector() {
        std::string name = config.detector, path = model_dir + "/detector/" + name + ".onnx";
        if (!is_file(path)) path = std::string(FV_DEFAULT_MODEL_DIR) + "/detector/" + name + ".onnx";
        if (!is_file(path)) throw fv::Error(path + ": detector '" + name + "' not found");
        std::string plan = path.substr(0, path.size() - 5) + ".plan";
        // Beside a TensorRT embedder the detector runs on TensorRT too when its plan
        // was built (python -m convert.tensorrt_build --onnx <detector>.onnx); else on the CPU.
        if (backend == "tensorrt" && is_file(plan)) {
            detectors.push_back(fv::open_tensorrt(plan, "images", "detections", 0));  // one: the GPU serialises
        } else if (fv::openvino_built()) {
            const std::string bytes = fv::verified_detector(path, name);  // a changed detector could crop anything
            // As engine.embedder: up to 4 threads decode and detect, each with its own
            // single-threaded detector (a 2.2 MB network on one 192 px image gains
            // nothing from more threads: 184 vs 152 img/s prepared, measured on 2 cores).
            for (int k = 0, n = std::min(4, fv::cpu_cores()); k < n; ++k)
                detectors.push_back(fv::open_openvino(path, bytes, "images", "detections", "fp32", 1, 1));
        } else {
            throw fv::Error(plan + ": no detector plan and no OpenVINO in this build; build it with "
                            "`python -m convert.tensorrt_build --onnx " + path + "`");
        }
        if (detectors[0]->output_dim() % fv::DETECTION_VALUES)
            throw fv::Error(path + ": detector output " + std::to_string(detectors[0]->output_dim()) +
                            " is not N x 17");
    }

    int workers() const { return static_cast<int>(detectors.size()); }

    // engine.detect.FaceDetector.detect: the whole frame, again zoomed out when nothing is found, then tiles.
    std::vector<fv::Face> detect(const cv::Mat& rgb, int worker) {
        fv::Runner* detector = detectors[static_cast<size_t>(worker)].get();
        std::vector<float> raw(static_cast<size_t>(detector->output_dim()));
        std::vector<fv::Face> faces;
        for (int zoom : {1, fv::RETRY_ZOOM}) {
            fv::Letterbox box = fv::letterbox(rgb, detector->input_size(), zoom);
            detector->run(box.square.ptr<uint8_t>(), 1, raw.data());
            faces = fv::decode_faces(raw.data(), detector->output_dim() / fv::DETECTION_VALUES,
                                     detector->input_size(), box);
            if (!faces.empty()) return faces;
        }
        return fv::detect_tiled(rgb, *detector);  // a small face in a large photo
    }

    // The face warped onto the model's template at `side` px (engine.align.align_face).
    cv::Mat aligned(const cv::Mat& rgb, const fv::Face& face, int side) const {
        double src[8];
        for (int k = 0; k < 8; ++k) src[k] = face.keypoints[k];
        fv::Points4 dst = fv::template_points(config.template_pts, std::max(side, config.input_size), config.margin);
        return fv::warp(rgb, fv::similarity_transform(src, &dst[0][0], 4), std::max(side, config.input_size));
    }

    // engine.preprocess.Preprocessor._second_look: BlazeFace fires on ~1% of noise and textures, almost
    // never again on the aligned crop of what it found; real faces are found again.
    void second_look(const cv::Mat& crop, const std::string& source, int worker) {
        if (detect(crop, worker).empty())
            throw fv::NoFace(source + ": no face found on a second look (the detector finds none in the aligned "
                             "crop: not a face, or too blurred or covered)");
    }

    // One decoded RGB image -> the model input (Preprocessor.prepare with refuse_blank, as the Embedder).
    Prepared prepare(const cv::Mat& rgb, const std::string& source, int worker = 0) {
        Prepared out;
        const int size = config.input_size;
        if (config.align == "none") {
            out.crop = fv::centre_crop(rgb, size, config.crop_fraction, source);
            if (fv::is_blank(out.crop))
                throw fv::Error(source + ": blank image (one colour throughout): no face to verify");
            const cv::Mat view = size >= fv::SECOND_LOOK_SIZE
                                     ? out.crop : fv::centre_crop(rgb, fv::SECOND_LOOK_SIZE, config.crop_fraction, source);
            std::vector<fv::Face> faces = detect(view, worker);
            if (faces.empty())
                throw fv::NoFace(source + ": no face found in the crop (--align none is for face crops)");
            second_look(aligned(view, faces[fv::main_face(faces, view.cols, view.rows)], fv::SECOND_LOOK_SIZE),
                        source, worker);
            return out;
        }
        fv::check_rgb(rgb, source);
        fv::Runner* detector = detectors[static_cast<size_t>(worker)].get();
        std::vector<fv::Face> faces = detect(rgb, worker);
        if (faces.empty()) throw fv::NoFace(source + ": no face found");
        faces = fv::refine_faces(rgb, faces, *detector);  // small faces again at a better scale
        const fv::Face& face = faces[fv::main_face(faces, rgb.cols, rgb.rows)];
        if (!face.upright())
            throw fv::NoFace(source + ": no upright face found (the detected face's eyes and mouth do not line up: "
                             "rotated by more than ~45 degrees, or not a face)");
        if (faces.size() > 1)
            out.warnings.push_back(source + ": " + std::to_string(faces.size()) +
                                   " faces found, using the most central large one");
        if (face.size() < config.min_face) {
            char msg[160];
            std::snprintf(msg, sizeof msg, ": face is small (%.0f px eye-to-mouth, under %g): the decision is unreliable",
                          static_cast<double>(face.size()), config.min_face);
            out.warnings.push_back(source + msg);
        }
        out.crop = aligned(rgb, face, size);
        second_look(size >= fv::SECOND_LOOK_SIZE ? out.crop : aligned(rgb, face, fv::SECOND_LOOK_SIZE), source, worker);
        out.face.faces = static_cast<int>(faces.size());
        std::copy(face.box.begin(), face.box.end(), out.face.box);
        out.face.score = face.score;
        out.face.size = face.size();
        std::copy(face.keypoints.begin(), face.keypoints.end(), out.face.keypoints);
        return out;
    }

    // Embed prepared crops in chunks of the runner's maximum batch.
    void run_batch(const std::vector<const cv::Mat*>& crops, std::vector<float*>& rows) {
        const int s = config.input_size, dim = config.embedding_dim, step = embedder->max_batch();
        const size_t image_bytes = static_cast<size_t>(s) * s * 3;
        std::vector<uint8_t> batch;
        std::vector<float> result;
        for (size_t start = 0; start < crops.size(); start += static_cast<size_t>(step)) {
            const size_t n = std::min(crops.size() - start, static_cast<size_t>(step));
            batch.resize(n * image_bytes);
            result.resize(n * static_cast<size_t>(dim));
            for (size_t k = 0; k < n; ++k) {
                const cv::Mat& crop = *crops[start + k];
                CV_Assert(crop.isContinuous() && crop.total() * crop.elemSize() == image_bytes);
                std::memcpy(batch.data() + k * image_bytes, crop.data, image_bytes);
            }
            embedder->run(batch.data(), static_cast<int>(n), result.data());
            for (size_t k = 0; k < n; ++k)
                std::copy_n(result.data() + k * dim, dim, rows[start + k]);
        }
    }

    void embed_files(const char* const* paths, int n, float* out) {
        const int dim = config.embedding_dim;
        faces.assign(static_cast<size_t>(n), fv_face{});
        ok.assign(static_cast<size_t>(n), false);
        warnings.clear();
        std::fill_n(out, static_cast<size_t>(n) * dim, std::numeric_limits<float>::quiet_NaN());
        std::string failures;
        // A batch at a time: its files are prepared in parallel (each thread keeps one
        // decoded photo at a time), then embedded in one call.
        const size_t chunk = static_cast<size_t>(embedder->max_batch());
        for (size_t start = 0; start < static_cast<size_t>(n); start += chunk) {
            const size_t m = std::min(chunk, static_cast<size_t>(n) - start);
            std::vector<Prepared> prepared(m);
            std::vector<std::string> errors(m);
            auto work = [&](int w, size_t step) {
                for (size_t k = static_cast<size_t>(w); k < m; k += step) {
                    const std::string path = paths[start + k] ? paths[start + k] : "";
                    try {
                        prepared[k] = prepare(fv::decode(fv::read_file(path), path), path, w);
                    } catch (const std::exception& e) {  // one bad file is reported, the others still run
                        errors[k] = e.what();
                    } catch (...) {
                        errors[k] = path + ": unexpected error";
                    }
                }
            };
            const size_t threads = std::min(m, static_cast<size_t>(workers()));
            std::vector<std::thread> pool;
            try {
                for (size_t w = 1; w < threads; ++w) pool.emplace_back(work, static_cast<int>(w), threads);
            } catch (...) {  // no thread left running (or unjoined) behind an error
                for (auto& t : pool) t.join();
                throw;
            }
            work(0, threads);
            for (auto& t : pool) t.join();

            std::vector<const cv::Mat*> crops;
            std::vector<float*> rows;
            std::vector<size_t> done;
            for (size_t k = 0; k < m; ++k) {  // in file order, so messages are too
                if (!errors[k].empty()) {
                    failures += (failures.empty() ? "" : "; ") + errors[k];
                    continue;
                }
                for (const auto& w : prepared[k].warnings) warnings += w + "\n";
                faces[start + k] = prepared[k].face;
                crops.push_back(&prepared[k].crop);
                rows.push_back(out + (start + k) * dim);
                done.push_back(start + k);
            }
            run_batch(crops, rows);
            for (size_t i : done) ok[i] = true;
        }
        if (!failures.empty()) throw fv::Error(failures);
    }
};

// ------------------------------------------------------------- C entry points

namespace {

template <class F>
int guarded(F&& body) {
    try {
        last_error.clear();
        body();
        return 0;
    } catch (const std::bad_alloc&) {
        last_error = "out of memory";
    } catch (const std::exception& e) {
        last_error = e.what();
    } catch (...) {
        last_error = "unexpected error";
    }
    // One line, whatever the exception held.
    for (auto& ch : last_error)
        if (ch == '\n' || ch == '\r') ch = ' ';
    return -1;
}

bool need(const void* p, const char* what) {
    if (!p) last_error = std::string(what) + " is NULL";
    return p != nullptr;
}

}  // namespace

extern "C" {

fv_handle* fv_open(const char* model_dir, const char* backend, const char* precision) {
    fv_handle* h = nullptr;
    guarded([&] { h = new fv_handle(model_dir, backend, precision); });
    return h;
}

void fv_close(fv_handle* handle) {
    try {
        delete handle;
    } catch (...) {  // a destructor that throws must still not cross the boundary
    }
}

const char* fv_last_error(void) { return last_error.c_str(); }

const char* fv_build_info(void) {
    static const std::string info = std::string("faceverify ") + FV_VERSION + " (backends: " +
                                    (fv::openvino_built() ? "openvino" : "") +
                                    (fv::openvino_built() && fv::tensorrt_built() ? ", " : "") +
                                    (fv::tensorrt_built() ? "tensorrt" : "") + ")";
    return info.c_str();
}

int fv_input_size(const fv_handle* h) { return h ? h->config.input_size : 0; }
int fv_embedding_dim(const fv_handle* h) { return h ? h->config.embedding_dim : 0; }
const char* fv_backend(const fv_handle* h) { return h ? h->backend.c_str() : ""; }
const char* fv_precision(const fv_handle* h) { return h ? h->precision.c_str() : ""; }
const char* fv_device(const fv_handle* h) { return h ? h->device.c_str() : ""; }
const char* fv_model_dir(const fv_handle* h) { return h ? h->model_dir.c_str() : ""; }
const char* fv_choice_reason(const fv_handle* h) { return h ? h->reason.c_str() : ""; }
double fv_canary_cosine(const fv_handle* h) { return h ? h->canary_cos : std::numeric_limits<double>::quiet_NaN(); }

int fv_threshold(const fv_handle* h, double* threshold) {
    if (!h || !h->config.has_threshold) return 0;
    if (threshold) *threshold = h->config.threshold;
    return 1;
}

int fv_embed(fv_handle* h, const char* const* paths, int n, float* out) {
    if (!need(h, "handle") || (n > 0 && (!need(paths, "paths") || !need(out, "out")))) return -1;
    return guarded([&] { h->embed_files(paths, n, out); });
}

int fv_embed_rgb(fv_handle* h, const uint8_t* rgb, int width, int height, int stride, float* out) {
    if (!need(h, "handle") || !need(rgb, "rgb") || !need(out, "out")) return -1;
    return guarded([&] {
        if (width <= 0 || height <= 0 || stride < width * 3)
            throw fv::Error("<frame>: bad geometry " + std::to_string(width) + "x" + std::to_string(height) +
                            ", stride " + std::to_string(stride));
        cv::Mat frame(height, width, CV_8UC3, const_cast<uint8_t*>(rgb), static_cast<size_t>(stride));
        Prepared p = h->prepare(frame, "<frame>");
        std::vector<const cv::Mat*> crops{&p.crop};
        std::vector<float*> rows{out};
        h->run_batch(crops, rows);
    });
}

int fv_embed_crops(fv_handle* h, const uint8_t* crops, int n, float* out) {
    if (!need(h, "handle") || (n > 0 && (!need(crops, "crops") || !need(out, "out")))) return -1;
    return guarded([&] {
        const int s = h->config.input_size, dim = h->config.embedding_dim, step = h->embedder->max_batch();
        const size_t image_bytes = static_cast<size_t>(s) * s * 3;
        for (int start = 0; start < n; start += step) {
            int k = std::min(step, n - start);
            h->embedder->run(crops + static_cast<size_t>(start) * image_bytes, k,
                             out + static_cast<size_t>(start) * dim);
        }
    });
}

int fv_prepare(fv_handle* h, const char* path, uint8_t* crop, fv_face* face) {
    if (!need(h, "handle") || !need(path, "path") || !need(crop, "crop")) return -1;
    return guarded([&] {
        Prepared p = h->prepare(fv::decode(fv::read_file(path), path), path);
        std::memcpy(crop, p.crop.data, p.crop.total() * p.crop.elemSize());
        if (face) *face = p.face;
    });
}

int fv_last_face(const fv_handle* h, int index, fv_face* face) {
    if (!h || !face || index < 0 || static_cast<size_t>(index) >= h->faces.size() || !h->ok[index]) return -1;
    *face = h->faces[static_cast<size_t>(index)];
    return 0;
}

const char* fv_last_warnings(const fv_handle* h) { return h ? h->warnings.c_str() : ""; }

double fv_realness(const fv_handle* h, const float* embedding) {
    // engine.api.realness: the last output is a t / sqrt(1 + a^2 t^2), so t = e / (a sqrt(1 - e^2)).
    const double weight = h ? h->config.realness_weight : 0.0;
    if (!h || !embedding || weight <= 0 || h->config.embedding_dim < 2) return std::numeric_limits<double>::quiet_NaN();
    const double e = embedding[h->config.embedding_dim - 1];
    const double t = e / (weight * std::sqrt(std::max(1.0 - e * e, 1e-12)));
    return std::isfinite(t) ? std::max(-1.0, std::min(1.0, t)) : std::numeric_limits<double>::quiet_NaN();
}

double fv_similarity(const float* a, const float* b, int dim) {
    if (!a || !b || dim <= 0) return std::numeric_limits<double>::quiet_NaN();
    double dot = 0, na = 0, nb = 0;
    for (int k = 0; k < dim; ++k) {
        dot += static_cast<double>(a[k]) * b[k];
        na += static_cast<double>(a[k]) * a[k];
        nb += static_cast<double>(b[k]) * b[k];
    }
    double den = std::sqrt(na) * std::sqrt(nb);
    double sim = dot / den;  // NaN for a zero vector, as engine.verify.cosine
    if (!std::isfinite(sim)) return std::numeric_limits<double>::quiet_NaN();
    return std::max(-1.0, std::min(1.0, sim));
}

int fv_verify(fv_handle* h, const char* path_a, const char* path_b, fv_result* result) {
    if (!need(h, "handle") || !need(path_a, "path_a") || !need(path_b, "path_b") || !need(result, "result"))
        return -1;
    return guarded([&] {
        const int dim = h->config.embedding_dim;
        std::vector<float> emb(2 * static_cast<size_t>(dim));
        const char* paths[2] = {path_a, path_b};
        h->embed_files(paths, 2, emb.data());
        double sim = fv_similarity(emb.data(), emb.data() + dim, dim);
        if (!std::isfinite(sim))
            throw fv::Error(std::string(path_a) + ", " + path_b +
                            ": similarity is nan: the model returned a zero or non-finite embedding");
        result->similarity = sim;
        result->threshold = h->config.has_threshold ? h->config.threshold : std::numeric_limits<double>::quiet_NaN();
        result->match = h->config.has_threshold ? (sim >= h->config.threshold ? 1 : 0) : -1;
    });
}

}  // extern "C"
