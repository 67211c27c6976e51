// faceverify: the C++ twin of `python -m engine.verify IMG_A IMG_B`, over the C API.
//
//   faceverify A.jpg B.jpg [--json] [--model DIR] [--backend auto|openvino|tensorrt]
//              [--precision fp32|fp16|int8|bf16] [--threshold T] [--dump-embeddings FILE]
//   faceverify --embed IMG... [--json] [--dump-embeddings FILE] [--dump-crops DIR] [...]
//
// Exit codes as engine.verify: two images: 0 same person, 1 not the same person,
// 2 error (one line naming the input and the problem; {"error": ...} with --json).
// --embed: 0 every image embedded, 2 otherwise.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sys/stat.h>
#include <unistd.h>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core/utils/logger.hpp>

#include "faceverify.h"

namespace {

using nlohmann::json;

constexpr int EXIT_MATCH = 0, EXIT_NO_MATCH = 1, EXIT_ERROR = 2;
const char* const KEYPOINTS[] = {"left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear"};

const char* const USAGE =
    "usage: faceverify IMG_A IMG_B [--json] [--model DIR] [--backend auto|openvino|tensorrt]\n"
    "                  [--precision fp32|fp16|int8|bf16] [--threshold T] [--dump-embeddings FILE]\n"
    "       faceverify --embed IMG... [--json] [--dump-embeddings FILE] [--dump-crops DIR] [options]\n"
    "\n"
    "Face verification with the deepfake-aware model: the C++ runner of `python -m engine.verify`,\n"
    "same model folder, same preprocessing, same threshold.\n"
    "\n"
    "  --model DIR            model folder from `python -m convert` (default: the bundled model)\n"
    "  --backend B            auto = TensorRT when built, a plan and a GPU are present, else OpenVINO\n"
    "  --precision P          which model file runs (default: int8 when present)\n"
    "  --threshold T          decision threshold on cosine similarity (default: model.json's)\n"
    "  --json                 one JSON object on stdout (errors too, as {\"error\": ...})\n"
    "  --embed IMG...         embed many images, print throughput (no decision)\n"
    "  --dump-embeddings FILE write every embedding (and the face used) as JSON\n"
    "  --dump-crops DIR       with --embed: write each model input as DIR/<index>.ppm\n"
    "  --version              the version and the backends this build has\n"
    "\n"
    "Exit codes: two images: 0 same person, 1 not the same person, 2 error; --embed: 0 all embedded, 2 otherwise.\n";

struct UsageError {
    std::string message;
};

struct Args {
    std::vector<std::string> images;
    bool json_output = false, embed = false, help = false, version = false;
    std::string model, backend = "auto", precision, dump_embeddings, dump_crops;
    bool has_threshold = false;
    double threshold = 0;
};

Args parse(int argc, char** argv) {
    Args a;
    auto value = [&](int& i, const char* flag) {
        if (i + 1 >= argc) throw UsageError{std::string("argument ") + flag + ": expected one argument"};
        return std::string(argv[++i]);
    };
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--json") a.json_output = true;
        else if (arg == "--embed") a.embed = true;
        else if (arg == "-h" || arg == "--help") a.help = true;
        else if (arg == "--version") a.version = true;
        else if (arg == "--model") a.model = value(i, "--model");
        else if (arg == "--backend") a.backend = value(i, "--backend");
        else if (arg == "--precision") a.precision = value(i, "--precision");
        else if (arg == "--dump-embeddings") a.dump_embeddings = value(i, "--dump-embeddings");
        else if (arg == "--dump-crops") a.dump_crops = value(i, "--dump-crops");
        else if (arg == "--threshold") {
            std::string t = value(i, "--threshold");
            char* end = nullptr;
            a.threshold = std::strtod(t.c_str(), &end);
            // outside [-1, 1] a cosine threshold decides every pair the same way, whatever the photos
            if (t.empty() || *end || !std::isfinite(a.threshold) || a.threshold < -1.0 || a.threshold > 1.0)
                throw UsageError{"--threshold must be a cosine similarity in [-1, 1], got '" + t + "'"};
            a.has_threshold = true;
        } else if (arg.size() > 1 && arg[0] == '-' && arg != "-") {
            throw UsageError{"unrecognized arguments: " + arg};
        } else {
            a.images.push_back(arg);
        }
    }
    if (a.help || a.version) return a;
    if (a.backend != "auto" && a.backend != "openvino" && a.backend != "tensorrt")
        throw UsageError{"argument --backend: invalid choice: '" + a.backend + "' (choose from auto, openvino, tensorrt)"};
    if (!a.precision.empty() && a.precision != "fp32" && a.precision != "fp16" && a.precision != "int8" &&
        a.precision != "bf16")
        throw UsageError{"argument --precision: invalid choice: '" + a.precision +
                         "' (choose from fp32, fp16, int8, bf16)"};
    if (a.embed && a.images.empty()) throw UsageError{"--embed needs at least one image"};
    if (!a.embed && a.images.size() != 2)
        throw UsageError{a.images.size() == 1 ? "two images are needed: IMG_A IMG_B"
                                              : "give two images (IMG_A IMG_B) or --embed IMG..."};
    if (!a.dump_crops.empty() && !a.embed) throw UsageError{"--dump-crops goes with --embed"};
    return a;
}

