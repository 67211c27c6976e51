// Model files are checked against the SHA-256 digests recorded when they were
// made, as engine/integrity.py does (same rules, same words): model.json's
// extra.onnx_sha256 for the ONNX files, the sidecar's plan_sha256 for a
// TensorRT plan, and the digests of the shipped detectors pinned below. The
// bytes that are hashed are the bytes the backend is given, so a file swapped
// after the check is never the one that runs. SHA-256 is OpenSSL's (libcrypto).
#include <fstream>
#include <map>

#include <openssl/evp.h>

#include "internal.h"

namespace fv {

namespace {

// engine/integrity.py SHIPPED_DETECTORS
const std::map<std::string, std::string> SHIPPED_DETECTORS = {
    {"blazeface_full_range", "5b8540bb1e7e6bd4737de89ff0e5ed34b63b2db524fe59c021f4a878bccc272a"},
};

constexpr long long MAX_MODEL_BYTES = 1LL << 31;  // protobuf's limit for one ONNX graph

Error digest_mismatch(const std::string& path, const std::string& got, const std::string& want, const std::string& recorder) {
    return Error(path + ": its SHA-256 " + got.substr(0, 12) + "... is not the " + want.substr(0, 12) +
                 "... that " + recorder + " records: the file changed after it was made; restore it or make the "
                 "folder again");
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1)
        throw Error("SHA-256 failed (OpenSSL EVP_Digest)");
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int k = 0; k < length; ++k) {
        out += hex[digest[k] >> 4];
        out += hex[digest[k] & 15];
    }
    return out;
}

std::string read_model_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw Error(path + ": cannot be read");
    const std::streamoff size = in.tellg();
    if (size < 0 || size > MAX_MODEL_BYTES) throw Error(path + ": over the 2 GiB limit for a model file");
    std::string bytes(static_cast<size_t>(size), '\0');
    in.seekg(0);
    if (!in.read(bytes.data(), size)) throw Error(path + ": cannot be read");
    return bytes;
}

std::string verified_model(const std::string& path, const ModelConfig& config) {
    std::string bytes = read_model_file(path);
    if (!config.has_digests) return bytes;  // a hand-made folder: nothing recorded to check against
    const std::string name = path.substr(path.find_last_of('/') + 1);
    auto it = config.digests.find(name);
    if (it == config.digests.end())
        throw Error(path + ": model.json records no SHA-256 for this file (convert did not write it); remove it or "
                    "make the folder again");
    const std::string got = sha256_hex(bytes);
    if (got != it->second) throw digest_mismatch(path, got, it->second, "model.json");
    return bytes;
}

std::string verified_detector(const std::string& path, const std::string& name) {
    std::string bytes = read_model_file(path);
    auto it = SHIPPED_DETECTORS.find(name);
    if (it == SHIPPED_DETECTORS.end()) {
        std::string shipped;
        for (const auto& [known, digest] : SHIPPED_DETECTORS) shipped += (shipped.empty() ? "" : ", ") + known;
        throw Error(path + ": detector '" + name + "' has no recorded SHA-256 (shipped: " + shipped + ")");
    }
    const std::string got = sha256_hex(bytes);
    if (got != it->second) throw digest_mismatch(path, got, it->second, "this release");
    return bytes;
}

void verify_plan(const std::string& path, const std::string& bytes, const std::string& plan_sha256) {
    if (plan_sha256.empty()) return;
    const std::string got = sha256_hex(bytes);
    if (got != plan_sha256) throw digest_mismatch(path, got, plan_sha256, path.substr(path.find_last_of('/') + 1) + ".json");
}

}  // namespace fv
