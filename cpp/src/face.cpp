// Detection post-processing (engine/detect.py) and alignment (engine/align.py).
// The Python code computes in numpy float32 in places (NumPy 2 keeps a float32
// array float32 when a Python float joins it); the same steps are done in
// float here, so identical detector outputs give identical keypoints.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <opencv2/imgproc.hpp>

#include "internal.h"

namespace fv {

float Face::size() const {
    float ex = (keypoints[0] + keypoints[2]) / 2, ey = (keypoints[1] + keypoints[3]) / 2;
    float dx = keypoints[6] - ex, dy = keypoints[7] - ey;
    return std::sqrt(dx * dx + dy * dy);
}

bool Face::upright() const {
    // The mouth below the eyes' midpoint, within half the eye distance along
    // the eye line, and the face tilted at most 45 degrees from the vertical:
    // BlazeFace still fires on faces turned 90/180 degrees, with keypoints
    // that break this (measured in engine/detect.py, Face.upright).
    double e0x = keypoints[0], e0y = keypoints[1], e1x = keypoints[2], e1y = keypoints[3];
    double mx = keypoints[6], my = keypoints[7];
    double span = std::hypot(e1x - e0x, e1y - e0y);
    if (span < 1e-6) return false;
    double ux = (e1x - e0x) / span, uy = (e1y - e0y) / span;
    double rx = mx - (e0x + e1x) / 2, ry = my - (e0y + e1y) / 2;
    constexpr double max_tilt_cos = 0.70710678118654752;  // cos(45 degrees)
    return std::abs(rx * ux + ry * uy) <= 0.5 * span && (rx * -uy + ry * ux) > 0 &&
           ry >= max_tilt_cos * std::hypot(rx, ry);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// A clone with the FMA instruction, picked at load time where the CPU has it
// (std::fma is otherwise a libm call); both give the same, exactly rounded, results.
__attribute__((target_clones("fma", "default")))
#endif
cv::Mat warp_affine_linear(const cv::Mat& src, const std::array<double, 6>& forward, int size) {
    // Bilinear warp with a black border, computed as the Python runtime's
    // cv2.warpAffine does it on x86 (pip's OpenCV 5 hands 8-bit 3-channel
    // bilinear warps to Intel IPP): the inverse matrix and the source
    // coordinates in double, the fractions and the two-step interpolation in
    // float (fused multiply-adds), rounded half to even. Measured against
    // cv2 5.1 on 40 random LFW warps: 20 of 1.2M values differ, all exact .5
    // ties. Done here, not with the system's cv::warpAffine, because OpenCV
    // <= 4.10 (Debian 12, JetPack 6) uses 5-bit fixed-point weights and differs
    // by one level on ~5% of pixels: enough to move the detector's keypoints
    // and the INT8 model's embeddings (one pixel one level off moves an INT8
    // embedding to cosine ~0.9998).
    CV_Assert(src.type() == CV_8UC3);
    const double* f = forward.data();
    double det = f[0] * f[4] - f[1] * f[3];
    det = det != 0 ? 1. / det : 0.;
    const double a00 = f[4] * det, a01 = -f[1] * det, a10 = -f[3] * det, a11 = f[0] * det;
    const double b0 = -a00 * f[2] - a01 * f[5], b1 = -a10 * f[2] - a11 * f[5];
    const int cols = src.cols, rows = src.rows;
    cv::Mat dst(size, size, CV_8UC3);
    for (int y = 0; y < size; ++y) {
        uint8_t* out = dst.ptr<uint8_t>(y);
        for (int x = 0; x < size; ++x, out += 3) {
            const double sx = a00 * x + a01 * y + b0, sy = a10 * x + a11 * y + b1;
            const double fx = std::floor(sx), fy = std::floor(sy);
            // A pixel or more outside: border (tested in floating point: a huge coordinate never overflows an int).
            if (!(fx >= -1 && fx < cols && fy >= -1 && fy < rows)) {
                out[0] = out[1] = out[2] = 0;
                continue;
            }
            const float ax = static_cast<float>(sx - fx), ay = static_cast<float>(sy - fy);
            const int ix = static_cast<int>(fx), iy = static_cast<int>(fy);
            float p[4][3];  // (top-left, top-right, bottom-left, bottom-right) x channel
            if (ix >= 0 && iy >= 0 && ix < cols - 1 && iy < rows - 1) {
                const uint8_t* r0 = src.ptr<uint8_t>(iy) + 3 * ix;
                const uint8_t* r1 = r0 + src.step;
                for (int c = 0; c < 3; ++c) p[0][c] = r0[c], p[1][c] = r0[3 + c], p[2][c] = r1[c], p[3][c] = r1[3 + c];
            } else {  // on the edge: neighbours outside the image are black
                for (int k = 0; k < 4; ++k) {
                    const int xx = ix + (k & 1), yy = iy + (k >> 1);
                    const bool in = xx >= 0 && xx < cols && yy >= 0 && yy < rows;
                    for (int c = 0; c < 3; ++c) p[k][c] = in ? src.ptr<uint8_t>(yy)[3 * xx + c] : 0.f;
                }
            }
            for (int c = 0; c < 3; ++c) {
                const float top = std::fma(ax, p[1][c] - p[0][c], p[0][c]);
                const float bottom = std::fma(ax, p[3][c] - p[2][c], p[2][c]);
                // Round half to even without a libm call: adding and removing 1.5 * 2^23
                // leaves the nearest integer (default rounding mode; exact below 2^22).
                const float v = std::fma(ay, bottom - top, top) + 12582912.f - 12582912.f;
                out[c] = static_cast<uint8_t>(v < 0.f ? 0.f : v > 255.f ? 255.f : v);
            }
        }
    }
    return dst;
}

Letterbox letterbox(const cv::Mat& rgb, int size, int zoom) {
    // Pad to a centred square (zoom x the longer side) with black and resize:
    // a source pixel (x, y) lands at ((x + pad_x) * scale, (y + pad_y) * scale).
    Letterbox out;
    const int side = std::max(rgb.rows, rgb.cols) * zoom;
    out.pad_x = (side - rgb.cols) / 2.0;
    out.pad_y = (side - rgb.rows) / 2.0;
    out.scale = static_cast<double>(size) / side;
    // engine/detect.py builds this matrix in float32: round the same way. (It asks
    // warpAffine for INTER_AREA when shrinking, which warpAffine runs as bilinear.)
    const double s = static_cast<float>(out.scale);
    out.square = warp_affine_linear(rgb, {s, 0.0, static_cast<float>(out.pad_x * out.scale), 0.0, s,
                                          static_cast<float>(out.pad_y * out.scale)}, size);
    return out;
}

namespace {

using Row = std::array<float, 17>;

// numpy's float32 sum of a contiguous 1-D array (pairwise, 8 lanes below 128 values).
float numpy_sum(const std::vector<float>& a) {
    const size_t n = a.size();
    if (n < 8) {
        float res = 0.f;
        for (float v : a) res += v;
        return res;
    }
    if (n > 128) {  // pairwise recursion over halves (never reached by a few detections)
        size_t half = n / 2;
        half -= half % 8;
        return numpy_sum({a.begin(), a.begin() + static_cast<long>(half)}) +
               numpy_sum({a.begin() + static_cast<long>(half), a.end()});
    }
    float r[8];
    std::copy(a.begin(), a.begin() + 8, r);
    size_t i = 8;
    for (; i < n - n % 8; i += 8)
        for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
}

}  // namespace

std::vector<Row> weighted_nms(std::vector<Row> rows, float iou_threshold) {
    // MediaPipe's blending: detections overlapping the best one are averaged
    // by score (steadier keypoints than plain NMS); the best one's score is kept.
    std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a[16] > b[16]; });
    const size_t n = rows.size();
    std::vector<std::array<float, 4>> corners(n);
    for (size_t k = 0; k < n; ++k) {
        const Row& r = rows[k];
        corners[k] = {r[0] - r[2] / 2, r[1] - r[3] / 2, r[0] + r[2] / 2, r[1] + r[3] / 2};
    }
    std::vector<bool> left(n, true);
    std::vector<Row> out;
    for (size_t i = 0; i < n; ++i) {
        if (!left[i]) continue;
        const auto& b = corners[i];
        const float area = (b[2] - b[0]) * (b[3] - b[1]);
        std::vector<size_t> group;
        for (size_t k = 0; k < n; ++k) {
            if (!left[k]) continue;
            const auto& c = corners[k];
            float iw = std::max(std::min(b[2], c[2]) - std::max(b[0], c[0]), 0.f);
            float ih = std::max(std::min(b[3], c[3]) - std::max(b[1], c[1]), 0.f);
            float inter = iw * ih;
            float areas = (c[2] - c[0]) * (c[3] - c[1]);
            float iou = inter / std::max(area + areas - inter, 1e-12f);
            if (iou >= iou_threshold || k == i) group.push_back(k);
        }
        Row blended{};
        std::vector<float> weights;
        for (size_t k : group) {
            weights.push_back(rows[k][16]);
            for (int j = 0; j < 16; ++j) blended[j] += rows[k][j] * rows[k][16];
        }
        const float total = numpy_sum(weights);
        for (int j = 0; j < 16; ++j) blended[j] /= total;
        blended[16] = rows[i][16];
        out.push_back(blended);
        for (size_t k : group) left[k] = false;
    }
    return out;
}