// `message` with what a terminal would act on escaped (as engine.files.printable): C0/C1 controls (ESC starts
// colour and clear-screen sequences), DEL, U+2028/2029 and the bidi overrides/isolates, which would let a
// file name like "\x1b[2J OK same person.jpg" repaint the line.
std::string printable(const std::string& s) {
    std::string out;
    char buf[12];
    for (size_t i = 0; i < s.size(); ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        auto next = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
        if (c < 0x20 || c == 0x7f) {
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else if (c == 0xc2 && next(1) >= 0x80 && next(1) <= 0x9f) {  // U+0080..U+009F (C1) in UTF-8
            std::snprintf(buf, sizeof buf, "\\x%02x", next(1));
            out += buf;
            i += 1;
        } else if (c == 0xe2 && ((next(1) == 0x80 && next(2) >= 0xa8 && next(2) <= 0xae) ||
                                 (next(1) == 0x81 && next(2) >= 0xa6 && next(2) <= 0xa9))) {
            unsigned code = 0x2000 + ((next(1) & 0x3f) << 6) + (next(2) & 0x3f);
            std::snprintf(buf, sizeof buf, "\\u%04x", code);
            out += buf;
            i += 2;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

void err(const std::string& message) { std::fprintf(stderr, "faceverify: %s\n", printable(message).c_str()); }

// A file name is bytes, not always UTF-8: invalid bytes become U+FFFD, so no output ever fails on one.
std::string text(const json& doc) { return doc.dump(-1, ' ', false, json::error_handler_t::replace); }

int fail(const std::string& message, bool json_output) {
    std::string line;
    for (char ch : message) line += (ch == '\n' || ch == '\r') ? ' ' : ch;  // one line
    err("error: " + line);
    if (json_output) std::printf("%s\n", text(json({{"error", line}})).c_str());
    return EXIT_ERROR;
}

double round_to(double x, int digits) {  // Python's round(x, digits) for the JSON
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, x);
    return std::strtod(buf, nullptr);
}

json face_json(const fv_face& f) {
    json kps = json::object();
    for (int k = 0; k < 6; ++k)
        kps[KEYPOINTS[k]] = {round_to(f.keypoints[2 * k], 1), round_to(f.keypoints[2 * k + 1], 1)};
    return {{"faces", f.faces},
            {"face",
             {{"box", {round_to(f.box[0], 1), round_to(f.box[1], 1), round_to(f.box[2], 1), round_to(f.box[3], 1)}},
              {"score", round_to(f.score, 4)},
              {"size", round_to(f.size, 1)},
              {"keypoints", kps}}}};
}

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    size_t start = 0, end;
    while ((end = text.find('\n', start)) != std::string::npos) {
        if (end > start) out.push_back(text.substr(start, end - start));
        start = end + 1;
    }
    if (start < text.size()) out.push_back(text.substr(start));
    return out;
}

json describe(const fv_handle* h) {
    json out = {{"backend", fv_backend(h)}, {"precision", fv_precision(h)}, {"device", fv_device(h)},
                {"model", fv_model_dir(h)}};
    double canary = fv_canary_cosine(h);  // as engine.verify's --json: the check the folder passed
    if (std::isfinite(canary)) out["canary_cosine"] = std::round(canary * 1e6) / 1e6;
    return out;
}

// Output files, as the Python CLI writes them: checked before the work, never over an input, never through
// a link (a planted symlink would send the bytes elsewhere), written whole or not at all.
std::string parent_of(const std::string& path) {
    auto slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

void check_output_file(const std::string& path, const char* flag, const std::vector<std::string>& inputs) {
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
        if (S_ISLNK(st.st_mode)) throw UsageError{std::string(flag) + " " + path + ": is a symbolic link; name a plain file"};
        if (!S_ISREG(st.st_mode)) throw UsageError{std::string(flag) + " " + path + ": exists and is not a plain file"};
        for (const auto& in : inputs) {
            struct stat si {};
            if (stat(in.c_str(), &si) == 0 && si.st_dev == st.st_dev && si.st_ino == st.st_ino)
                throw UsageError{std::string(flag) + " " + path + ": is an input image; it would be overwritten"};
        }
    }
    if (access(parent_of(path).c_str(), W_OK) != 0)
        throw UsageError{std::string(flag) + " " + path + ": its folder " + parent_of(path) +
                         (errno == ENOENT ? " does not exist" : " is not writable")};
}

void check_output_dir(const std::string& dir) {
    struct stat st {};
    if (lstat(dir.c_str(), &st) == 0) {
        if (S_ISLNK(st.st_mode)) throw UsageError{"--dump-crops " + dir + ": is a symbolic link; name a plain folder"};
        if (!S_ISDIR(st.st_mode)) throw UsageError{"--dump-crops " + dir + ": exists and is not a folder"};
        if (access(dir.c_str(), W_OK) != 0) throw UsageError{"--dump-crops " + dir + ": is not writable"};
    } else if (access(parent_of(dir).c_str(), W_OK) != 0) {
        throw UsageError{"--dump-crops " + dir + ": its folder " + parent_of(dir) +
                         (errno == ENOENT ? " does not exist" : " is not writable")};
    }
}

// Write `bytes` to a fresh temporary file beside `path` (O_EXCL | O_NOFOLLOW), then rename it over `path`:
// rename replaces a link planted meanwhile instead of writing through it.
bool write_atomic(const std::string& path, const std::string& bytes) {
    std::string tmp = parent_of(path) + "/.faceverify-" + std::to_string(getpid()) + ".tmp";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    size_t done = 0;
    while (done < bytes.size()) {
        ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
        if (n <= 0) break;
        done += static_cast<size_t>(n);
    }
    bool ok = done == bytes.size() && close(fd) == 0;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        unlink(tmp.c_str());
        return false;
    }
    return true;
}

void write_embeddings(const std::string& file, fv_handle* h, const std::vector<std::string>& images,
                      const std::vector<float>& emb) {
    const int dim = fv_embedding_dim(h);
    json rows = json::array();
    for (size_t i = 0; i < images.size(); ++i) {
        json row = {{"path", images[i]}};
        const float* e = emb.data() + i * dim;
        if (std::isfinite(e[0])) row["embedding"] = std::vector<float>(e, e + dim);
        else row["embedding"] = nullptr;
        fv_face f{};
        if (fv_last_face(h, static_cast<int>(i), &f) == 0 && f.faces > 0) row["detection"] = face_json(f);
        rows.push_back(row);
    }
    json doc = describe(h);
    doc["dim"] = dim;
    doc["images"] = rows;
    if (!write_atomic(file, text(doc) + "\n")) throw std::runtime_error(file + ": cannot write the embeddings");
}

bool write_ppm(const std::string& path, const std::vector<uint8_t>& rgb, int size) {
    std::string header = "P6\n" + std::to_string(size) + " " + std::to_string(size) + "\n255\n";
    return write_atomic(path, header + std::string(rgb.begin(), rgb.end()));
}

int two_images(fv_handle* h, const Args& a) {
    const int dim = fv_embedding_dim(h);
    std::vector<float> emb(2 * static_cast<size_t>(dim));
    const char* paths[2] = {a.images[0].c_str(), a.images[1].c_str()};
    int rc = fv_embed(h, paths, 2, emb.data());
    if (rc != 0) return fail(fv_last_error(), a.json_output);
    std::vector<std::string> warnings = lines(fv_last_warnings(h));
    for (const auto& w : warnings) err("warning: " + w);
    if (!a.dump_embeddings.empty()) write_embeddings(a.dump_embeddings, h, a.images, emb);
    double sim = fv_similarity(emb.data(), emb.data() + dim, dim);
    if (!std::isfinite(sim))
        return fail(a.images[0] + ", " + a.images[1] + ": similarity is nan: the model returned a zero or "
                    "non-finite embedding", a.json_output);
    double thr = 0;
    bool has_thr = a.has_threshold ? (thr = a.threshold, true) : fv_threshold(h, &thr) == 1;
    bool match = has_thr && sim >= thr;
    const std::string no_threshold = "no decision threshold: the model's model.json has none; pass --threshold";
    if (a.json_output) {
        json info = {{"similarity", sim}, {"match", has_thr ? json(match) : json(nullptr)},
                     {"threshold", has_thr ? json(thr) : json(nullptr)}};
        info.update(describe(h));
        info["image_a"] = a.images[0];
        info["image_b"] = a.images[1];
        const double ra = fv_realness(h, emb.data()), rb = fv_realness(h, emb.data() + dim);
        if (std::isfinite(ra) && std::isfinite(rb)) {  // as engine.api.decide: a refusal the coordinate explains
            info["realness"] = {{"image_a", std::round(ra * 1e4) / 1e4}, {"image_b", std::round(rb * 1e4) / 1e4}};
            info["looks_fake"] = has_thr && !match && std::min(ra, rb) < 0;
        }
        fv_face fa{}, fb{};
        if (fv_last_face(h, 0, &fa) == 0 && fv_last_face(h, 1, &fb) == 0 && (fa.faces || fb.faces))
            info["detection"] = {{"image_a", face_json(fa)}, {"image_b", face_json(fb)}};
        if (!warnings.empty()) info["warnings"] = warnings;
        if (!has_thr) info["error"] = no_threshold;
        std::printf("%s\n", text(info).c_str());
    } else {
        std::printf("similarity: %.4f\n", sim);
        if (!has_thr)
            std::printf("decision:   none (no threshold: the model has none calibrated; pass --threshold)\n");
        else
            std::printf("decision:   %s (threshold %.4f)\n", match ? "same person" : "different people (or a fake)",
                        thr);
    }
    if (!has_thr) {
        err("error: " + no_threshold);
        return EXIT_ERROR;
    }
    return match ? EXIT_MATCH : EXIT_NO_MATCH;
}

int embed_many(fv_handle* h, const Args& a) {
    const int dim = fv_embedding_dim(h), n = static_cast<int>(a.images.size());
    std::vector<const char*> paths;
    for (const auto& p : a.images) paths.push_back(p.c_str());
    std::vector<float> emb(static_cast<size_t>(n) * dim);
    auto start = std::chrono::steady_clock::now();
    int rc = fv_embed(h, paths.data(), n, emb.data());
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::string failures = rc != 0 ? fv_last_error() : "";
    if (!failures.empty()) err("skipped images: " + failures);
    for (const auto& w : lines(fv_last_warnings(h))) err("warning: " + w);
    int failed = 0;
    for (int i = 0; i < n; ++i) failed += std::isfinite(emb[static_cast<size_t>(i) * dim]) ? 0 : 1;
    if (!a.dump_embeddings.empty()) write_embeddings(a.dump_embeddings, h, a.images, emb);
    if (!a.dump_crops.empty()) {
        mkdir(a.dump_crops.c_str(), 0777);  // checked before the work; an existing folder is fine
        std::vector<uint8_t> crop(static_cast<size_t>(fv_input_size(h)) * fv_input_size(h) * 3);
        for (int i = 0; i < n; ++i)
            if (fv_prepare(h, paths[i], crop.data(), nullptr) == 0 &&
                !write_ppm(a.dump_crops + "/" + std::to_string(i) + ".ppm", crop, fv_input_size(h)))
                throw std::runtime_error(a.dump_crops + ": cannot write the crops");
    }
    double rate = seconds > 0 ? (n - failed) / seconds : 0;
    if (a.json_output) {
        json info = {{"images", n}, {"images_failed", failed}, {"seconds", seconds}, {"images_per_s", rate}};
        info.update(describe(h));
        if (!failures.empty()) info["error"] = failures;
        std::printf("%s\n", text(info).c_str());
    } else {
        std::printf("%d images (%d failed) in %.3f s: %.1f images/s (%s, %s)\n", n, failed, seconds, rate,
                    fv_backend(h), fv_precision(h));
    }
    return failed ? EXIT_ERROR : EXIT_MATCH;
}

}  // namespace

