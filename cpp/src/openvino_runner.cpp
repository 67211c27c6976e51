// OpenVINO (CPU) runner: reads the .onnx file directly, as
// engine/backends/openvino_backend.py does, with the same compile options:
// LATENCY hint, one stream over all cores, f32 inference precision for the
// FP32/FP16 files (no silent bf16 downgrade on AMX CPUs) and for what the INT8
// Q/DQ file leaves unquantized (the layers convert kept in FP32 for accuracy),
// bf16 on request, and the same compiled-model cache.
#include <cstdlib>

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#ifdef FV_WITH_OPENVINO
#include <openvino/openvino.hpp>
#endif

namespace fv {

int cpu_cores() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));  // taskset/cgroups
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<int>(n) : 1;
}

std::string openvino_cache_dir() {
    const char* root = std::getenv("FAKEAWARE_CACHE_DIR");
    std::string r = root ? root : "";
    std::string low = r;
    for (auto& ch : low) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (low == "off" || low == "0" || low == "none") return "";
    std::string base = r;
    if (base.empty()) {
        const char* xdg = std::getenv("XDG_CACHE_HOME");
        const char* home = std::getenv("HOME");
        if (xdg && *xdg) base = std::string(xdg) + "/fakeaware-faceverify";
        else if (home && *home) base = std::string(home) + "/.cache/fakeaware-faceverify";
        else return "";
    }
    std::string folder = base + "/openvino";
    // mkdir -p; a read-only home means running without the cache, not failing.
    for (size_t at = 1; at <= folder.size(); ++at)
        if (at == folder.size() || folder[at] == '/') ::mkdir(folder.substr(0, at).c_str(), 0755);
    return ::access(folder.c_str(), W_OK) == 0 ? folder : "";
}

#ifdef FV_WITH_OPENVINO

bool openvino_built() { return true; }

namespace {

class OpenVinoRunner : public Runner {
public:
    OpenVinoRunner(const std::string& path, const std::string& bytes, const std::string& input_name,
                   const std::string& output_name, const std::string& precision, int threads, int max_batch)
        : input_name_(input_name), output_name_(output_name), max_batch_(max_batch) {
        ov::Core core;
        std::shared_ptr<ov::Model> model;
        try {
            // From the verified bytes (an ONNX model in memory): the file is not read a second time.
            model = core.read_model(bytes, ov::Tensor());
        } catch (const std::exception& e) {
            throw Error(path + ": openvino cannot read it (" + first_line(e.what()) + ")");
        }
        check_io(*model, path);
        ov::AnyMap config{{ov::hint::performance_mode.name(), ov::hint::PerformanceMode::LATENCY},
                          {ov::inference_num_threads.name(), threads > 0 ? threads : cpu_cores()}};
        if (precision == "fp32" || precision == "fp16" || precision == "int8")
            config[ov::hint::inference_precision.name()] = ov::element::f32;
        else if (precision == "bf16")
            config[ov::hint::inference_precision.name()] = ov::element::bf16;
        else
            throw Error("openvino: unknown precision '" + precision + "'; use one of bf16, fp16, fp32, int8");
        std::string cache = openvino_cache_dir();
        if (!cache.empty()) config[ov::cache_dir.name()] = cache;
        try {
            compiled_ = core.compile_model(model, "CPU", config);
            request_ = compiled_.create_infer_request();
        } catch (const Error&) {
            throw;
        } catch (const std::exception& e) {
            throw Error(path + ": openvino cannot compile it for CPU (" + first_line(e.what()) + ")");
        }
    }

    int input_size() const override { return size_; }
    int output_dim() const override { return dim_; }
    int max_batch() const override { return max_batch_; }
    std::string device() const override { return "cpu"; }

    void run(const uint8_t* images, int n, float* out) override {
        // Wraps the caller's memory: no copy in; the output is the request's own
        // memory, overwritten by the next call, so it is copied out.
        ov::Tensor in(ov::element::u8, ov::Shape{static_cast<size_t>(n), static_cast<size_t>(size_),
                                                  static_cast<size_t>(size_), 3},
                      const_cast<uint8_t*>(images));
        request_.set_tensor(input_name_, in);
        request_.infer();
        ov::Tensor result = request_.get_tensor(output_name_);
        if (result.get_shape() != ov::Shape{static_cast<size_t>(n), static_cast<size_t>(dim_)})
            throw Error("openvino: model returned shape " + result.get_shape().to_string() + ", expected [" +
                        std::to_string(n) + "," + std::to_string(dim_) + "]");
        std::copy_n(result.data<const float>(), static_cast<size_t>(n) * dim_, out);
    }

private:
    static std::string first_line(const std::string& text) {
        auto end = text.find('\n');
        return end == std::string::npos ? text : text.substr(0, end);
    }

    // The contract (engine/contract.py check_onnx): one uint8 NHWC square input
    // with a dynamic batch, one float32 (B, D) output, with the configured names.
    void check_io(const ov::Model& model, const std::string& path) {
        if (model.inputs().size() != 1 || model.outputs().size() != 1)
            throw Error(path + ": expected 1 input and 1 output, found " + std::to_string(model.inputs().size()) +
                        " and " + std::to_string(model.outputs().size()));
        auto in = model.input(), out = model.output();
        if (!in.get_names().count(input_name_))
            throw Error(path + ": input is named '" + in.get_any_name() + "', expected '" + input_name_ + "'");
        if (!out.get_names().count(output_name_))
            throw Error(path + ": output is named '" + out.get_any_name() + "', expected '" + output_name_ + "'");
        if (in.get_element_type() != ov::element::u8)
            throw Error(path + ": input dtype is " + in.get_element_type().get_type_name() + ", expected u8");
        if (out.get_element_type() != ov::element::f32)
            throw Error(path + ": output dtype is " + out.get_element_type().get_type_name() + ", expected f32");
        const ov::PartialShape& s = in.get_partial_shape();
        if (s.rank().is_dynamic() || s.size() != 4 || s[1].is_dynamic() || s[1] != s[2] || s[3] != 3 ||
            s[0].is_static())
            throw Error(path + ": input shape " + s.to_string() + ", expected [?, S, S, 3] (NHWC, square, dynamic batch)");
        const ov::PartialShape& o = out.get_partial_shape();
        if (o.rank().is_dynamic() || o.size() != 2 || o[1].is_dynamic())
            throw Error(path + ": output shape " + o.to_string() + ", expected [batch, D]");
        size_ = static_cast<int>(s[1].get_length());
        dim_ = static_cast<int>(o[1].get_length());
    }

    std::string input_name_, output_name_;
    int max_batch_, size_ = 0, dim_ = 0;
    ov::CompiledModel compiled_;
    ov::InferRequest request_;
};

}  // namespace

std::unique_ptr<Runner> open_openvino(const std::string& onnx_path, const std::string& bytes,
                                      const std::string& input_name, const std::string& output_name,
                                      const std::string& precision, int threads, int max_batch) {
    return std::make_unique<OpenVinoRunner>(onnx_path, bytes, input_name, output_name, precision, threads, max_batch);
}

#else

bool openvino_built() { return false; }

std::unique_ptr<Runner> open_openvino(const std::string&, const std::string&, const std::string&,
                                      const std::string&, const std::string&, int, int) {
    throw Error("this faceverify library was built without OpenVINO (CMake did not find it; set OpenVINO_DIR "
                "to <site-packages>/openvino/cmake and rebuild)");
}

#endif

}  // namespace fv