std::vector<Face> decode_faces(const float* raw, int anchors, int detector_size, const Letterbox& box,
                               float score_threshold, float iou_threshold) {
    std::vector<Row> rows;
    for (int a = 0; a < anchors; ++a) {
        const float* r = raw + static_cast<size_t>(a) * DETECTION_VALUES;
        if (r[16] >= score_threshold) {
            Row row;
            std::copy(r, r + DETECTION_VALUES, row.begin());
            rows.push_back(row);
        }
    }
    std::vector<Face> faces;
    if (rows.empty()) return faces;
    // [0, 1] of the square -> source pixels. Python multiplies float32 values by a
    // Python float (kept float32), then subtracts the pads in float64 for keypoints.
    const float px = static_cast<float>(detector_size / box.scale);
    const float pad_x = static_cast<float>(box.pad_x), pad_y = static_cast<float>(box.pad_y);
    for (const Row& r : weighted_nms(rows, iou_threshold)) {
        Face f;
        float cx = r[0] * px - pad_x, cy = r[1] * px - pad_y, w = r[2] * px, h = r[3] * px;
        f.box = {cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2};
        f.score = r[16];
        for (int k = 0; k < 12; ++k)
            f.keypoints[k] = static_cast<float>(static_cast<double>(r[4 + k] * px) - (k % 2 ? box.pad_y : box.pad_x));
        faces.push_back(f);
    }
    return faces;
}

