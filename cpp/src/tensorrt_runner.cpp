// TensorRT runner (GPU, Jetson): the same design as
// engine/backends/tensorrt_backend.py and NVIDIA's samples. The sidecar is
// checked against this TensorRT and GPU before TensorRT sees the plan; then
// IRuntime -> ICudaEngine -> one execution context, pinned host + device
// buffers sized from the profile maximum and allocated once, one CUDA stream,
// and per batch: setInputShape -> H2D -> enqueueV3 -> D2H -> synchronise.
//
// Compiled only when CMake finds TensorRT and CUDA (FV_WITH_TENSORRT). Written
// against the TensorRT 10 API (JetPack 6); it has not been compiled or run on
// the machine it was written on (no TensorRT headers, no GPU there).
#include "internal.h"

#ifdef FV_WITH_TENSORRT

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include <NvInfer.h>
#include <cuda_runtime_api.h>

namespace fv {

bool tensorrt_built() { return true; }

namespace {

void cuda_check(cudaError_t err, const char* call) {
    if (err != cudaSuccess)
        throw Error(std::string(call) + " failed: " + cudaGetErrorName(err) + " (" + std::to_string(err) +
                    "): " + cudaGetErrorString(err));
}

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::fprintf(stderr, "tensorrt: %s\n", msg);
    }
};

