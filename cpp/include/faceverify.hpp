// A thin C++ class over the C API (faceverify.h): RAII for the handle,
// std::vector for embeddings, and exceptions on the C++ side only.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "faceverify.h"

namespace faceverify {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Verifier {
public:
    // model_dir "" = the bundled model; backend "auto" | "openvino" | "tensorrt"; precision "" = preferred.
    explicit Verifier(const std::string& model_dir = "", const std::string& backend = "auto",
                      const std::string& precision = "")
        : handle_(fv_open(model_dir.empty() ? nullptr : model_dir.c_str(), backend.c_str(),
                          precision.empty() ? nullptr : precision.c_str()),
                  &fv_close) {
        if (!handle_) throw Error(fv_last_error());
    }

    int dim() const { return fv_embedding_dim(handle_.get()); }
    int input_size() const { return fv_input_size(handle_.get()); }
    std::string backend() const { return fv_backend(handle_.get()); }
    std::string precision() const { return fv_precision(handle_.get()); }
    std::string device() const { return fv_device(handle_.get()); }
    std::string model_dir() const { return fv_model_dir(handle_.get()); }
    std::string reason() const { return fv_choice_reason(handle_.get()); }
    bool threshold(double* value) const { return fv_threshold(handle_.get(), value) == 1; }

    // Embeddings of image files, row-major (paths.size() x dim()); throws naming every failed image.
    std::vector<float> embed(const std::vector<std::string>& paths) {
        std::vector<const char*> c;
        for (const auto& p : paths) c.push_back(p.c_str());
        std::vector<float> out(paths.size() * static_cast<size_t>(dim()));
        if (fv_embed(handle_.get(), c.data(), static_cast<int>(c.size()), out.data()) != 0)
            throw Error(fv_last_error());
        return out;
    }
    // Embeddings of prepared inputs: uint8 NHWC (n, S, S, 3).
    std::vector<float> embed_crops(const uint8_t* crops, int n) {
        std::vector<float> out(static_cast<size_t>(n) * dim());
        if (fv_embed_crops(handle_.get(), crops, n, out.data()) != 0) throw Error(fv_last_error());
        return out;
    }
    // The model input fv_embed would feed for one file: uint8 RGB (S, S, 3).
    std::vector<uint8_t> prepare(const std::string& path, fv_face* face = nullptr) {
        std::vector<uint8_t> crop(static_cast<size_t>(input_size()) * input_size() * 3);
        if (fv_prepare(handle_.get(), path.c_str(), crop.data(), face) != 0) throw Error(fv_last_error());
        return crop;
    }
    fv_result verify(const std::string& a, const std::string& b) {
        fv_result r{};
        if (fv_verify(handle_.get(), a.c_str(), b.c_str(), &r) != 0) throw Error(fv_last_error());
        return r;
    }
    bool face(int index, fv_face* out) const { return fv_last_face(handle_.get(), index, out) == 0; }
    std::string warnings() const { return fv_last_warnings(handle_.get()); }

private:
    std::unique_ptr<fv_handle, void (*)(fv_handle*)> handle_;
};

}  // namespace faceverify