std::vector<int> tile_origins(int length, int side) {
    if (length <= side) return {0};
    const int n = static_cast<int>(std::ceil((length - side) / (0.75 * side))) + 1;
    std::vector<int> out;
    for (int i = 0; i < n; ++i)  // Python's round(): half to even, as nearbyint in the default mode
        out.push_back(static_cast<int>(std::nearbyint(static_cast<double>(i) * (length - side) / (n - 1))));
    return out;
}

namespace {

// engine/detect.py _iou in float64.
double box_iou(const std::array<float, 4>& a, const std::array<float, 4>& b) {
    const double iw = std::max(std::min<double>(a[2], b[2]) - std::max<double>(a[0], b[0]), 0.0);
    const double ih = std::max(std::min<double>(a[3], b[3]) - std::max<double>(a[1], b[1]), 0.0);
    const double inter = iw * ih;
    const double area = (double(a[2]) - a[0]) * (double(a[3]) - a[1]);
    const double areas = (double(b[2]) - b[0]) * (double(b[3]) - b[1]);
    return inter / std::max(area + areas - inter, 1e-12);
}

// One pass of the detector over a region of the image; faces in the region's pixels.
std::vector<Face> detect_in(const cv::Mat& rgb, const cv::Rect& region, Runner& detector, std::vector<float>& raw) {
    Letterbox box = letterbox(rgb(region), detector.input_size());
    detector.run(box.square.ptr<uint8_t>(), 1, raw.data());
    return decode_faces(raw.data(), detector.output_dim() / DETECTION_VALUES, detector.input_size(), box);
}

void shift(Face& f, int x, int y) {  // float32 sums, as engine/detect.py _shifted
    for (int k = 0; k < 4; ++k) f.box[k] += static_cast<float>(k % 2 ? y : x);
    for (int k = 0; k < 12; ++k) f.keypoints[k] += static_cast<float>(k % 2 ? y : x);
}

}  // namespace

