// The canaries of engine/canary.py: the same face-like drawings (SplitMix64 and
// float64 soft-edged ellipses, no OpenCV drawing), embedded when a model opens and
// compared with the FP32 embeddings convert stored in model.json. A precision that
// drifts on this CPU, or a network changed behind a matching digest, is refused.
#include <algorithm>
#include <cmath>
#include <limits>

#include "internal.h"

namespace fv {

namespace {

struct SplitMix64 {
    uint64_t state;
    uint64_t next() {
        state += 0x9E3779B97F4A7C15ULL;
        uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    double uniform(double low, double high) { return low + (high - low) * (static_cast<double>(next() >> 11) * 0x1p-53); }
};

using Colour = std::array<double, 3>;

// engine/canary.py _paint: blend `colour` inside a soft-edged ellipse (one-pixel ramp).
void paint(std::vector<double>& img, int size, double cx, double cy, double rx, double ry, const Colour& colour,
           bool upper_only = false) {
    const double r = std::min(rx, ry);
    for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) {
            const double dx = (x - cx) / rx, dy = (y - cy) / ry;
            const double d = std::sqrt(dx * dx + dy * dy);
            double m = std::clamp((1.0 - d) * r + 0.5, 0.0, 1.0);
            if (upper_only) m = m * std::clamp(cy - y + 0.5, 0.0, 1.0);
            double* px = &img[(static_cast<size_t>(y) * size + x) * 3];
            for (int c = 0; c < 3; ++c) px[c] = px[c] * (1.0 - m) + colour[c] * m;
        }
}

}  // namespace

std::vector<uint8_t> canary_images(int size, int count, uint64_t seed) {
    SplitMix64 rng{seed};
    const size_t pixels = static_cast<size_t>(size) * size;
    std::vector<uint8_t> out(static_cast<size_t>(count) * pixels * 3);
    const double s = size / 112.0;
    std::vector<double> img(pixels * 3);
    for (int i = 0; i < count; ++i) {
        Colour bg;
        for (auto& v : bg) v = rng.uniform(30, 220);
        const double gx = rng.uniform(-40, 40), gy = rng.uniform(-40, 40);
        for (int y = 0; y < size; ++y)
            for (int x = 0; x < size; ++x)
                for (int c = 0; c < 3; ++c)
                    img[(static_cast<size_t>(y) * size + x) * 3 + c] =
                        bg[c] + gx * (static_cast<double>(x) / size - 0.5) + gy * (static_cast<double>(y) / size - 0.5);
        Colour skin;
        skin[0] = rng.uniform(120, 235);
        skin[1] = rng.uniform(80, 190);
        skin[2] = rng.uniform(60, 170);
        Colour hair;
        for (auto& v : hair) v = rng.uniform(0, 120);
        const double cx = size / 2.0 + rng.uniform(-4, 4) * s;
        const double cy = size / 2.0 + rng.uniform(2, 8) * s;
        const double ax = rng.uniform(30, 38) * s;
        const double ay = rng.uniform(40, 48) * s;
        paint(img, size, cx, cy - 8 * s, ax + 4 * s, ay, hair, true);
        paint(img, size, cx, cy, ax, ay, skin);
        const double eye_y = cy - rng.uniform(8, 14) * s;
        const double eye_dx = rng.uniform(15, 20) * s;
        for (double side : {-1.0, 1.0}) {
            const double ex = cx + side * eye_dx;
            paint(img, size, ex, eye_y, 7 * s, 4 * s, {240.0, 240.0, 240.0});
            paint(img, size, ex, eye_y, 3 * s, 3 * s, {40.0, 30.0, 20.0});
            paint(img, size, ex, eye_y - 8.5 * s, 8 * s, 1.2 * s, hair);
        }
        const double nose_top = eye_y + 4 * s, nose_end = cy + 10 * s;
        paint(img, size, cx - 1.5 * s, (nose_top + nose_end) / 2, 1.6 * s, (nose_end - nose_top) / 2,
              {0.8 * skin[0], 0.8 * skin[1], 0.8 * skin[2]});
        const double mouth_y = cy + rng.uniform(20, 26) * s;
        const double mouth_w = rng.uniform(9, 13) * s;
        paint(img, size, cx, mouth_y, mouth_w, 2 * s, {150.0, 60.0, 60.0});
        uint8_t* dst = out.data() + static_cast<size_t>(i) * pixels * 3;
        for (size_t k = 0; k < pixels * 3; ++k) dst[k] = static_cast<uint8_t>(std::clamp(std::nearbyint(img[k]), 0.0, 255.0));
    }
    return out;
}

double canary_cosine(Runner& runner, const Canary& record, int size) {
    const int dim = runner.output_dim();
    if (dim != static_cast<int>(record.fp32.empty() ? 0 : record.fp32[0].size()))
        return std::numeric_limits<double>::quiet_NaN();
    std::vector<uint8_t> images = canary_images(size, record.count, record.seed);
    const size_t image_bytes = static_cast<size_t>(size) * size * 3;
    std::vector<float> got(static_cast<size_t>(record.count) * dim);
    for (int start = 0; start < record.count; start += runner.max_batch()) {
        const int n = std::min(runner.max_batch(), record.count - start);
        runner.run(images.data() + static_cast<size_t>(start) * image_bytes, n, got.data() + static_cast<size_t>(start) * dim);
    }
    double worst = std::numeric_limits<double>::infinity();
    for (int i = 0; i < record.count; ++i) {
        double dot = 0, ng = 0, nr = 0;
        for (int k = 0; k < dim; ++k) {
            const double g = got[static_cast<size_t>(i) * dim + k], r = record.fp32[static_cast<size_t>(i)][static_cast<size_t>(k)];
            if (!std::isfinite(g)) return std::numeric_limits<double>::quiet_NaN();
            dot += g * r;
            ng += g * g;
            nr += r * r;
        }
        worst = std::min(worst, dot / std::max(std::sqrt(ng) * std::sqrt(nr), 1e-12));
    }
    return worst;
}

}  // namespace fv