std::string library_version() {
    // getInferLibVersion(): major*10000 + minor*100 + patch since TensorRT 10
    // (major*1000 + minor*100 + patch before): the library actually loaded.
    int v = getInferLibVersion();
    int major = v >= 100000 ? v / 10000 : v / 1000, minor = (v / 100) % (v >= 100000 ? 100 : 10), patch = v % 100;
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

class TensorRtRunner : public Runner {
public:
    TensorRtRunner(const std::string& plan, const std::string& input_name, const std::string& output_name, int device)
        : input_(input_name), output_(output_name), device_(device) {
        std::string sidecar = read_sidecar(plan);
        // A missing GPU is checked before any TensorRT object exists: without a
        // working device TensorRT fails later and less clearly.
        std::string why;
        int count = cuda_device_count(&why);
        if (count == 0) throw Error("no usable CUDA GPU (" + why + "); TensorRT needs one. Use --backend openvino");
        if (device >= count)
            throw Error("GPU " + std::to_string(device) + " asked for, " + std::to_string(count) + " present");
        cuda_check(cudaSetDevice(device), "cudaSetDevice");
        cudaDeviceProp prop{};
        cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        RunningTensorRT running{library_version(), prop.name,
                                std::to_string(prop.major) + "." + std::to_string(prop.minor)};
        check_plan_sidecar(sidecar, running, plan + ".json");

        const std::string blob = read_model_file(plan);
        verify_plan(plan, blob, sidecar_plan_sha256(sidecar));  // the bytes hashed are the bytes deserialised
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw Error(plan + ": createInferRuntime failed");
        int dla = sidecar_dla_core(sidecar);
        if (dla >= 0) runtime_->setDLACore(dla);  // a DLA plan runs on the core it was built for
        engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine_) throw Error(plan + ": TensorRT could not deserialise the plan (see the log above)");
        check_io(plan);
        nvinfer1::Dims in = engine_->getTensorShape(input_.c_str()), out = engine_->getTensorShape(output_.c_str());
        nvinfer1::Dims low = engine_->getProfileShape(input_.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
        nvinfer1::Dims high = engine_->getProfileShape(input_.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
        size_ = static_cast<int>(in.d[1]);
        dim_ = static_cast<int>(out.d[1]);
        min_batch_ = static_cast<int>(low.d[0]);
        max_batch_ = static_cast<int>(high.d[0]);
        context_.reset(engine_->createExecutionContext());
        if (!context_) throw Error(plan + ": createExecutionContext failed");

        // Allocated once at the profile maximum, freed in the destructor.
        const size_t in_bytes = static_cast<size_t>(max_batch_) * size_ * size_ * 3;
        const size_t out_bytes = static_cast<size_t>(max_batch_) * dim_ * sizeof(float);
        cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
        cuda_check(cudaMallocHost(&host_in_, in_bytes), "cudaMallocHost");  // pinned: async copies overlap
        cuda_check(cudaMallocHost(&host_out_, out_bytes), "cudaMallocHost");
        cuda_check(cudaMalloc(&dev_in_, in_bytes), "cudaMalloc");
        cuda_check(cudaMalloc(&dev_out_, out_bytes), "cudaMalloc");
        if (!context_->setTensorAddress(input_.c_str(), dev_in_) ||
            !context_->setTensorAddress(output_.c_str(), dev_out_))
            throw Error(plan + ": setTensorAddress failed");
        plan_ = plan;
    }

    ~TensorRtRunner() override {
        // Reverse order of creation: context, engine, runtime, then buffers and stream.
        if (stream_) cudaStreamSynchronize(stream_);
        context_.reset();
        engine_.reset();
        runtime_.reset();
        if (dev_out_) cudaFree(dev_out_);
        if (dev_in_) cudaFree(dev_in_);
        if (host_out_) cudaFreeHost(host_out_);
        if (host_in_) cudaFreeHost(host_in_);
        if (stream_) cudaStreamDestroy(stream_);
    }

    int input_size() const override { return size_; }
    int output_dim() const override { return dim_; }
    int max_batch() const override { return max_batch_; }
    std::string device() const override { return "cuda:" + std::to_string(device_); }

    void run(const uint8_t* images, int n, float* out) override {
        // A DLA or fixed-batch profile needs min_batch rows: the padding rows hold
        // stale data and only n rows are read back.
        const int rows = std::max(n, min_batch_);
        const size_t in_bytes = static_cast<size_t>(rows) * size_ * size_ * 3;
        const size_t out_bytes = static_cast<size_t>(rows) * dim_ * sizeof(float);
        nvinfer1::Dims shape{};
        shape.nbDims = 4;
        shape.d[0] = rows;
        shape.d[1] = shape.d[2] = size_;
        shape.d[3] = 3;
        if (!context_->setInputShape(input_.c_str(), shape))
            throw Error(plan_ + ": setInputShape(" + std::to_string(rows) + ") rejected by the profile");
        std::copy_n(images, static_cast<size_t>(n) * size_ * size_ * 3, static_cast<uint8_t*>(host_in_));
        cuda_check(cudaMemcpyAsync(dev_in_, host_in_, in_bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
        if (!context_->enqueueV3(stream_)) throw Error(plan_ + ": enqueueV3 failed (see the TensorRT log)");
        cuda_check(cudaMemcpyAsync(host_out_, dev_out_, out_bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        std::copy_n(static_cast<const float*>(host_out_), static_cast<size_t>(n) * dim_, out);
    }

private:
    void check_io(const std::string& plan) {
        const int n = engine_->getNbIOTensors();
        std::string names;
        bool in_ok = false, out_ok = false;
        for (int i = 0; i < n; ++i) {
            std::string name = engine_->getIOTensorName(i);
            names += (names.empty() ? "'" : ", '") + name + "'";
            in_ok |= name == input_ && engine_->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
            out_ok |= name == output_ && engine_->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kOUTPUT;
        }
        if (n != 2 || !in_ok || !out_ok)
            throw Error(plan + ": engine tensors are [" + names + "], expected input '" + input_ + "' and output '" +
                        output_ + "'");
        if (engine_->getTensorDataType(input_.c_str()) != nvinfer1::DataType::kUINT8)
            throw Error(plan + ": tensor '" + input_ + "' is not uint8, the contract says uint8");
        if (engine_->getTensorDataType(output_.c_str()) != nvinfer1::DataType::kFLOAT)
            throw Error(plan + ": tensor '" + output_ + "' is not float32, the contract says float32");
        nvinfer1::Dims in = engine_->getTensorShape(input_.c_str()), out = engine_->getTensorShape(output_.c_str());
        if (in.nbDims != 4 || in.d[1] != in.d[2] || in.d[3] != 3 || out.nbDims != 2)
            throw Error(plan + ": engine shapes are not (B, S, S, 3) -> (B, D)");
    }

    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    std::string input_, output_, plan_;
    int device_, size_ = 0, dim_ = 0, min_batch_ = 1, max_batch_ = 1;
    cudaStream_t stream_ = nullptr;
    void *host_in_ = nullptr, *host_out_ = nullptr, *dev_in_ = nullptr, *dev_out_ = nullptr;
};

}  // namespace

int cuda_device_count(std::string* why) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        if (why) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
        return 0;
    }
    if (count == 0 && why) *why = "no CUDA device";
    return count;
}

std::unique_ptr<Runner> open_tensorrt(const std::string& plan_path, const std::string& input_name,
                                      const std::string& output_name, int device) {
    return std::make_unique<TensorRtRunner>(plan_path, input_name, output_name, device);
}

}  // namespace fv

#else

namespace fv {

bool tensorrt_built() { return false; }

int cuda_device_count(std::string* why) {
    if (why) *why = "built without TensorRT/CUDA";
    return 0;
}

std::unique_ptr<Runner> open_tensorrt(const std::string& plan_path, const std::string&, const std::string&, int) {
    read_sidecar(plan_path);  // the same message for a plan without its sidecar, with or without TensorRT
    throw Error(plan_path + ": this faceverify library was built without TensorRT (CMake found no TensorRT/CUDA; "
                "set TENSORRT_ROOT and rebuild), use --backend openvino with the ONNX file");
}

}  // namespace fv

#endif