std::vector<Face> refine_faces(const cv::Mat& rgb, std::vector<Face> faces, Runner& detector, double iou_threshold) {
    const int w = rgb.cols, h = rgb.rows;
    std::vector<float> raw(static_cast<size_t>(detector.output_dim()));
    for (Face& face : faces) {
        const double x0 = face.box[0], y0 = face.box[1], x1 = face.box[2], y1 = face.box[3];
        const double half = REFINE_FRAMING * std::max(x1 - x0, y1 - y0) / 2, cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
        const int rx0 = std::max(0, static_cast<int>(std::nearbyint(cx - half)));
        const int ry0 = std::max(0, static_cast<int>(std::nearbyint(cy - half)));
        const int rx1 = std::min(w, static_cast<int>(std::nearbyint(cx + half)));
        const int ry1 = std::min(h, static_cast<int>(std::nearbyint(cy + half)));
        if (std::min(rx1 - rx0, ry1 - ry0) < 8) continue;
        if (!(std::max(face.box[2] - face.box[0], face.box[3] - face.box[1]) < REFINE_BELOW * std::max(w, h)))
            continue;
        std::vector<Face> again = detect_in(rgb, cv::Rect(rx0, ry0, rx1 - rx0, ry1 - ry0), detector, raw);
        double best = -1;
        size_t pick = 0;
        for (size_t k = 0; k < again.size(); ++k) {
            shift(again[k], rx0, ry0);
            const double iou = box_iou(face.box, again[k].box);
            if (iou > best) best = iou, pick = k;
        }
        if (!again.empty() && best >= iou_threshold) face = again[pick];
    }
    return faces;
}

std::vector<Face> detect_tiled(const cv::Mat& rgb, Runner& detector, double iou_threshold) {
    const int w = rgb.cols, h = rgb.rows;
    std::vector<float> raw(static_cast<size_t>(detector.output_dim()));
    for (int side = std::max(w, h) / 2; side >= TILE_MIN_INPUTS * detector.input_size(); side /= 2) {
        std::vector<Face> faces;
        for (int y : tile_origins(h, side))
            for (int x : tile_origins(w, side)) {
                cv::Rect tile(x, y, std::min(side, w - x), std::min(side, h - y));
                for (Face f : detect_in(rgb, tile, detector, raw)) {
                    const float m = 2.f;  // a detection cut by a tile's inner edge is dropped
                    if ((x > 0 && !(f.box[0] > m)) || (y > 0 && !(f.box[1] > m)) ||
                        (x + side < w && !(f.box[2] < side - m)) || (y + side < h && !(f.box[3] < side - m)))
                        continue;
                    shift(f, x, y);
                    faces.push_back(f);
                }
            }
        if (faces.empty()) continue;
        std::stable_sort(faces.begin(), faces.end(), [](const Face& a, const Face& b) { return a.score > b.score; });
        std::vector<Face> kept;
        for (const Face& f : faces) {
            bool overlaps = false;
            for (const Face& k : kept) overlaps = overlaps || box_iou(f.box, k.box) >= iou_threshold;
            if (!overlaps) kept.push_back(f);
        }
        return kept;
    }
    return {};
}

