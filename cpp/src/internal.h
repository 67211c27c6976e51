// Internal C++ API of the faceverify library: the pieces of engine/ re-done in
// C++ (model.json contract, decode, detect, align, backends), exposed here so
// the unit tests can reach them. Nothing here crosses the C boundary: errors
// are fv::Error exceptions, caught in faceverify.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace fv {

// The one error type; the message names the input and the problem (one line).
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A photo the detector found no (upright) face in: engine.preprocess.NoFaceError.
struct NoFace : Error {
    using Error::Error;
};

// ------------------------------------------------------------- model.json (engine/contract.py)

// extra.canary of model.json (engine/canary.py canary_record): how to draw the images, their FP32 embeddings.
struct Canary {
    bool present = false;
    std::string problem;  // why it cannot be checked (engine.canary.record_problem); "" when it can
    uint64_t seed = 0;
    int count = 0;
    std::vector<std::vector<double>> fp32;
};
constexpr int CANARY_GENERATOR = 2;
constexpr double CANARY_MIN_COSINE = 0.98;

struct ModelConfig {
    int input_size = 112;
    double crop_fraction = 1.0;
    std::string align = "none";  // "face" | "none"
    std::string detector = "blazeface_full_range";
    std::array<std::array<double, 2>, 4> template_pts{};  // at the 112 px reference size
    std::string template_name = "arcface";                // "" when given as points
    double margin = 0.0;
    double min_face = 16.0;
    int embedding_dim = 512;
    std::string input_name = "images";
    std::string output_name = "embeddings";
    bool has_threshold = false;
    double threshold = 0.0;
    double realness_weight = 0.0;  // > 0: the embedding's last coordinate carries realness (engine.api.realness)
    bool has_digests = false;                    // extra.onnx_sha256 present (a folder convert made)
    std::map<std::string, std::string> digests;  // file name -> lower-case hex SHA-256
    Canary canary;
};

// Parse and check model.json text as engine.contract.ModelConfig does (unknown
// keys, types, ranges); `source` names the file in messages.
ModelConfig parse_model_config(const std::string& text, const std::string& source);
ModelConfig load_model_config(const std::string& path);
// The named templates of engine/align.py (TEMPLATES); throws for an unknown name.
std::array<std::array<double, 2>, 4> named_template(const std::string& name);

// ------------------------------------------------------------- integrity (engine/integrity.py)

std::string sha256_hex(const std::string& bytes);
std::string read_model_file(const std::string& path);  // whole file, up to 2 GiB
// The file's bytes, refused (Error, engine.integrity's words) unless model.json records their digest.
std::string verified_model(const std::string& path, const ModelConfig& config);
// The shipped detector's bytes, refused unless they are the release's.
std::string verified_detector(const std::string& path, const std::string& name);
// Refuse plan bytes whose digest is not the sidecar's plan_sha256 ("" = none recorded).
void verify_plan(const std::string& path, const std::string& bytes, const std::string& plan_sha256);

// ------------------------------------------------------------- TensorRT plan sidecar (tensorrt_backend.py)

struct RunningTensorRT {
    std::string tensorrt_version;    // "10.3.0"
    std::string gpu_name;            // cudaDeviceProp::name
    std::string compute_capability;  // "8.7"
};
// Refuse a plan whose sidecar names another TensorRT version or GPU, as
// engine.backends.tensorrt_backend.check_plan_sidecar does (same rules, same
// wording). Throws Error listing every mismatch; `source` names the sidecar.
void check_plan_sidecar(const std::string& sidecar_json, const RunningTensorRT& running, const std::string& source);
// The sidecar text of `plan_path` (plan_path + ".json"), checked to be a JSON object.
std::string read_sidecar(const std::string& plan_path);
// The sidecar's build_flags.dla_core (or top-level dla_core); -1 when none.
int sidecar_dla_core(const std::string& sidecar_json);
// The sidecar's plan_sha256, lower case; "" when it records none.
std::string sidecar_plan_sha256(const std::string& sidecar_json);

// ------------------------------------------------------------- files and decoding (engine/preprocess.py)

constexpr long long MAX_PIXELS = 50000000;
constexpr long long MAX_DECODED_BYTES = 200000000;  // engine.preprocess.MAX_DECODED_BYTES, read from the header
constexpr long long MAX_FILE_BYTES = 256LL * 1024 * 1024;
constexpr int MIN_SOURCE_SIDE = 8;
constexpr int BLANK_LEVELS = 2;

std::string thousands(long long n);  // 50000000 -> "50,000,000" (Python's {:,})
std::vector<uint8_t> read_file(const std::string& path);
// What a st_mode is, as engine/files.py names it: "a directory", "a FIFO (named pipe)", ...
std::string file_kind(unsigned mode);
// Signature sniffing as engine.preprocess.image_format; "" when none matches.
std::string image_format(const std::vector<uint8_t>& data);
// Width, height from the header, before any pixel is decoded.
std::pair<long long, long long> header_size(const std::vector<uint8_t>& data, const std::string& fmt,
                                            const std::string& source);
bool truncated_jpeg(const std::vector<uint8_t>& data);
cv::Mat decode(const std::vector<uint8_t>& data, const std::string& source);  // 8-bit RGB, CV_8UC3
cv::Mat centre_crop(const cv::Mat& rgb, int size, double crop_fraction, const std::string& source);
bool is_blank(const cv::Mat& rgb);
void check_rgb(const cv::Mat& rgb, const std::string& source);