int main(int argc, char** argv) {
    // OpenCV's own log lines (libtiff warnings) would come before the one error line that says what was
    // wrong with the file; a user's OPENCV_LOG_LEVEL wins. (OpenCV 4.6 also writes "imdecode_(''): can't
    // read data" to std::cerr itself, which no setting silences.)
    if (!std::getenv("OPENCV_LOG_LEVEL")) cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
    bool json_output = false;
    for (int i = 1; i < argc; ++i) json_output |= std::strcmp(argv[i], "--json") == 0;
    Args a;
    try {
        a = parse(argc, argv);
    } catch (const UsageError& e) {
        return fail(e.message + " (see --help)", json_output);
    }
    if (a.help) {
        std::fputs(USAGE, stdout);
        return 0;
    }
    if (a.version) {
        std::printf("%s\n", fv_build_info());
        return 0;
    }
    try {  // where results go is checked before the model opens or any image is read
        if (!a.dump_embeddings.empty()) check_output_file(a.dump_embeddings, "--dump-embeddings", a.images);
        if (!a.dump_crops.empty()) check_output_dir(a.dump_crops);
    } catch (const UsageError& e) {
        return fail(e.message, a.json_output);
    }
    // A decision that cannot be reported must not exit 0 or 1 (read as "same" / "not the same"): a closed
    // stdout is refused before the work, a failed write (a full disk, /dev/full) after it.
    if (fcntl(1, F_GETFD) == -1) {
        err("error: stdout is closed: the result could not be reported");
        return EXIT_ERROR;
    }
    fv_handle* h = fv_open(a.model.empty() ? nullptr : a.model.c_str(), a.backend.c_str(),
                           a.precision.empty() ? nullptr : a.precision.c_str());
    if (!h) return fail(fv_last_error(), a.json_output);
    err(std::string("backend ") + fv_backend(h) + " (" + fv_precision(h) + ", " + fv_device(h) +
        "): " + fv_choice_reason(h) + "; model " + fv_model_dir(h));
    int rc;
    try {
        rc = a.embed ? embed_many(h, a) : two_images(h, a);
    } catch (const std::exception& e) {  // output files: still one line and exit 2, never 1
        rc = fail(e.what(), a.json_output);
    }
    fv_close(h);
    errno = 0;
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        err(std::string("error: cannot write the result to stdout (") + std::strerror(errno ? errno : EIO) + ")");
        return EXIT_ERROR;
    }
    return rc;
}