size_t main_face(const std::vector<Face>& faces, int width, int height) {
    // Among faces at least half the largest's size, the most central: plain
    // "largest" picks a bystander in news photos (LFW) as often as the subject.
    float big = 0.f;
    for (const auto& f : faces) big = std::max(big, f.size());
    const double cx = width / 2.0, cy = height / 2.0;
    size_t best = faces.size();
    double best_d = 0;
    for (size_t k = 0; k < faces.size(); ++k) {
        if (!(faces[k].size() >= 0.5 * big)) continue;
        const auto& b = faces[k].box;
        double d = std::hypot(static_cast<double>((b[0] + b[2]) / 2) - cx, static_cast<double>((b[1] + b[3]) / 2) - cy);
        if (best == faces.size() || d < best_d) {
            best = k;
            best_d = d;
        }
    }
    return best;
}

Points4 template_points(const Points4& reference, int size, double margin) {
    // Scaled from the 112 px reference to `size`, widened by `margin` around the centre.
    if (margin < 0) throw Error("margin must be >= 0, got " + std::to_string(margin));
    const double centre = 112 / 2.0;
    Points4 out;
    for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 2; ++j)
            out[k][j] = ((reference[k][j] - centre) / (1.0 + margin) + centre) * (size / 112.0);
    return out;
}

std::array<double, 6> similarity_transform(const double* src, const double* dst, int n) {
    // Umeyama's least-squares similarity without reflection. In 2-D its SVD
    // has a closed form: scale * rotation = [[a, -b], [b, a]] with
    // a = sum(s.d) / sum|s|^2, b = sum(s x d) / sum|s|^2 over centred points.
    if (n < 2) throw Error("need matching (N>=2, 2) point sets");
    double msx = 0, msy = 0, mdx = 0, mdy = 0;
    for (int k = 0; k < n; ++k) {
        msx += src[2 * k];
        msy += src[2 * k + 1];
        mdx += dst[2 * k];
        mdy += dst[2 * k + 1];
    }
    msx /= n, msy /= n, mdx /= n, mdy /= n;
    double var = 0, a = 0, b = 0;
    for (int k = 0; k < n; ++k) {
        double sx = src[2 * k] - msx, sy = src[2 * k + 1] - msy;
        double dx = dst[2 * k] - mdx, dy = dst[2 * k + 1] - mdy;
        var += sx * sx + sy * sy;
        a += sx * dx + sy * dy;
        b += sx * dy - sy * dx;
    }
    if (var / n < 1e-12) throw Error("source points coincide: no transform");
    a /= var, b /= var;
    return {a, -b, mdx - (a * msx - b * msy), b, a, mdy - (b * msx + a * msy)};
}

cv::Mat warp(const cv::Mat& rgb, const std::array<double, 6>& m, int size) {
    // Bilinear sampling aliases when it shrinks by more than 2x (a face in a
    // large photo): shrink first with INTER_AREA by an integer factor and fold
    // that into the matrix (area pixel i covers source [i*f, (i+1)*f)).
    std::array<double, 6> mat = m;
    const double scale = std::sqrt(std::abs(m[0] * m[4] - m[1] * m[3]));
    const double ratio = scale > 0 ? 0.5 / scale : 1.0;
    const int factor = ratio >= 1e6 ? 1000000 : static_cast<int>(ratio);
    cv::Mat src = rgb;
    if (factor >= 2) {
        cv::resize(rgb, src, cv::Size(std::max(1, rgb.cols / factor), std::max(1, rgb.rows / factor)), 0, 0,
                   cv::INTER_AREA);
        const double fx = static_cast<double>(rgb.cols) / src.cols, fy = static_cast<double>(rgb.rows) / src.rows;
        const double ox = 0.5 * fx - 0.5, oy = 0.5 * fy - 0.5;
        mat = {m[0] * fx, m[1] * fy, m[0] * ox + m[1] * oy + m[2], m[3] * fx, m[4] * fy, m[3] * ox + m[4] * oy + m[5]};
    }
    return warp_affine_linear(src, mat, size);
}

}  // namespace fv
