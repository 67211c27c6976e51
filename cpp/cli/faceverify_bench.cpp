// faceverify_bench: throughput of the C++ library on image files, in three
// stages, as bench/cpp_bench.py measures the Python runtime beside it:
//   end_to_end  fv_embed over every file (read, decode, detect, align, embed)
//   prepare     fv_prepare per file (read, decode, detect, align; no embedding)
//   backend     fv_embed_crops on batches of prepared inputs (the model alone)
// Each is repeated and the median round reported, as one JSON object on stdout.
//
//   faceverify_bench [--model DIR] [--backend B] [--precision P] [--repeat N] [--batch N] IMG...
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "faceverify.hpp"

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

}  // namespace

int main(int argc, char** argv) {
    std::string model, backend = "auto", precision;
    int repeat = 3, batch = 32;
    std::vector<std::string> images;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "faceverify_bench: %s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--model") model = next();
        else if (a == "--backend") backend = next();
        else if (a == "--precision") precision = next();
        else if (a == "--repeat") repeat = std::max(1, std::atoi(next().c_str()));
        else if (a == "--batch") batch = std::max(1, std::atoi(next().c_str()));
        else images.push_back(a);
    }
    if (images.empty()) {
        std::fprintf(stderr, "usage: faceverify_bench [--model DIR] [--backend B] [--precision P] [--repeat N] "
                             "[--batch N] IMG...\n");
        return 2;
    }
    try {
        double t0 = now();
        faceverify::Verifier v(model, backend, precision);
        double open_s = now() - t0;
        const int n = static_cast<int>(images.size());

        v.embed(images);  // warm-up: first inferences allocate
        std::vector<double> e2e, prep, back;
        for (int r = 0; r < repeat; ++r) {
            t0 = now();
            v.embed(images);
            e2e.push_back(now() - t0);
        }
        std::vector<std::vector<uint8_t>> crops;
        for (int r = 0; r < repeat; ++r) {
            crops.clear();
            t0 = now();
            for (const auto& p : images) crops.push_back(v.prepare(p));
            prep.push_back(now() - t0);
        }
        // A batch of `batch` prepared inputs, cycling through the files.
        const size_t bytes = crops[0].size();
        std::vector<uint8_t> tile(bytes * batch);
        for (int k = 0; k < batch; ++k) std::copy(crops[k % n].begin(), crops[k % n].end(), tile.begin() + k * bytes);
        v.embed_crops(tile.data(), batch);
        for (int r = 0; r < std::max(repeat, 5); ++r) {
            t0 = now();
            v.embed_crops(tile.data(), batch);
            back.push_back(now() - t0);
        }
        std::printf("{\"runner\": \"cpp\", \"backend\": \"%s\", \"precision\": \"%s\", \"device\": \"%s\", "
                    "\"images\": %d, \"batch\": %d, \"repeat\": %d, \"open_s\": %.4f, "
                    "\"end_to_end_img_s\": %.2f, \"prepare_img_s\": %.2f, \"backend_img_s\": %.2f}\n",
                    v.backend().c_str(), v.precision().c_str(), v.device().c_str(), n, batch, repeat, open_s,
                    n / median(e2e), n / median(prep), batch / median(back));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "faceverify_bench: error: %s\n", e.what());
        return 2;
    }
    return 0;
}
