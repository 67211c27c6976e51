// Unit tests of the C++ runner: `faceverify_unit NAME` runs one group (ctest
// runs each), no argument runs all. Known values come from the Python
// implementation (engine/align.py, engine/detect.py) where it matters.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include <opencv2/imgcodecs.hpp>

#include "faceverify.h"
#include "internal.h"

namespace {

int failures = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                              \
        }                                                                            \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                                        \
    do {                                                                                             \
        double a_ = (a), b_ = (b);                                                                   \
        if (!(std::abs(a_ - b_) <= (tol))) {                                                         \
            std::fprintf(stderr, "%s:%d: %s = %.17g, expected %.17g\n", __FILE__, __LINE__, #a, a_, b_); \
            ++failures;                                                                              \
        }                                                                                            \
    } while (0)

// The message of the fv::Error `body` throws ("" when none, which fails the check).
std::string error_of(const std::function<void()>& body) {
    try {
        body();
    } catch (const fv::Error& e) {
        return e.what();
    }
    return "";
}
#define CHECK_ERROR(body, part)                                                                        \
    do {                                                                                               \
        std::string msg_ = error_of([&] { body; });                                                    \
        if (msg_.find(part) == std::string::npos) {                                                    \
            std::fprintf(stderr, "%s:%d: expected an error containing \"%s\", got \"%s\"\n", __FILE__, \
                         __LINE__, part, msg_.c_str());                                                \
            ++failures;                                                                                \
        }                                                                                              \
    } while (0)

std::string temp_dir() {
    char tmpl[] = "/tmp/faceverify-unit-XXXXXX";
    const char* d = mkdtemp(tmpl);
    return d ? d : "/tmp";
}

void write(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

std::string model_json() {
    std::ifstream f(std::string(FV_DEFAULT_MODEL_DIR) + "/model.json");
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// ------------------------------------------------------------- geometry

void test_similarity_transform() {
    // An exact similarity (scale 2, 30 degrees, shift) is recovered exactly.
    const double c = 2 * std::cos(M_PI / 6), s = 2 * std::sin(M_PI / 6);
    double src[8] = {10, 20, 50, 22, 30, 45, 31, 70}, dst[8];
    for (int k = 0; k < 4; ++k) {
        dst[2 * k] = c * src[2 * k] - s * src[2 * k + 1] + 5;
        dst[2 * k + 1] = s * src[2 * k] + c * src[2 * k + 1] - 7;
    }
    auto m = fv::similarity_transform(src, dst, 4);
    const double want[6] = {c, -s, 5, s, c, -7};
    for (int k = 0; k < 6; ++k) CHECK_NEAR(m[k], want[k], 1e-12);

    // Least squares on real keypoints (an LFW face) onto lfw-centre at 112:
    // engine.align.similarity_transform (Umeyama via SVD) gives these.
    double face[8] = {101.4, 115.4, 145.5, 113.7, 126.4, 143.0, 126.7, 162.8};
    fv::Points4 t = fv::template_points(fv::named_template("lfw-centre"), 112, 0.0);
    m = fv::similarity_transform(face, &t[0][0], 4);
    const double py[6] = {8.5780573323812248e-01, -3.7329532430461665e-02, -4.5208824930501827e+01,
                          3.7329532430461665e-02, 8.5780573323812248e-01, -5.7251263231075654e+01};
    for (int k = 0; k < 6; ++k) CHECK_NEAR(m[k], py[k], 1e-12);

    double same[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    CHECK_ERROR(fv::similarity_transform(same, dst, 4), "source points coincide");

    // The warp: an identity matrix copies the top-left square; shrinking by 4x
    // takes the INTER_AREA path and keeps a flat image flat (no black seams).
    cv::Mat img(64, 80, CV_8UC3, cv::Scalar(10, 20, 30));
    cv::Mat out = fv::warp(img, {1, 0, 0, 0, 1, 0}, 32);
    CHECK(out.rows == 32 && out.cols == 32 && out.at<cv::Vec3b>(31, 31) == cv::Vec3b(10, 20, 30));
    // Bilinear values, rounded half to even (as cv2.warpAffine): sampling a 2x2 image
    // [[0, 10], [20, 30]] at (0.5, 0.5) gives 15; at (0.25, 0) 2.5 -> 2; at (0.75, 0) 7.5 -> 8.
    cv::Mat quad(2, 2, CV_8UC3);
    quad.at<cv::Vec3b>(0, 0) = cv::Vec3b::all(0), quad.at<cv::Vec3b>(0, 1) = cv::Vec3b::all(10);
    quad.at<cv::Vec3b>(1, 0) = cv::Vec3b::all(20), quad.at<cv::Vec3b>(1, 1) = cv::Vec3b::all(30);
    CHECK(fv::warp_affine_linear(quad, {1, 0, -0.5, 0, 1, -0.5}, 1).at<cv::Vec3b>(0, 0) == cv::Vec3b::all(15));
    CHECK(fv::warp_affine_linear(quad, {1, 0, -0.25, 0, 1, 0}, 1).at<cv::Vec3b>(0, 0) == cv::Vec3b::all(2));
    CHECK(fv::warp_affine_linear(quad, {1, 0, -0.75, 0, 1, 0}, 1).at<cv::Vec3b>(0, 0) == cv::Vec3b::all(8));
    // Half a pixel past the edge blends with black; further out is black.
    CHECK(fv::warp_affine_linear(quad, {1, 0, -1.5, 0, 1, 0}, 1).at<cv::Vec3b>(0, 0) == cv::Vec3b::all(5));
    CHECK(fv::warp_affine_linear(quad, {1, 0, -3, 0, 1, 0}, 1).at<cv::Vec3b>(0, 0) == cv::Vec3b::all(0));
    cv::Mat big(400, 400, CV_8UC3, cv::Scalar(200, 100, 50));
    out = fv::warp(big, {0.2, 0, 0, 0, 0.2, 0}, 80);
    CHECK(out.at<cv::Vec3b>(40, 40) == cv::Vec3b(200, 100, 50) && out.at<cv::Vec3b>(79, 79) == cv::Vec3b(200, 100, 50));
}

void test_template_points() {
    // engine.align.template_points("arcface", 224, 1.0)
    fv::Points4 t = fv::template_points(fv::named_template("arcface"), 224, 1.0);
    const double want[4][2] = {{94.2946, 107.6963}, {129.5318, 107.5014}, {112.0252, 127.7366}, {112.1396, 148.2848}};
    for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 2; ++j) CHECK_NEAR(t[k][j], want[k][j], 1e-9);
    fv::Points4 same = fv::template_points(fv::named_template("lfw-centre"), 112, 0.0);
    CHECK_NEAR(same[0][0], 37.8, 1e-12);
    CHECK_NEAR(same[3][1], 88.1, 1e-12);
    CHECK_ERROR(fv::named_template("nope"), "unknown template 'nope'");
    CHECK_ERROR(fv::template_points(same, 112, -1), "margin must be >= 0");
}

std::array<float, 17> row(float cx, float cy, float w, float h, float score, float kp = 0.5f) {
    std::array<float, 17> r{};
    r[0] = cx, r[1] = cy, r[2] = w, r[3] = h, r[16] = score;
    for (int k = 4; k < 16; ++k) r[k] = kp;
    return r;
}

void test_nms() {
    // Two overlapping detections blend by score (the best one's score kept); a
    // distant one stays apart; output best first.
    auto out = fv::weighted_nms({row(0.2f, 0.2f, 0.1f, 0.1f, 0.6f, 0.1f), row(0.5f, 0.5f, 0.2f, 0.2f, 0.9f, 0.3f),
                                 row(0.52f, 0.5f, 0.2f, 0.2f, 0.6f, 0.6f)},
                                0.3f);
    CHECK(out.size() == 2);
    CHECK_NEAR(out[0][16], 0.9, 1e-7);
    CHECK_NEAR(out[0][0], (0.5 * 0.9 + 0.52 * 0.6) / 1.5, 1e-6);
    CHECK_NEAR(out[0][4], (0.3 * 0.9 + 0.6 * 0.6) / 1.5, 1e-6);
    CHECK_NEAR(out[1][0], 0.2, 1e-7);
    CHECK_NEAR(out[1][16], 0.6, 1e-7);
    // Below the IoU threshold (IoU of these two is 1/3 - small) they stay apart.
    out = fv::weighted_nms({row(0.5f, 0.5f, 0.2f, 0.2f, 0.9f), row(0.6f, 0.5f, 0.2f, 0.2f, 0.8f)}, 0.34f);
    CHECK(out.size() == 2);
    out = fv::weighted_nms({row(0.5f, 0.5f, 0.2f, 0.2f, 0.9f), row(0.6f, 0.5f, 0.2f, 0.2f, 0.8f)}, 0.3f);
    CHECK(out.size() == 1);
    CHECK(fv::weighted_nms({}, 0.3f).empty());
}

void test_decode_faces() {
    // A 200x100 (w x h) image letterboxed to 192: scale 0.96, pad_y 50. A
    // detection at the square's centre maps to the image's centre.
    cv::Mat img(100, 200, CV_8UC3, cv::Scalar::all(0));
    fv::Letterbox box = fv::letterbox(img, 192);
    CHECK(box.square.rows == 192 && box.square.cols == 192);
    CHECK_NEAR(box.scale, 0.96, 1e-12);
    CHECK_NEAR(box.pad_x, 0, 0);
    CHECK_NEAR(box.pad_y, 50, 0);
    std::vector<float> raw(3 * 17, 0.f);
    auto r = row(0.5f, 0.5f, 0.25f, 0.25f, 0.8f, 0.5f);
    std::copy(r.begin(), r.end(), raw.begin() + 17);  // anchor 1; anchors 0 and 2 score 0
    auto faces = fv::decode_faces(raw.data(), 3, 192, box);
    CHECK(faces.size() == 1);
    CHECK_NEAR(faces[0].box[0], 100 - 25, 1e-4);
    CHECK_NEAR(faces[0].box[1], 50 - 25, 1e-4);
    CHECK_NEAR(faces[0].keypoints[0], 100, 1e-4);
    CHECK_NEAR(faces[0].keypoints[1], 50, 1e-4);
    CHECK_NEAR(faces[0].score, 0.8, 1e-7);
    raw[17 + 16] = 0.49f;  // under the 0.5 score threshold
    CHECK(fv::decode_faces(raw.data(), 3, 192, box).empty());
    // The retry's view: a 400 px square (zoom 2), scale 0.48, the image at (100, 150); the
    // square's centre is still the image's centre.
    fv::Letterbox wide = fv::letterbox(img, 192, fv::RETRY_ZOOM);
    CHECK_NEAR(wide.scale, 0.48, 1e-12);
    CHECK_NEAR(wide.pad_x, 100, 0);
    CHECK_NEAR(wide.pad_y, 150, 0);
    raw[17 + 16] = 0.8f;
    faces = fv::decode_faces(raw.data(), 3, 192, wide);
    CHECK(faces.size() == 1);
    CHECK_NEAR(faces[0].keypoints[0], 100, 1e-4);
    CHECK_NEAR(faces[0].box[0], 100 - 50, 1e-4);
}

void test_tile_origins() {
    // As engine/detect.py: one tile when it covers the length, else the first at 0, the last
    // flush with the end, neighbours overlapping by at least a quarter tile.
    CHECK(fv::tile_origins(500, 600) == std::vector<int>{0});
    CHECK(fv::tile_origins(4000, 2000) == (std::vector<int>{0, 1000, 2000}));
    for (int length : {577, 1000, 3000, 4001, 8000})
        for (int side : {576, 1000, 1500}) {
            if (length <= side) continue;
            std::vector<int> o = fv::tile_origins(length, side);
            CHECK(o.front() == 0 && o.back() == length - side);
            for (size_t k = 1; k < o.size(); ++k) CHECK(o[k] - o[k - 1] <= 0.75 * side);
        }
}

fv::Face face_at(float cx, float cy, float span) {
    fv::Face f;
    f.box = {cx - span, cy - span, cx + span, cy + span};
    // eyes level, nose and mouth below: upright, size = span
    f.keypoints = {cx - span / 2, cy - span / 2, cx + span / 2, cy - span / 2, cx, cy, cx, cy + span / 2, 0, 0, 0, 0};
    return f;
}

// The face_at keypoints turned by `degrees` about the face's centre (y down, as in an image).
fv::Face turned(float degrees) {
    fv::Face f = face_at(100, 100, 40);
    const double a = degrees * 3.14159265358979 / 180, c = std::cos(a), s = std::sin(a);
    for (int k = 0; k < 6; ++k) {
        const double x = f.keypoints[2 * k] - 100, y = f.keypoints[2 * k + 1] - 100;
        f.keypoints[2 * k] = static_cast<float>(100 + c * x - s * y);
        f.keypoints[2 * k + 1] = static_cast<float>(100 + s * x + c * y);
    }
    return f;
}

void test_main_face() {
    // The central face wins among those at least half the largest's size; a
    // tiny central face loses to a big one.
    std::vector<fv::Face> faces = {face_at(20, 20, 40), face_at(100, 100, 30), face_at(100, 100, 5)};
    CHECK(fv::main_face(faces, 200, 200) == 1);
    faces = {face_at(20, 20, 40), face_at(100, 100, 10)};
    CHECK(fv::main_face(faces, 200, 200) == 0);
    CHECK_NEAR(face_at(0, 0, 30).size(), 30, 1e-5);
}

void test_upright() {
    fv::Face f = face_at(50, 50, 20);
    CHECK(f.upright());
    fv::Face flipped = f;  // upside down, eyes still labelled by image side: the mouth above the eyes
    for (int k = 0; k < 4; ++k) flipped.keypoints[2 * k + 1] = 100 - f.keypoints[2 * k + 1];
    CHECK(!flipped.upright());
    fv::Face sideways = f;  // mouth beside the eye line
    sideways.keypoints[6] = 80, sideways.keypoints[7] = 40;
    CHECK(!sideways.upright());
    fv::Face degenerate = f;
    degenerate.keypoints[2] = degenerate.keypoints[0], degenerate.keypoints[3] = degenerate.keypoints[1];
    CHECK(!degenerate.upright());
    // A whole face turned: the eye-line rule alone holds at any angle; the tilt limit is 45 degrees.
    for (float d : {0.f, 30.f, -44.f}) CHECK(turned(d).upright());
    for (float d : {46.f, -60.f, 90.f, -90.f, 180.f}) CHECK(!turned(d).upright());
}

// ------------------------------------------------------------- model.json, sidecar

void test_model_json() {
    fv::ModelConfig c = fv::parse_model_config(model_json(), "model.json");
    // The bundled model: dlib_resnet29 on 150 px dlib chips, 128-d identity + the realness coordinate.
    CHECK(c.align == "face" && c.template_name == "dlib-chip" && c.input_size == 150 && c.embedding_dim == 129);
    CHECK(c.has_threshold && c.threshold > 0.5 && c.threshold < 1);
    CHECK_NEAR(c.template_pts[0][0], 34.4, 0);

    auto with = [](const std::string& kv) { return "{\"align\": \"face\", \"template\": \"arcface\", " + kv + "}"; };
    fv::ModelConfig d = fv::parse_model_config("{}", "m.json");  // dataclass defaults
    CHECK(d.align == "none" && !d.has_threshold && d.crop_fraction == 1.0 && d.input_size == 112);
    CHECK_ERROR(fv::parse_model_config(with("\"bogus\": 1"), "m.json"), "m.json: unknown keys ['bogus']");
    CHECK_ERROR(fv::parse_model_config(with("\"threshold\": true"), "m.json"), "threshold must be a finite number");
    CHECK_ERROR(fv::parse_model_config(with("\"threshold\": \"0.5\""), "m.json"), "threshold must be a finite number");
    CHECK_ERROR(fv::parse_model_config(with("\"threshold\": 2"), "m.json"), "threshold must be in [-1, 1]");
    CHECK(fv::parse_model_config(with("\"input_size\": 150"), "m.json").input_size == 150);  // dlib's chip size
    CHECK_ERROR(fv::parse_model_config(with("\"input_size\": 31"), "m.json"), "input_size must be in [32, 1024]");
    CHECK_ERROR(fv::parse_model_config(with("\"input_size\": 112.0"), "m.json"), "input_size must be an integer");
    CHECK_ERROR(fv::parse_model_config(with("\"input_size\": 18446744073709551615"), "m.json"), "input_size must be in");
    CHECK_ERROR(fv::parse_model_config("{\"align\": \"eyes\"}", "m.json"), "align must be 'none' or 'face'");
    CHECK_ERROR(fv::parse_model_config("{\"align\": \"face\", \"template\": \"x\"}", "m.json"),
                "template/margin: unknown template 'x'");
    CHECK_ERROR(fv::parse_model_config(with("\"template\": [[1, 2]]"), "m.json"), "template must be a name or 4");
    CHECK_ERROR(fv::parse_model_config(with("\"margin\": 5"), "m.json"), "margin must be in [0, 4]");
    CHECK_ERROR(fv::parse_model_config(with("\"layout\": \"NCHW\""), "m.json"), "layout must be 'NHWC'");
    CHECK_ERROR(fv::parse_model_config(with("\"crop_fraction\": 0"), "m.json"), "crop_fraction must be in (0, 1]");
    CHECK_ERROR(fv::parse_model_config(with("\"pixel_std\": [1, 0, 1]"), "m.json"), "pixel_std must be > 0");
    CHECK_ERROR(fv::parse_model_config(with("\"extra\": []"), "m.json"), "extra must be a JSON object");
    CHECK_ERROR(fv::parse_model_config("[1, 2]", "m.json"), "m.json: expected a JSON object");
    CHECK_ERROR(fv::parse_model_config("{\"align\": ", "m.json"), "m.json: not valid JSON");
    CHECK_ERROR(fv::parse_model_config("{\"threshold\": NaN}", "m.json"), "not valid JSON");
    CHECK_ERROR(fv::load_model_config("/nonexistent/model.json"), "/nonexistent/model.json: no such file");
    fv::ModelConfig pts = fv::parse_model_config(
        "{\"align\": \"face\", \"template\": [[30, 40], [80, 40], [55, 60], [55, 85]]}", "m.json");
    CHECK(pts.template_name.empty() && pts.template_pts[3][1] == 85);
    // Templates that are no face (every photo warped to the same few pixels), refused as Python refuses them,
    // with align none too.
    const std::pair<const char*, const char*> no_face[] = {
        {"[[56, 70], [56, 70], [56, 70], [56, 70]]", "the first eye must be left of the second"},
        {"[[10, 10], [40, 40], [70, 70], [100, 100]]", "the eye line must be within 1:2 of horizontal"},
        {"[[55, 55], [57, 55], [56, 56], [56, 57]]", "the eyes must be 11.2 to 100.8 px apart"},
        {"[[38, 50], [74, 50], [56, 45], [56, 90]]", "the nose must be below the eyes"},
        {"[[38, 50], [74, 50], [56, 52], [56, 55]]", "the mouth must be at least 11.2 px below the eyes"},
        {"[[38, 50], [74, 50], [20, 70], [56, 90]]", "the nose and mouth must lie between the eyes"},
        {"[[38, 50], [74, 50], [56, 70], [56, 190]]", "points must lie inside the 112 px frame"}};
    for (const auto& [points, why] : no_face)
        for (const char* align : {"face", "none"})
            CHECK_ERROR(fv::parse_model_config(std::string("{\"align\": \"") + align + "\", \"template\": " + points + "}",
                                               "m.json"),
                        (std::string("template: not a face template: ") + why).c_str());
    for (const char* name : {"arcface", "lfw-centre", "dlib-chip"})
        CHECK(error_of([&] { fv::check_template(fv::named_template(name)); }).empty());
}

void test_plan_sidecar() {
    const std::string good = R"({"tensorrt_version": "10.3.0.26", "gpu_name": "Orin", "compute_capability": "8.7",
                                 "precision": "int8", "build_flags": {"dla_core": 1}})";
    fv::RunningTensorRT orin{"10.3.0", "Orin", "8.7"};
    CHECK(error_of([&] { fv::check_plan_sidecar(good, orin, "p.json"); }).empty());
    CHECK(fv::sidecar_dla_core(good) == 1);
    CHECK(fv::sidecar_dla_core("{}") == -1);
    CHECK_ERROR(fv::check_plan_sidecar(good, {"10.4.0", "Orin", "8.7"}, "p.json"),
                "p.json: refusing this TensorRT plan: built with TensorRT 10.3.0.26, running TensorRT 10.4.0");
    CHECK_ERROR(fv::check_plan_sidecar(good, {"10.3.0", "NVIDIA H200", "9.0"}, "p.json"),
                "built for compute capability 8.7 (Orin), this GPU (NVIDIA H200) has 9.0; built on GPU 'Orin', "
                "running on 'NVIDIA H200'");
    CHECK(error_of([&] { fv::check_plan_sidecar(good, {"10.3.0", "  orin ", "8.7"}, "p.json"); }).empty());
    const std::string compat = R"({"tensorrt_version": "10.3.0", "gpu_name": "A", "compute_capability": "sm_86",
                                   "build_flags": {"version_compatible": true, "hardware_compatibility_level": "ampere-plus"}})";
    CHECK(error_of([&] { fv::check_plan_sidecar(compat, {"10.7.0", "B", "8.9"}, "p.json"); }).empty());
    CHECK_ERROR(fv::check_plan_sidecar(compat, {"10.2.0", "B", "8.9"}, "p.json"), "needs the same major version, 10.x");
    CHECK_ERROR(fv::check_plan_sidecar(compat, {"10.3.0", "T4", "7.5"}, "p.json"),
                "hardware-compatible plan (ampere_plus) needs compute capability >= 8.0");
    CHECK_ERROR(fv::check_plan_sidecar("{}", orin, "p.json"),
                "the sidecar does not record tensorrt_version; the sidecar does not record compute_capability; "
                "the sidecar does not record gpu_name");
    CHECK_ERROR(fv::check_plan_sidecar(R"({"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "x"})",
                                       orin, "p.json"),
                "unreadable compute capability \"x\"");
    CHECK_ERROR(fv::check_plan_sidecar("[]", orin, "p.json"), "p.json: expected a JSON object");
    std::string dir = temp_dir();
    CHECK_ERROR(fv::read_sidecar(dir + "/model.int8.plan"), "model.int8.plan: no sidecar model.int8.plan.json next to it");
    write(dir + "/model.int8.plan.json", "{oops");
    CHECK_ERROR(fv::read_sidecar(dir + "/model.int8.plan"), "model.int8.plan.json: not valid JSON");
}

