// model.json (engine/contract.py ModelConfig) and the TensorRT plan sidecar
// check (engine/backends/tensorrt_backend.py), parsed with nlohmann/json
// (Debian's header-only nlohmann-json3-dev). Same keys, same rules, so a
// model folder the Python runtime refuses is refused here too.
#include <cctype>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "internal.h"

namespace fv {
namespace {

using nlohmann::json;

// A value for a one-line message: its JSON text (shortened) and JSON type.
std::string show(const json& v) {
    std::string text = v.dump();
    if (text.size() > 60) text = text.substr(0, 57) + "...";
    return text + " (" + v.type_name() + ")";
}

std::string fmt_g(double v) {
    std::ostringstream s;
    s << v;
    return s.str();
}

double number(const std::string& name, const json& v, const double* low = nullptr, const double* high = nullptr) {
    std::string where = low && high ? " in [" + fmt_g(*low) + ", " + fmt_g(*high) + "]"
                        : low       ? " >= " + fmt_g(*low)
                        : high      ? " <= " + fmt_g(*high)
                                    : "";
    // nlohmann keeps booleans apart from numbers, as the Python check does.
    if (!v.is_number() || !std::isfinite(v.get<double>()))
        throw Error(name + " must be a finite number" + where + ", got " + show(v));
    double x = v.get<double>();
    if ((low && x < *low) || (high && x > *high)) throw Error(name + " must be" + where + ", got " + v.dump());
    return x;
}

long long integer(const std::string& name, const json& v, long long low, long long high) {
    if (!v.is_number_integer()) throw Error(name + " must be an integer, got " + show(v));
    // A huge unsigned value would wrap in get<long long>(): compare it as unsigned first.
    bool huge = v.is_number_unsigned() && v.get<unsigned long long>() > static_cast<unsigned long long>(high);
    long long x = huge ? high : v.get<long long>();
    if (huge || x < low || x > high)
        throw Error(name + " must be in [" + std::to_string(low) + ", " + std::to_string(high) + "], got " + v.dump());
    return x;
}

// engine/contract.py _DETECTOR_NAME: [A-Za-z0-9][A-Za-z0-9_.-]{0,127}
bool detector_name(const std::string& name) {
    auto alnum = [](char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'); };
    if (name.empty() || name.size() > 128 || !alnum(name[0])) return false;
    for (char ch : name)
        if (!alnum(ch) && ch != '_' && ch != '-' && ch != '.') return false;
    return true;
}

std::string text(const std::string& name, const json& v) {
    if (!v.is_string() || v.get<std::string>().empty())
        throw Error(name + " must be a non-empty string, got " + show(v));
    return v.get<std::string>();
}

void triple(const std::string& name, const json& v) {
    if (!v.is_array() || v.size() != 3) throw Error(name + " must be 3 numbers (R, G, B), got " + show(v));
    for (size_t k = 0; k < 3; ++k) number(name + "[" + std::to_string(k) + "]", v[k]);
}

json parse_json(const std::string& text, const std::string& source) {
    try {
        return json::parse(text);
    } catch (const json::parse_error& e) {
        std::string what = e.what();
        auto pos = what.find("parse error");  // drop nlohmann's "[json.exception.parse_error.101] " prefix
        throw Error(source + ": not valid JSON (" + (pos == std::string::npos ? what : what.substr(pos)) + ")");
    }
}

std::string read_text(const std::string& path, bool* missing) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        if (missing) *missing = true;
        return {};
    }
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

}  // namespace

void check_template(const Points4& p) {
    // engine/align.py check_template, rule for rule and word for word: a template of identical,
    // collinear or tiny points warps every photo to the same few pixels, and every pair then matches.
    const double ref = 112.0;
    auto fail = [](const std::string& why) { throw Error("not a face template: " + why); };
    for (const auto& pt : p)
        for (double v : pt)
            if (!(v >= 0.0 && v <= ref)) fail("points must lie inside the 112 px frame");
    double lx = p[0][0], ly = p[0][1], rx = p[1][0], ry = p[1][1], nx = p[2][0], ny = p[2][1], mx = p[3][0],
           my = p[3][1], eyes_y = (ly + ry) / 2, eyes = std::hypot(rx - lx, ry - ly);
    if (!(lx < rx)) fail("the first eye must be left of the second");
    if (!(eyes >= 0.1 * ref && eyes <= 0.9 * ref)) fail("the eyes must be 11.2 to 100.8 px apart");
    if (std::abs(ry - ly) > 0.5 * std::abs(rx - lx)) fail("the eye line must be within 1:2 of horizontal");
    if (!(eyes_y < ny && ny < my)) fail("the nose must be below the eyes and the mouth below the nose");
    if (my - eyes_y < 0.1 * ref) fail("the mouth must be at least 11.2 px below the eyes");
    if (!(lx <= nx && nx <= rx && lx <= mx && mx <= rx))
        fail("the nose and mouth must lie between the eyes horizontally");
}

Points4 named_template(const std::string& name) {
    // engine/align.py TEMPLATES, at the 112 px reference size.
    if (name == "arcface") return {{{38.2946, 51.6963}, {73.5318, 51.5014}, {56.0252, 71.7366}, {56.1396, 92.2848}}};
    if (name == "lfw-centre") return {{{37.8, 46.1}, {75.6, 45.7}, {57.2, 68.6}, {57.5, 88.1}}};
    if (name == "dlib-chip") return {{{34.4, 34.4}, {76.0, 34.3}, {55.3, 59.6}, {55.4, 80.1}}};
    throw Error("unknown template '" + name + "'; known: arcface, lfw-centre, dlib-chip");
}

namespace {

std::string lower(std::string text) {
    for (auto& ch : text) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return text;
}

// What the runtime checks from extra (engine/integrity.py recorded_digests, engine/canary.py record_problem).
void parse_extra(const json& extra, ModelConfig& c) {
    if (extra.contains("onnx_sha256") && extra["onnx_sha256"].is_object()) {
        c.has_digests = true;
        json files = extra.contains("files") && extra["files"].is_object() ? extra["files"] : json::object();
        for (auto it = extra["onnx_sha256"].begin(); it != extra["onnx_sha256"].end(); ++it) {
            std::string name = files.contains(it.key()) && files[it.key()].is_string()
                                   ? files[it.key()].get<std::string>() : "model." + it.key() + ".onnx";
            c.digests[name] = it->is_string() ? lower(it->get<std::string>()) : it->dump();
        }
    }
    if (!extra.contains("canary") || extra["canary"].is_null() ||
        (extra["canary"].is_object() && extra["canary"].empty()))
        return;
    const json& r = extra["canary"];
    c.canary.present = true;
    const std::string malformed =
        "its canary record is malformed (generator, seed, count and count x dim FP32 embeddings)";
    if (!r.is_object()) {
        c.canary.problem = malformed;
        return;
    }
    json generator = r.contains("generator") ? r["generator"] : json(1);
    if (generator != CANARY_GENERATOR) {
        c.canary.problem = "its canary record was drawn by another generator (" + generator.dump() +
                           ", this runtime draws " + std::to_string(CANARY_GENERATOR) +
                           "); make the folder again with `python -m convert`";
        return;
    }
    bool ok = r.contains("seed") && r["seed"].is_number_integer() && r.contains("count") &&
              r["count"].is_number_integer() && r.contains("fp32") && r["fp32"].is_array();
    if (ok) {
        long long seed = r["seed"].is_number_unsigned() && r["seed"].get<unsigned long long>() >= (1ULL << 63)
                             ? -1 : r["seed"].get<long long>();
        long long count = r["count"].get<long long>();
        ok = seed >= 0 && count == static_cast<long long>(r["fp32"].size()) && count > 0;
        size_t dim = ok ? (r["fp32"][0].is_array() ? r["fp32"][0].size() : 0) : 0;
        ok = ok && dim > 0;
        for (size_t i = 0; ok && i < r["fp32"].size(); ++i) {
            const json& row = r["fp32"][i];
            ok = row.is_array() && row.size() == dim;
            std::vector<double> values;
            for (size_t k = 0; ok && k < dim; ++k) {
                ok = row[k].is_number() && std::isfinite(row[k].get<double>());
                if (ok) values.push_back(row[k].get<double>());
            }
            c.canary.fp32.push_back(std::move(values));
        }
        c.canary.seed = static_cast<uint64_t>(seed);
        c.canary.count = static_cast<int>(std::min<long long>(count, 1 << 20));
    }
    if (!ok) c.canary.problem = malformed;
}

}  // namespace

ModelConfig parse_model_config(const std::string& body, const std::string& source) {
    json data = parse_json(body, source);
    if (!data.is_object()) throw Error(source + ": expected a JSON object, got " + data.type_name());
    static const std::set<std::string> known = {
        "arch", "input_size", "crop_fraction", "align", "detector", "template", "margin", "min_face",
        "embedding_dim", "realness_weight", "realness_scale", "realness_bias", "pixel_mean", "pixel_std",
        "input_name", "output_name", "layout", "dtype", "colour", "threshold", "extra"};
    std::string unknown;
    for (auto it = data.begin(); it != data.end(); ++it)
        if (!known.count(it.key())) unknown += (unknown.empty() ? "'" : ", '") + it.key() + "'";
    if (!unknown.empty()) throw Error(source + ": unknown keys [" + unknown + "]");

    ModelConfig c;
    auto get = [&](const char* key, const json& fallback) { return data.contains(key) ? data[key] : fallback; };
    try {
        text("arch", get("arch", "resnet34"));
        // Any square size a network was made for (dlib's is 150), as in engine/contract.py.
        c.input_size = static_cast<int>(integer("input_size", get("input_size", 112), 32, 1024));
        c.crop_fraction = number("crop_fraction", get("crop_fraction", 1.0));
        if (!(c.crop_fraction > 0.0 && c.crop_fraction <= 1.0))
            throw Error("crop_fraction must be in (0, 1], got " + fmt_g(c.crop_fraction));
        json align = get("align", "none");
        if (!align.is_string() || (align != "none" && align != "face"))
            throw Error("align must be 'none' or 'face', got " + show(align));
        c.align = align.get<std::string>();
        c.detector = text("detector", get("detector", "blazeface_full_range"));
        if (!detector_name(c.detector))  // a path here would load any .onnx on the disk (as in Python)
            throw Error("detector must be the name of a shipped detector (a file in engine/models/detector/, "
                        "letters, digits, '_', '-', '.'), got '" + c.detector + "'");
        json tpl = get("template", "arcface");
        if (tpl.is_string()) {
            c.template_name = tpl.get<std::string>();
        } else {
            bool ok = tpl.is_array() && tpl.size() == 4;
            for (size_t k = 0; ok && k < 4; ++k) ok = tpl[k].is_array() && tpl[k].size() == 2;
            if (!ok) throw Error("template must be a name or 4 (x, y) points, got " + show(tpl));
            c.template_name.clear();
            for (size_t k = 0; k < 4; ++k)
                for (size_t j = 0; j < 2; ++j)
                    c.template_pts[k][j] =
                        number("template[" + std::to_string(k) + "][" + std::to_string(j) + "]", tpl[k][j]);
            try {  // checked even where align is none, as in Python
                check_template(c.template_pts);
            } catch (const Error& e) {
                throw Error(std::string("template: ") + e.what());
            }
        }
        const double zero = 0.0, max_margin = 4.0, minus_one = -1.0, one = 1.0;
        c.margin = number("margin", get("margin", 0.0), &zero, &max_margin);
        if (!c.template_name.empty()) {  // align none too: the second look aligns the face found in a crop
            try {
                c.template_pts = named_template(c.template_name);
            } catch (const Error& e) {
                throw Error(std::string("template/margin: ") + e.what());
            }
        }
        c.min_face = number("min_face", get("min_face", 16.0), &zero);
        c.embedding_dim = static_cast<int>(integer("embedding_dim", get("embedding_dim", 512), 1, 65536));
        double weight = number("realness_weight", get("realness_weight", 0.0), &zero);
        c.realness_weight = weight;
        if (weight > 0 && c.embedding_dim < 2)
            throw Error("realness_weight must be >= 0 (and > 0 needs embedding_dim >= 2), got " + fmt_g(weight) +
                        " with embedding_dim " + std::to_string(c.embedding_dim));
        double scale = number("realness_scale", get("realness_scale", 0.5));
        if (!(scale > 0)) throw Error("realness_scale must be > 0, got " + fmt_g(scale));
        number("realness_bias", get("realness_bias", 0.0));
        triple("pixel_mean", get("pixel_mean", json::array({127.5, 127.5, 127.5})));
        json std_ = get("pixel_std", json::array({127.5, 127.5, 127.5}));
        triple("pixel_std", std_);
        for (const auto& v : std_)
            if (v.get<double>() <= 0) throw Error("pixel_std must be > 0, got " + std_.dump());
        c.input_name = text("input_name", get("input_name", "images"));
        c.output_name = text("output_name", get("output_name", "embeddings"));
        for (auto [key, fixed] : {std::pair{"layout", "NHWC"}, {"dtype", "uint8"}, {"colour", "RGB"}}) {
            json v = get(key, fixed);  // what every backend feeds; anything else is another contract
            if (v != fixed) throw Error(std::string(key) + " must be '" + fixed + "', got " + show(v));
        }
        json thr = get("threshold", nullptr);
        if (!thr.is_null()) {
            c.threshold = number("threshold", thr, &minus_one, &one);
            c.has_threshold = true;
        }
        json extra = get("extra", json::object());
        if (!extra.is_object()) throw Error("extra must be a JSON object, got " + show(extra));
        parse_extra(extra, c);
    } catch (const Error& e) {
        throw Error(source + ": " + e.what());
    }
    return c;
}

ModelConfig load_model_config(const std::string& path) {
    bool missing = false;
    std::string body = read_text(path, &missing);
    if (missing) throw Error(path + ": no such file");
    return parse_model_config(body, path);
}

// ------------------------------------------------------------- plan sidecar

namespace {

std::vector<long long> version_tuple(const std::string& version) {
    std::vector<long long> parts;
    std::stringstream s(version);
    std::string piece;
    while (std::getline(s, piece, '.')) {
        std::string digits;
        for (char ch : piece)
            if (std::isdigit(static_cast<unsigned char>(ch))) digits += ch;
        if (digits.empty() || digits.size() > 9) break;
        parts.push_back(std::stoll(digits));
    }
    return parts;
}

std::vector<long long> head(const std::vector<long long>& v, size_t n) {
    return {v.begin(), v.begin() + static_cast<long>(std::min(n, v.size()))};
}

// "8.6", "sm_86", "86", [8, 6] or 8.6 -> {8, 6}; empty for null; throws for anything else.
std::vector<int> capability(const json& value) {
    if (value.is_null()) return {};
    auto bad = [&] { return Error("unreadable compute capability " + value.dump()); };
    if (value.is_array()) {
        if (value.size() != 2 || !value[0].is_number_integer() || !value[1].is_number_integer()) throw bad();
        return {value[0].get<int>(), value[1].get<int>()};
    }
    std::string t = value.is_string() ? value.get<std::string>() : value.dump();
    for (auto& ch : t) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (t.rfind("sm_", 0) == 0) t = t.substr(3);
    else if (t.rfind("sm", 0) == 0) t = t.substr(2);
    auto all_digits = [](const std::string& x) {
        return !x.empty() && x.size() < 6 && x.find_first_not_of("0123456789") == std::string::npos;
    };
    auto dot = t.find('.');
    if (dot != std::string::npos) {
        std::string a = t.substr(0, dot), b = t.substr(dot + 1);
        if (!all_digits(a) || !all_digits(b)) throw bad();
        return {std::stoi(a), std::stoi(b)};
    }
    if (all_digits(t) && t.size() >= 2) return {std::stoi(t.substr(0, t.size() - 1)), t.back() - '0'};
    throw bad();
}

json flag(const json& sidecar, const char* key) {
    for (const char* holder : {"", "build_flags", "flags"}) {
        const json& h = *holder ? (sidecar.contains(holder) ? sidecar[holder] : json()) : sidecar;
        if (h.is_object() && h.contains(key)) return h[key];
    }
    return nullptr;
}

bool truthy(const json& v) {
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number()) return v.get<double>() != 0;
    if (v.is_string()) return !v.get<std::string>().empty();
    return !v.is_null() && !v.empty();
}

std::string as_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

std::string normalise_gpu(const std::string& name) {
    std::stringstream s(name);
    std::string word, out;
    while (s >> word) out += (out.empty() ? "" : " ") + word;
    for (auto& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return out;
}

}  // namespace

void check_plan_sidecar(const std::string& sidecar_json, const RunningTensorRT& running, const std::string& source) {
    json sidecar = parse_json(sidecar_json, source);
    if (!sidecar.is_object()) throw Error(source + ": expected a JSON object");
    std::vector<std::string> problems;
    const std::string& run_v = running.tensorrt_version;
    if (!sidecar.contains("tensorrt_version") || sidecar["tensorrt_version"].is_null()) {
        problems.push_back("the sidecar does not record tensorrt_version");
    } else {
        std::string built_v = as_text(sidecar["tensorrt_version"]);
        auto b = version_tuple(built_v), r = version_tuple(run_v);
        if (truthy(flag(sidecar, "version_compatible"))) {
            if (head(b, 1) != head(r, 1) || r < b)
                problems.push_back("built with TensorRT " + built_v + " (version-compatible), running " + run_v +
                                   ": needs the same major version, " +
                                   (b.empty() ? std::string("?") : std::to_string(b[0])) + ".x at or after " +
                                   built_v);
        } else if (head(b, 3) != head(r, 3)) {
            problems.push_back("built with TensorRT " + built_v + ", running TensorRT " + run_v);
        }
    }

    json level_v = flag(sidecar, "hardware_compatibility_level");
    std::string level = truthy(level_v) ? as_text(level_v) : "none";
    for (auto& ch : level) ch = ch == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (level != "none" && level != "ampere_plus" && level != "same_compute_capability") {
        problems.push_back("unknown hardware_compatibility_level '" + level + "'");
        level = "none";
    }
    std::vector<int> built_cc, run_cc;
    try {
        built_cc = capability(sidecar.contains("compute_capability") ? sidecar["compute_capability"] : json());
        run_cc = capability(running.compute_capability.empty() ? json() : json(running.compute_capability));
    } catch (const Error& e) {
        problems.push_back(e.what());
        built_cc.clear();
        run_cc.clear();
    }
    std::string built_gpu = sidecar.contains("gpu_name") && truthy(sidecar["gpu_name"]) ? as_text(sidecar["gpu_name"]) : "";
    const std::string& run_gpu = running.gpu_name;
    if (level == "ampere_plus") {
        if (run_cc.empty() || run_cc < std::vector<int>{8, 0})
            problems.push_back("hardware-compatible plan (ampere_plus) needs compute capability >= 8.0, this GPU (" +
                               run_gpu + ") has " + running.compute_capability);
    } else {
        if (built_cc.empty())
            problems.push_back("the sidecar does not record compute_capability");
        else if (built_cc != run_cc)
            problems.push_back("built for compute capability " + std::to_string(built_cc[0]) + "." +
                               std::to_string(built_cc[1]) + " (" + built_gpu + "), this GPU (" + run_gpu + ") has " +
                               running.compute_capability);
        if (level == "none") {
            if (built_gpu.empty())
                problems.push_back("the sidecar does not record gpu_name");
            else if (normalise_gpu(built_gpu) != normalise_gpu(run_gpu))
                problems.push_back("built on GPU '" + built_gpu + "', running on '" + run_gpu + "'");
        }
    }
    if (!problems.empty()) {
        std::string all;
        for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
        throw Error(source + ": refusing this TensorRT plan: " + all +
                    ". Rebuild it on this machine with `python -m convert ... --engine` (or "
                    "`python -m convert.tensorrt_build`), or use --backend openvino with the ONNX file");
    }
}

int sidecar_dla_core(const std::string& sidecar_json) {
    json sidecar = json::parse(sidecar_json, nullptr, false);
    if (!sidecar.is_object()) return -1;
    json core = flag(sidecar, "dla_core");
    return core.is_number_integer() ? core.get<int>() : -1;
}

std::string sidecar_plan_sha256(const std::string& sidecar_json) {
    json sidecar = json::parse(sidecar_json, nullptr, false);
    if (!sidecar.is_object() || !sidecar.contains("plan_sha256") || sidecar["plan_sha256"].is_null()) return "";
    const json& v = sidecar["plan_sha256"];
    return v.is_string() ? lower(v.get<std::string>()) : v.dump();
}

std::string read_sidecar(const std::string& plan_path) {
    std::string path = plan_path + ".json";
    std::string name = path.substr(path.find_last_of('/') + 1);
    bool missing = false;
    std::string body = read_text(path, &missing);
    if (missing)
        throw Error(plan_path + ": no sidecar " + name + " next to it; rebuild the engine with "
                    "`python -m convert ... --engine` or `python -m convert.tensorrt_build` (it writes both)");
    json data = parse_json(body, path);
    if (!data.is_object()) throw Error(path + ": expected a JSON object");
    return body;
}

}  // namespace fv