// ------------------------------------------------------------- faces (engine/detect.py, engine/align.py)

constexpr int DETECTION_VALUES = 17;

struct Face {
    std::array<float, 4> box{};        // x0, y0, x1, y1 in source pixels
    float score = 0.f;
    std::array<float, 12> keypoints{};  // 6 x (x, y): eyes, nose, mouth, ears
    float size() const;                 // eye-to-mouth span in pixels
    bool upright() const;
};

struct Letterbox {
    cv::Mat square;
    double scale = 1, pad_x = 0, pad_y = 0;
};
// A photo with no face found is looked at again in a square this many times its
// longer side (engine/detect.py RETRY_ZOOM: BlazeFace misses faces that fill the frame).
constexpr int RETRY_ZOOM = 2;
// engine/preprocess.py SECOND_LOOK_SIZE: the second look at a face is taken in an aligned crop at least this big.
constexpr int SECOND_LOOK_SIZE = 112;
Letterbox letterbox(const cv::Mat& rgb, int size, int zoom = 1);
// rows: K x 17 (cx, cy, w, h, 6 keypoints, score); returns blended rows, best score first.
std::vector<std::array<float, 17>> weighted_nms(std::vector<std::array<float, 17>> rows, float iou_threshold);
// One image's raw detector output (anchors x 17) -> faces in source pixels.
std::vector<Face> decode_faces(const float* raw, int anchors, int detector_size, const Letterbox& box,
                               float score_threshold = 0.5f, float iou_threshold = 0.3f);
// Index of the face the photo is about (engine.preprocess.main_face).
size_t main_face(const std::vector<Face>& faces, int width, int height);

using Points4 = std::array<std::array<double, 2>, 4>;
// Throws Error naming the rule when 4 points (112 px frame) are no upright face (engine.align.check_template).
void check_template(const Points4& points);
Points4 template_points(const Points4& reference, int size, double margin);
// 2x3 least-squares similarity mapping src onto dst (Umeyama, no reflection), row-major.
std::array<double, 6> similarity_transform(const double* src, const double* dst, int n);
cv::Mat warp(const cv::Mat& rgb, const std::array<double, 6>& matrix, int size);
// The size x size view of an 8-bit RGB image through `forward` (source -> output), bilinear, black outside.
cv::Mat warp_affine_linear(const cv::Mat& src, const std::array<double, 6>& forward, int size);

// ------------------------------------------------------------- backends

// A compiled network with the contract's shape: uint8 NHWC (B, S, S, 3) in,
// float32 (B, D) out. One thread at a time, as the Python backends.
class Runner {
public:
    virtual ~Runner() = default;
    virtual int input_size() const = 0;
    virtual int output_dim() const = 0;
    virtual int max_batch() const = 0;
    virtual std::string device() const = 0;
    // n <= max_batch() images -> n x output_dim() floats.
    virtual void run(const uint8_t* images, int n, float* out) = 0;
};

// Starts of side-long tiles covering [0, length), neighbours overlapping by at least a quarter tile.
std::vector<int> tile_origins(int length, int side);
// Tiles are at least this many detector inputs wide (engine/detect.py TILE_MIN_INPUTS).
constexpr int TILE_MIN_INPUTS = 3;
// Faces too small for the whole frame, looked for in tiles of half, a quarter ... of the longer
// side (engine/detect.py FaceDetector._tiled): merged, best score first; empty when none.
std::vector<Face> detect_tiled(const cv::Mat& rgb, Runner& detector, double iou_threshold = 0.3);
// Faces whose box is under REFINE_BELOW of the longer side, detected again in a square
// REFINE_FRAMING times their box (engine/detect.py FaceDetector._refined).
constexpr double REFINE_BELOW = 0.25, REFINE_FRAMING = 2.5;
std::vector<Face> refine_faces(const cv::Mat& rgb, std::vector<Face> faces, Runner& detector,
                               double iou_threshold = 0.3);

// 1 = x86 with an int8 dot-product instruction (VNNI/AMX), 0 = AVX2 without one, -1 = unknown.
int has_int8_dot();
bool openvino_built();
bool tensorrt_built();
// precision: fp32|fp16|int8|bf16 (the hint engine/backends/openvino_backend.py sets); threads 0 = all cores.
// `bytes`: the file's verified contents (what is compiled; `onnx_path` names it in messages).
std::unique_ptr<Runner> open_openvino(const std::string& onnx_path, const std::string& bytes,
                                      const std::string& input_name, const std::string& output_name,
                                      const std::string& precision, int threads, int max_batch);
// plan + plan.json sidecar, checked before TensorRT sees the bytes.
std::unique_ptr<Runner> open_tensorrt(const std::string& plan_path, const std::string& input_name,
                                      const std::string& output_name, int device);
// engine/canary.py canary_images: count x size x size x 3 uint8 RGB.
std::vector<uint8_t> canary_images(int size, int count, uint64_t seed);
// The worst cosine between the runner's embeddings of the canaries and the record's (NaN: wrong shape/non-finite).
double canary_cosine(Runner& runner, const Canary& record, int size);

// How many CUDA devices answer (0 without TensorRT support or a driver), and why not.
int cuda_device_count(std::string* why);

// The default OpenVINO compiled-model cache folder, as default_cache_dir() in
// openvino_backend.py ($FAKEAWARE_CACHE_DIR, off/0/none = no cache); "" = none.
std::string openvino_cache_dir();
int cpu_cores();

}  // namespace fv