// ------------------------------------------------------------- files and decoding

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::string png_header(uint32_t w, uint32_t h) {
    std::string s("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
    for (uint32_t v : {w, h})
        for (int k = 3; k >= 0; --k) s += static_cast<char>((v >> (8 * k)) & 0xff);
    return s + std::string("\x08\x02\0\0\0", 5);
}

void test_image_checks() {
    std::string dir = temp_dir();
    CHECK(fv::thousands(50000000) == "50,000,000" && fv::thousands(999) == "999" && fv::thousands(1000) == "1,000");
    CHECK(fv::image_format(bytes("\xff\xd8\xff\xe0")) == "JPEG");
    CHECK(fv::image_format(bytes("GIF89a......")) == "GIF");
    CHECK(fv::image_format(bytes("P6 12 12 255 ")) == "PPM");
    CHECK(fv::image_format(bytes("hello world")).empty());

    // Sizes from headers, no decoding: PNG, and a real JPEG/BMP/WEBP from OpenCV.
    auto png = fv::header_size(bytes(png_header(640, 480)), "PNG", "x.png");
    CHECK(png.first == 640 && png.second == 480);
    cv::Mat img(37, 53, CV_8UC3, cv::Scalar(1, 2, 3));
    for (const char* ext : {".jpg", ".bmp", ".webp", ".png", ".tiff", ".ppm"}) {
        std::vector<uint8_t> enc;
        cv::imencode(ext, img, enc);
        auto size = fv::header_size(enc, fv::image_format(enc), ext);
        if (size.first != 53 || size.second != 37) std::fprintf(stderr, "header size of %s\n", ext);
        CHECK(size.first == 53 && size.second == 37);
        cv::Mat rgb = fv::decode(enc, ext);
        CHECK(rgb.type() == CV_8UC3 && rgb.rows == 37 && rgb.cols == 53);
        if (std::string(ext) != ".jpg" && std::string(ext) != ".webp")  // lossless: exact, BGR -> RGB
            CHECK(rgb.at<cv::Vec3b>(5, 5) == cv::Vec3b(3, 2, 1));
    }
    // 16-bit greyscale: the high byte, grey -> RGB.
    cv::Mat grey16(20, 20, CV_16UC1, cv::Scalar(0x1234));
    std::vector<uint8_t> enc16;
    cv::imencode(".png", grey16, enc16);
    CHECK(fv::decode(enc16, "g.png").at<cv::Vec3b>(3, 3) == cv::Vec3b(0x12, 0x12, 0x12));

    CHECK_ERROR(fv::decode(bytes(png_header(10000, 10000)), "huge.png"),
                "huge.png: image header says 10000x10000, over the 50,000,000 pixel limit");
    CHECK_ERROR(fv::decode(bytes(png_header(0, 10)), "z.png"), "z.png: image header says 0x10: no pixels");
    CHECK_ERROR(fv::decode({}, "e.jpg"), "e.jpg: empty file (0 bytes)");
    CHECK_ERROR(fv::decode(bytes("just some text"), "t.jpg"), "t.jpg: not a decodable image");
    CHECK_ERROR(fv::decode(bytes("\xff\xd8\xff\xe0\x00\x02"), "d.jpg"), "d.jpg: damaged JPEG header");
    CHECK_ERROR(fv::decode(bytes(std::string("\0\0\0\x0cjP  \r\n\x87\n", 12)), "x.jp2"), "not supported by the C++ runner");
    // PAM: red stays red with 3 channels (OpenCV returns them in RGB order) and 4 (OpenCV 4.6 garbles those).
    for (int depth : {3, 4}) {
        std::string pam = "P7\nWIDTH 8\nHEIGHT 8\nDEPTH " + std::to_string(depth) + "\nMAXVAL 255\nTUPLTYPE " +
                          (depth == 3 ? "RGB" : "RGB_ALPHA") + "\nENDHDR\n";
        for (int i = 0; i < 64; ++i) pam += std::string("\xff\0\0\xff", static_cast<size_t>(depth));
        CHECK(fv::decode(bytes(pam), "red.pam").at<cv::Vec3b>(4, 4) == cv::Vec3b(255, 0, 0));
    }
    CHECK_ERROR(fv::decode(bytes(std::string("GIF89a\x08\0\x08\0\0\0\0;", 14)), "a.gif"),
                "a.gif: GIF images are not supported by the C++ runner");
    std::vector<uint8_t> jpg;
    cv::imencode(".jpg", img, jpg);
    std::vector<uint8_t> cut(jpg.begin(), jpg.begin() + static_cast<long>(jpg.size() / 2));
    CHECK(fv::truncated_jpeg(cut) && !fv::truncated_jpeg(jpg));
    CHECK_ERROR(fv::decode(cut, "cut.jpg"), "cut.jpg: truncated JPEG (no end-of-image marker)");

    // Files: missing, a folder, a broken symlink, a FIFO, an empty file.
    CHECK_ERROR(fv::read_file(dir + "/missing.jpg"), "missing.jpg: no such file");
    CHECK_ERROR(fv::read_file(dir), ": is a directory, not an image");
    CHECK(symlink("/nonexistent/target.jpg", (dir + "/link.jpg").c_str()) == 0);
    CHECK_ERROR(fv::read_file(dir + "/link.jpg"), "link.jpg: broken symlink (to /nonexistent/target.jpg)");
    CHECK(mkfifo((dir + "/fifo").c_str(), 0600) == 0);
    CHECK_ERROR(fv::read_file(dir + "/fifo"), "fifo: is a FIFO (named pipe), not an image");
    CHECK_ERROR(fv::read_file(dir + "/missing.jpg/x"), "no such file");
    write(dir + "/empty.jpg", "");
    CHECK(fv::read_file(dir + "/empty.jpg").empty());
    write(dir + "/three.bin", "abc");
    CHECK(fv::read_file(dir + "/three.bin").size() == 3);
}

void test_centre_crop() {
    // side = round(min(h, w) * fraction) with Python's half-to-even rounding:
    // 125 * 0.5 = 62.5 -> 62, 75 * 0.5 = 37.5 -> 38.
    cv::Mat img(125, 200, CV_8UC3);
    cv::randu(img, 0, 255);
    cv::Mat crop = fv::centre_crop(img, 62, 0.5, "a");
    CHECK(crop.rows == 62 && cv::norm(crop, img(cv::Rect((200 - 62) / 2, (125 - 62) / 2, 62, 62)), cv::NORM_INF) == 0);
    cv::Mat small(75, 75, CV_8UC3);
    cv::randu(small, 0, 255);
    crop = fv::centre_crop(small, 38, 0.5, "b");
    CHECK(cv::norm(crop, small(cv::Rect(18, 18, 38, 38)), cv::NORM_INF) == 0);
    CHECK(fv::centre_crop(img, 112, 1.0, "c").rows == 112);
    CHECK_ERROR(fv::centre_crop(cv::Mat(7, 50, CV_8UC3), 112, 1.0, "tiny.png"),
                "tiny.png: image is 50x7, smaller than 8px on a side");
    cv::Mat flat(20, 20, CV_8UC3, cv::Scalar(100, 100, 100));
    CHECK(fv::is_blank(flat));
    flat.at<cv::Vec3b>(3, 3) = cv::Vec3b(102, 98, 100);
    CHECK(fv::is_blank(flat));
    flat.at<cv::Vec3b>(4, 4) = cv::Vec3b(103, 100, 100);
    CHECK(!fv::is_blank(flat));
}

// ------------------------------------------------------------- the C API

void test_c_api_errors() {
    std::string dir = temp_dir();
    CHECK(fv_open((dir + "/nope").c_str(), nullptr, nullptr) == nullptr);
    CHECK(std::string(fv_last_error()) == dir + "/nope: no such file or folder");
    CHECK(fv_open(dir.c_str(), nullptr, nullptr) == nullptr);
    CHECK(std::string(fv_last_error()).find("not a model folder (no model.json)") != std::string::npos);
    write(dir + "/model.json", "{\"threshold\": \"high\"}");
    CHECK(fv_open(dir.c_str(), nullptr, nullptr) == nullptr);
    CHECK(std::string(fv_last_error()).find("/model.json: threshold must be a finite number") != std::string::npos);
    write(dir + "/model.json", "{}");
    CHECK(fv_open(dir.c_str(), "cuda", nullptr) == nullptr);
    CHECK(std::string(fv_last_error()) == "unknown backend 'cuda'; choose auto, openvino, tensorrt");
    CHECK(fv_open(dir.c_str(), "auto", "int4") == nullptr);
    CHECK(std::string(fv_last_error()).find("unknown precision 'int4'") != std::string::npos);
    CHECK(fv_open(dir.c_str(), "openvino", nullptr) == nullptr);
    CHECK(std::string(fv_last_error()).find("no ONNX file for the openvino backend (has: none)") != std::string::npos);
    CHECK(fv_open(dir.c_str(), "tensorrt", "int8") == nullptr);
    CHECK(std::string(fv_last_error()).find("no int8 plan for the tensorrt backend") != std::string::npos);
    write(dir + "/model.int8.plan", "not a plan");  // a plan without its sidecar is refused by name
    fv_handle* h = fv_open(dir.c_str(), "tensorrt", "int8");
    CHECK(h == nullptr);
    CHECK(std::string(fv_last_error()).find("no sidecar model.int8.plan.json") != std::string::npos);
    float out[4];
    const char* path = "x.jpg";
    CHECK(fv_embed(nullptr, &path, 1, out) == -1 && std::string(fv_last_error()) == "handle is NULL");
    CHECK(fv_last_face(nullptr, 0, nullptr) == -1);
    const float a[3] = {1, 0, 0}, b[3] = {0.6f, 0.8f, 0}, z[3] = {0, 0, 0};
    const double bx = 0.6f, by = 0.8f;  // in double, from the float inputs
    CHECK_NEAR(fv_similarity(a, b, 3), bx / std::sqrt(bx * bx + by * by), 1e-15);
    CHECK(std::isnan(fv_similarity(a, z, 3)));
    CHECK(std::isnan(fv_similarity(a, b, 0)));
}

void test_pipeline_errors() {
    if (!fv::openvino_built()) {
        std::printf("skipped: built without OpenVINO\n");
        return;
    }
    std::string dir = temp_dir();
    fv_handle* h = fv_open(nullptr, "openvino", nullptr);  // the bundled model, its default precision
    if (!h) {
        std::fprintf(stderr, "fv_open(bundled model): %s\n", fv_last_error());
        ++failures;
        return;
    }
    // OpenVINO prefers the INT8 file where the folder has one (the conversion gate passed it),
    // except on x86 CPUs without an int8 dot product, where it is slower than FP32.
    const bool has_int8 = static_cast<bool>(std::ifstream(std::string(FV_DEFAULT_MODEL_DIR) + "/model.int8.onnx")) &&
                          fv::has_int8_dot() != 0;
    CHECK(std::string(fv_backend(h)) == "openvino" && std::string(fv_precision(h)) == (has_int8 ? "int8" : "fp16"));
    const int dim = fv_embedding_dim(h), size = fv_input_size(h);
    CHECK(dim == 129 && size == 150);
    cv::Mat noise(160, 160, CV_8UC3);
    cv::RNG(7).fill(noise, cv::RNG::UNIFORM, 0, 256);
    cv::imwrite(dir + "/noise.png", noise);
    write(dir + "/text.jpg", "not an image at all");
    std::vector<float> out(2 * dim);
    const char* paths[2] = {nullptr, nullptr};
    std::string noise_path = dir + "/noise.png", text_path = dir + "/text.jpg";
    paths[0] = noise_path.c_str();
    paths[1] = text_path.c_str();
    CHECK(fv_embed(h, paths, 2, out.data()) == -1);
    std::string msg = fv_last_error();
    CHECK(msg == noise_path + ": no face found; " + text_path + ": not a decodable image");
    CHECK(std::isnan(out[0]) && std::isnan(out[dim]));
    fv_result r{};
    CHECK(fv_verify(h, noise_path.c_str(), (dir + "/gone.jpg").c_str(), &r) == -1);
    CHECK(std::string(fv_last_error()).find(dir + "/gone.jpg: no such file") != std::string::npos);
    // Prepared inputs go straight to the model: unit-length embeddings.
    std::vector<uint8_t> crops(2 * size * size * 3, 128);
    CHECK(fv_embed_crops(h, crops.data(), 2, out.data()) == 0);
    double norm = 0;
    for (int k = 0; k < dim; ++k) norm += out[k] * out[k];
    CHECK_NEAR(norm, 1.0, 1e-3);
    fv_close(h);
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, void (*)()> tests = {
        {"similarity_transform", test_similarity_transform}, {"template_points", test_template_points},
        {"nms", test_nms},
        {"decode_faces", test_decode_faces},
        {"tile_origins", test_tile_origins},
        {"main_face", test_main_face},
        {"upright", test_upright},
        {"model_json", test_model_json},
        {"plan_sidecar", test_plan_sidecar},
        {"image_checks", test_image_checks},
        {"centre_crop", test_centre_crop},
        {"c_api_errors", test_c_api_errors},
        {"pipeline_errors", test_pipeline_errors},
    };
    if (argc > 1) {
        auto it = tests.find(argv[1]);
        if (it == tests.end()) {
            std::fprintf(stderr, "unknown test %s\n", argv[1]);
            return 2;
        }
        it->second();
    } else {
        for (const auto& [name, fn] : tests) fn();
    }
    if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
