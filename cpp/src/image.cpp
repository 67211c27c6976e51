// Reading and decoding image files as engine/preprocess.py does: the file is
// checked before it is read, the size is read from the header before a pixel
// is decoded (a decoder given a hostile header may allocate anything), then
// OpenCV decodes and the result becomes 8-bit RGB. Messages match the Python
// runtime's, so both runners say the same thing about the same bad file.
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <initializer_list>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "internal.h"

namespace fv {

std::string thousands(long long n) {
    std::string digits = std::to_string(n < 0 ? -n : n), out;
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return (n < 0 ? "-" : "") + out;
}

// ------------------------------------------------------------- files

std::string file_kind(unsigned mode) {
    return S_ISREG(mode)    ? "a regular file"
           : S_ISDIR(mode)  ? "a directory"
           : S_ISFIFO(mode) ? "a FIFO (named pipe)"
           : S_ISSOCK(mode) ? "a socket"
           : S_ISCHR(mode)  ? "a character device"
           : S_ISBLK(mode)  ? "a block device"
                            : "a special file";
}

namespace {

std::string os_reason(int err) {
    if (err == ELOOP) return "symlink loop (too many levels of symbolic links)";
    if (err == ENOTDIR) return "no such file (a parent is not a folder)";
    return std::string("cannot read (") + std::strerror(err) + ")";
}

void check_stat(const std::string& path, const struct stat& st) {
    if (!S_ISREG(st.st_mode)) throw Error(path + ": is " + file_kind(st.st_mode) + ", not an image");
    if (st.st_size > MAX_FILE_BYTES)
        throw Error(path + ": " + thousands(st.st_size) + " bytes, over the " + thousands(MAX_FILE_BYTES) +
                    " byte limit for an image");
}

}  // namespace

std::vector<uint8_t> read_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        int err = errno;
        struct stat lst {};
        if (err == ENOENT && ::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
            char target[PATH_MAX + 1] = {};
            ssize_t k = ::readlink(path.c_str(), target, PATH_MAX);
            throw Error(path + ": broken symlink (to " + std::string(target, k > 0 ? static_cast<size_t>(k) : 0) + ")");
        }
        throw Error(path + ": " + (err == ENOENT ? std::string("no such file") : os_reason(err)));
    }
    check_stat(path, st);
    // Non-blocking: a FIFO swapped in after the stat must not wait for a writer forever.
    int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw Error(path + ": " + (errno == ENOENT ? std::string("no such file") : os_reason(errno)));
    std::vector<uint8_t> data;
    try {
        if (::fstat(fd, &st) != 0) throw Error(path + ": " + os_reason(errno));
        check_stat(path, st);  // what is read is what was checked
        data.resize(static_cast<size_t>(st.st_size) + 1);
        size_t got = 0;
        while (got < data.size()) {
            ssize_t k = ::read(fd, data.data() + got, data.size() - got);
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) throw Error(path + ": " + os_reason(errno));
            if (k == 0) break;
            got += static_cast<size_t>(k);
            if (got == data.size() && static_cast<long long>(got) <= MAX_FILE_BYTES)
                data.resize(std::min<size_t>(data.size() * 2, MAX_FILE_BYTES + 1));  // the file grew
        }
        data.resize(got);
    } catch (...) {
        ::close(fd);
        throw;
    }
    ::close(fd);
    if (static_cast<long long>(data.size()) > MAX_FILE_BYTES)
        throw Error(path + ": over the " + thousands(MAX_FILE_BYTES) + " byte limit for an image");
    return data;
}

// ------------------------------------------------------------- formats and header sizes

namespace {

bool starts(const std::vector<uint8_t>& d, size_t at, const char* sig, size_t n) {
    return d.size() >= at + n && std::memcmp(d.data() + at, sig, n) == 0;
}
uint32_t be16(const uint8_t* p) { return static_cast<uint32_t>(p[0]) << 8 | p[1]; }
uint32_t le16(const uint8_t* p) { return static_cast<uint32_t>(p[1]) << 8 | p[0]; }
uint32_t be32(const uint8_t* p) { return be16(p) << 16 | be16(p + 2); }
uint32_t le32(const uint8_t* p) { return le16(p + 2) << 16 | le16(p); }
bool is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// An ISO-BMFF ftyp box naming one of `names` as its major or a compatible brand.
bool has_brand(const std::vector<uint8_t>& d, std::initializer_list<const char*> names) {
    size_t size = d.size() >= 4 ? be32(d.data()) : 0;
    size_t end = std::min<size_t>(std::max<size_t>(size, 16), 4096);
    end = std::min(end, d.size());
    for (size_t i = 8; i + 4 <= end; i += 4)
        for (const char* name : names)
            if (std::memcmp(d.data() + i, name, 4) == 0) return true;
    return false;
}
bool avif_brand(const std::vector<uint8_t>& d) { return has_brand(d, {"avif", "avis"}); }
// HEIC/HEIF (an iPhone's default photo format), which OpenCV does not decode (engine/preprocess.py HEIF_BRANDS).
bool heif_brand(const std::vector<uint8_t>& d) {
    return has_brand(d, {"heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1"});
}

using Size = std::pair<long long, long long>;
const Size NO_SIZE{-1, -1};

Size jpeg_size(const std::vector<uint8_t>& d) {
    size_t pos = 2;  // after SOI
    while (pos + 4 <= d.size()) {
        if (d[pos] != 0xFF) return NO_SIZE;
        uint8_t m = d[pos + 1];
        if (m == 0xFF) {  // fill byte
            ++pos;
            continue;
        }
        if (m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) {  // markers without a length
            pos += 2;
            continue;
        }
        if (m == 0xD9 || m == 0xDA) return NO_SIZE;  // end of image / scan before any frame header
        uint32_t len = be16(&d[pos + 2]);
        bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
        if (sof) {
            if (pos + 9 > d.size() || len < 7) return NO_SIZE;
            return {be16(&d[pos + 7]), be16(&d[pos + 5])};
        }
        // A length under 2 is malformed, but Pillow (the Python side's header reader) and libjpeg read no
        // payload and go on after the length bytes, and decode the image: so does this.
        pos += 2 + std::max<uint32_t>(len, 2);
    }
    return NO_SIZE;
}

Size png_size(const std::vector<uint8_t>& d) {
    if (d.size() < 24 || !starts(d, 12, "IHDR", 4)) return NO_SIZE;
    return {be32(&d[16]), be32(&d[20])};
}

Size bmp_size(const std::vector<uint8_t>& d) {
    if (d.size() < 26) return NO_SIZE;
    uint32_t header = le32(&d[14]);
    if (header == 12) return {le16(&d[18]), le16(&d[20])};  // OS/2 v1
    if (header < 40) return NO_SIZE;
    long long h = static_cast<int32_t>(le32(&d[22]));
    return {static_cast<int32_t>(le32(&d[18])), h < 0 ? -h : h};  // negative height = top-down rows
}

Size webp_size(const std::vector<uint8_t>& d) {
    if (d.size() < 30) return NO_SIZE;
    if (starts(d, 12, "VP8 ", 4)) {
        if (d[23] != 0x9d || d[24] != 0x01 || d[25] != 0x2a) return NO_SIZE;
        return {le16(&d[26]) & 0x3fff, le16(&d[28]) & 0x3fff};
    }
    if (starts(d, 12, "VP8L", 4)) {
        if (d[20] != 0x2f) return NO_SIZE;
        uint32_t bits = le32(&d[21]);
        return {(bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1};
    }
    if (starts(d, 12, "VP8X", 4)) {
        auto le24 = [&](size_t at) { return static_cast<long long>(d[at] | d[at + 1] << 8 | d[at + 2] << 16); };
        return {le24(24) + 1, le24(27) + 1};
    }
    return NO_SIZE;
}

// The first IFD of a TIFF (the page OpenCV decodes): where its entries are and how to read them.
struct TiffIfd {
    bool little = true, big = false;
    uint64_t first = 0, count = 0, step = 12;
    uint32_t u16(const std::vector<uint8_t>& d, size_t at) const { return little ? le16(&d[at]) : be16(&d[at]); }
    uint32_t u32(const std::vector<uint8_t>& d, size_t at) const { return little ? le32(&d[at]) : be32(&d[at]); }
    uint64_t u64(const std::vector<uint8_t>& d, size_t at) const {
        uint64_t a = u32(d, at), b = u32(d, at + 4);
        return little ? (b << 32 | a) : (a << 32 | b);
    }
};

// engine.preprocess._tiff_entries: false when the IFD runs past the data.
bool tiff_ifd(const std::vector<uint8_t>& d, TiffIfd& t) {
    t.little = d[0] == 'I';
    t.big = d[2] == '+' || d[3] == '+';
    if (t.big) {
        if (d.size() < 16) return false;
        uint64_t ifd = t.u64(d, 8);
        if (ifd > d.size() || d.size() - ifd < 8) return false;
        t.count = t.u64(d, ifd);
        t.first = ifd + 8;
        t.step = 20;
    } else {
        if (d.size() < 8) return false;
        uint64_t ifd = t.u32(d, 4);
        if (ifd > d.size() || d.size() - ifd < 2) return false;
        t.count = t.u16(d, ifd);
        t.first = ifd + 2;
        t.step = 12;
    }
    return t.count <= d.size() && t.first + t.count * t.step <= d.size();
}

// engine.preprocess._tiff_bytes_per_pixel: SamplesPerPixel x the widest BitsPerSample in bytes; 8 when unreadable.
long long tiff_bytes_per_pixel(const std::vector<uint8_t>& d) {
    TiffIfd t;
    if (!tiff_ifd(d, t)) return 8;
    long long samples = 1, bits = 8;
    const size_t inline_bytes = t.big ? 8 : 4;
    for (uint64_t k = 0; k < t.count; ++k) {
        size_t at = t.first + k * t.step;
        uint32_t tag = t.u16(d, at), kind = t.u16(d, at + 2);
        uint64_t n = t.big ? t.u64(d, at + 4) : t.u32(d, at + 4);
        size_t value_at = at + (t.big ? 12 : 8);
        if (tag == 277 && kind == 3 && n >= 1) {
            samples = t.u16(d, value_at);
        } else if (tag == 258 && kind == 3 && n >= 1 && n <= 64) {
            uint64_t where = 2 * n <= inline_bytes ? value_at : (t.big ? t.u64(d, value_at) : t.u32(d, value_at));
            if (where > d.size() || d.size() - where < 2 * n) return 8;
            bits = 0;
            for (uint64_t j = 0; j < n; ++j) bits = std::max<long long>(bits, t.u16(d, where + 2 * j));
        }
    }
    return std::max<long long>(1, samples) * std::max<long long>(1, (bits + 7) / 8);
}

// First IFD (the page OpenCV decodes); tiles are allocated whole, so huge tiles are refused too.
Size tiff_size(const std::vector<uint8_t>& d, const std::string& source) {
    TiffIfd t;
    if (!tiff_ifd(d, t)) return NO_SIZE;
    const bool big = t.big;
    const uint64_t first = t.first, count = t.count, step = t.step;
    auto u16 = [&](size_t at) { return t.u16(d, at); };
    auto u32 = [&](size_t at) { return t.u32(d, at); };
    auto u64 = [&](size_t at) { return t.u64(d, at); };
    long long tags[4] = {-1, -1, 0, 0};  // width, length, tile width, tile length
    for (uint64_t k = 0; k < count; ++k) {
        size_t at = first + k * step;
        uint32_t tag = u16(at), kind = u16(at + 2);
        int slot = tag == 256 ? 0 : tag == 257 ? 1 : tag == 322 ? 2 : tag == 323 ? 3 : -1;
        if (slot < 0) continue;
        uint64_t n = big ? u64(at + 4) : u32(at + 4);
        size_t value_at = at + (big ? 12 : 8);
        long long value;
        if (n != 1) return NO_SIZE;
        if (kind == 3) value = u16(value_at);
        else if (kind == 4) value = u32(value_at);
        else if (kind == 16 && big) value = static_cast<long long>(std::min<uint64_t>(u64(value_at), LLONG_MAX / 4));
        else return NO_SIZE;
        tags[slot] = std::max(value, tags[slot]);  // duplicate tags count at their largest
    }
    if (tags[0] < 0 || tags[1] < 0) return NO_SIZE;
    if (tags[2] > 0 && tags[3] > 0 && tags[2] > MAX_PIXELS / tags[3])
        throw Error(source + ": TIFF tiles of " + std::to_string(tags[2]) + "x" + std::to_string(tags[3]) +
                    ", over the " + thousands(MAX_PIXELS) + " pixel limit");
    return {tags[0], tags[1]};
}

// P1-P6: magic, then width and height as decimal tokens; '#' comments run to the line end.
Size pnm_size(const std::vector<uint8_t>& d) {
    size_t pos = 2;
    long long v[2];
    for (long long& out : v) {
        while (pos < d.size() && (is_space(d[pos]) || d[pos] == '#')) {
            if (d[pos] == '#')
                while (pos < d.size() && d[pos] != '\n' && d[pos] != '\r') ++pos;
            else
                ++pos;
        }
        size_t start = pos;
        out = 0;
        while (pos < d.size() && std::isdigit(d[pos]) && pos - start < 12) out = out * 10 + (d[pos++] - '0');
        if (pos == start || (pos < d.size() && !is_space(d[pos]) && d[pos] != '#')) return NO_SIZE;
    }
    return {v[0], v[1]};
}

// PAM (P7): "KEY value" lines up to ENDHDR; WIDTH and HEIGHT once each.
Size pam_size(const std::vector<uint8_t>& d) {
    long long w = -1, h = -1;
    size_t pos = 3, end = std::min<size_t>(d.size(), 64 * 1024);
    while (pos < end) {
        size_t nl = pos;
        while (nl < end && d[nl] != '\n') ++nl;
        std::string line(d.begin() + static_cast<long>(pos), d.begin() + static_cast<long>(nl));
        pos = nl + 1;
        if (line.empty() || line[0] == '#') continue;
        if (line == "ENDHDR") return w < 0 || h < 0 ? NO_SIZE : Size{w, h};
        auto sp = line.find(' ');
        std::string key = line.substr(0, sp), value = sp == std::string::npos ? "" : line.substr(sp + 1);
        for (char c : key)
            if (!std::isalpha(static_cast<unsigned char>(c))) return NO_SIZE;
        if (key == "WIDTH" || key == "HEIGHT") {
            long long& slot = key == "WIDTH" ? w : h;
            if (slot >= 0) return NO_SIZE;
            size_t a = value.find_first_not_of(" \t\r"), b = value.find_last_not_of(" \t\r");
            std::string t = a == std::string::npos ? "" : value.substr(a, b - a + 1);
            if (t.empty() || t.size() > 12 || t.find_first_not_of("0123456789") != std::string::npos) return NO_SIZE;
            slot = std::stoll(t);
        }
    }
    return NO_SIZE;
}

// PFM: "PF"/"Pf", width, height, scale, each followed by exactly one whitespace byte.
Size pfm_size(const std::vector<uint8_t>& d) {
    size_t pos = 2, end = std::min<size_t>(d.size(), 128);
    if (pos >= end || !is_space(d[pos++])) return NO_SIZE;
    long long v[2];
    for (long long& out : v) {
        size_t start = pos;
        out = 0;
        while (pos < end && std::isdigit(d[pos]) && pos - start < 12) out = out * 10 + (d[pos++] - '0');
        if (pos == start || pos >= end || !is_space(d[pos++])) return NO_SIZE;
    }
    size_t start = pos;
    if (pos < end && (d[pos] == '-' || d[pos] == '+')) ++pos;
    while (pos < end && pos - start <= 40 && (std::isdigit(d[pos]) || std::strchr(".eE+-", d[pos]))) ++pos;
    if (pos == start || pos >= end || !is_space(d[pos])) return NO_SIZE;
    return {v[0], v[1]};
}

// A PAM header field ("DEPTH", "MAXVAL") as written; "" when absent.
std::string pam_field(const std::vector<uint8_t>& d, const std::string& want) {
    size_t pos = 3, end = std::min<size_t>(d.size(), 64 * 1024);
    while (pos < end) {
        size_t nl = pos;
        while (nl < end && d[nl] != '\n') ++nl;
        std::string line(d.begin() + static_cast<long>(pos), d.begin() + static_cast<long>(nl));
        pos = nl + 1;
        if (line == "ENDHDR") break;
        auto sp = line.find(' ');
        if (sp == std::string::npos || line.substr(0, sp) != want) continue;
        std::string value = line.substr(sp + 1);
        size_t a = value.find_first_not_of(" \t\r"), b = value.find_last_not_of(" \t\r");
        return a == std::string::npos ? "" : value.substr(a, b - a + 1);
    }
    return "";
}

bool all_digits(const std::string& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; }

// engine.preprocess._bytes_per_pixel: what OpenCV allocates per pixel before the conversion to 8-bit RGB.
long long bytes_per_pixel(const std::vector<uint8_t>& d, const std::string& fmt) {
    if (fmt == "TIFF") return tiff_bytes_per_pixel(d);
    if (fmt == "HDR" || fmt == "PFM") return 12;  // float32 RGB
    if (fmt == "PAM") {
        std::string depth = pam_field(d, "DEPTH"), maxval = pam_field(d, "MAXVAL");
        long long channels = all_digits(depth) && depth.size() <= 2 ? std::stoll(depth) : 4;
        bool wide = !all_digits(maxval) || maxval.size() > 9 || std::stoll(maxval) > 255;
        return std::max<long long>(1, channels) * (wide ? 2 : 1);
    }
    if (fmt == "PNG" && d.size() >= 26) {
        long long channels = d[25] == 0 ? 1 : d[25] == 2 || d[25] == 3 ? 3 : d[25] == 4 ? 2 : 4;
        return channels * (d[24] == 16 ? 2 : 1);
    }
    if (fmt == "JPEG2000" || fmt == "PPM") return 8;  // up to 16 bits per sample
    return 4;  // 8-bit, up to 4 channels
}

}  // namespace

std::string image_format(const std::vector<uint8_t>& d) {
    if (starts(d, 0, "\xff\xd8\xff", 3)) return "JPEG";
    if (starts(d, 0, "\x89PNG\r\n\x1a\n", 8)) return "PNG";
    if (starts(d, 0, "BM", 2)) return "BMP";
    if (starts(d, 0, "II*\0", 4) || starts(d, 0, "MM\0*", 4) || starts(d, 0, "II+\0", 4) || starts(d, 0, "MM\0+", 4))
        return "TIFF";
    if (starts(d, 0, "RIFF", 4) && starts(d, 8, "WEBP", 4)) return "WEBP";
    if (starts(d, 0, "\0\0\0\x0cjP  \r\n\x87\n", 12) || starts(d, 0, "\xff\x4f\xff\x51", 4)) return "JPEG2000";
    if (starts(d, 0, "GIF87a", 6) || starts(d, 0, "GIF89a", 6)) return "GIF";
    if (starts(d, 0, "\x59\xa6\x6a\x95", 4)) return "SUN";
    if (starts(d, 4, "ftyp", 4) && avif_brand(d)) return "AVIF";
    if (starts(d, 0, "#?RGBE", 6) || starts(d, 0, "#?RADIANCE", 10)) return "HDR";
    if (d.size() >= 3 && d[0] == 'P' && is_space(d[2])) {
        if (d[1] >= '1' && d[1] <= '6') return "PPM";
        if (d[1] == '7') return "PAM";
        if (d[1] == 'F' || d[1] == 'f') return "PFM";
    }
    return "";
}

std::pair<long long, long long> header_size(const std::vector<uint8_t>& d, const std::string& fmt,
                                            const std::string& source) {
    Size size = NO_SIZE;
    if (fmt == "JPEG") size = jpeg_size(d);
    else if (fmt == "PNG") size = png_size(d);
    else if (fmt == "BMP") size = bmp_size(d);
    else if (fmt == "WEBP") size = webp_size(d);
    else if (fmt == "TIFF") size = tiff_size(d, source);
    else if (fmt == "GIF" && d.size() >= 10) size = {le16(&d[6]), le16(&d[8])};
    else if (fmt == "SUN" && d.size() >= 12) size = {be32(&d[4]), be32(&d[8])};
    else if (fmt == "PPM") size = pnm_size(d);
    else if (fmt == "PAM") size = pam_size(d);
    else if (fmt == "PFM") size = pfm_size(d);
    else if (fmt == "JPEG2000" || fmt == "AVIF" || fmt == "HDR")
        // Their headers take a box/marker parser each; rare for face photos, so refused here.
        throw Error(source + ": " + fmt + " images are not supported by the C++ runner (the Python runtime reads "
                    "them); convert to JPEG or PNG");
    if (size == NO_SIZE) throw Error(source + ": damaged " + fmt + " header (cannot read the image size)");
    return size;
}

bool truncated_jpeg(const std::vector<uint8_t>& d) {
    // libjpeg fills a truncated scan with grey and only warns; a missing EOI
    // (FFD9) is the cheap tell. It usually ends the file; after camera trailers,
    // look for it after the last scan header (FFDA): entropy-coded data never
    // contains FFD9 (0xFF is stuffed).
    if (!starts(d, 0, "\xff\xd8", 2)) return false;
    auto find = [&](size_t from, uint8_t b) {
        for (size_t i = from; i + 1 < d.size(); ++i)
            if (d[i] == 0xFF && d[i + 1] == b) return static_cast<long long>(i);
        return -1LL;
    };
    if (find(d.size() > 64 ? d.size() - 64 : 0, 0xD9) >= 0) return false;
    long long sos = -1;
    for (size_t i = d.size() - 1; i-- > 0;)
        if (d[i] == 0xFF && d[i + 1] == 0xDA) {
            sos = static_cast<long long>(i);
            break;
        }
    return sos < 0 || find(static_cast<size_t>(sos), 0xD9) < 0;
}

// ------------------------------------------------------------- where OpenCV 4.6 differs from the Python side's 5

namespace {

// Tag 0x0112 in the first IFD of a WebP EXIF chunk's TIFF block, read as OpenCV 5 reads it (checked
// against it on hostile variants): no "Exif\0\0" prefix, the first such tag, its value as a SHORT whatever
// type and count the entry claims. 0 when there is none or it is not 1-8. Every offset is checked against
// `n` before it is read.
int exif_orientation(const uint8_t* p, size_t n) {
    if (n < 8 || !(std::memcmp(p, "II*\0", 4) == 0 || std::memcmp(p, "MM\0*", 4) == 0)) return 0;
    const bool little = p[0] == 'I';
    auto u16 = [&](size_t at) { return little ? le16(p + at) : be16(p + at); };
    size_t ifd = little ? le32(p + 4) : be32(p + 4);
    if (ifd > n || n - ifd < 2) return 0;
    const size_t count = u16(ifd);
    for (size_t k = 0, at = ifd + 2; k < count && n - at >= 12; ++k, at += 12)  // at <= n holds throughout
        if (u16(at) == 0x0112) {
            int value = static_cast<int>(u16(at + 8));
            return value >= 1 && value <= 8 ? value : 0;
        }
    return 0;
}

// The orientation in a WebP file's EXIF chunk. OpenCV 4.6 ignores it (it applies JPEG's, PNG's and TIFF's);
// the Python side's OpenCV 5 applies it, so a phone's sideways-stored WebP must be turned here.
int webp_orientation(const std::vector<uint8_t>& d) {
    size_t pos = 12;  // after "RIFF" <size> "WEBP"
    while (pos <= d.size() && d.size() - pos >= 8) {
        const size_t len = le32(&d[pos + 4]), start = pos + 8;
        if (len > d.size() - start) return 0;  // a chunk running past the end: no orientation read from it
        if (std::memcmp(&d[pos], "EXIF", 4) == 0) return exif_orientation(&d[start], len);
        pos = start + len + (len & 1);  // chunks are padded to an even size
    }
    return 0;
}

// The stored pixels turned upright, as OpenCV applies an EXIF orientation.
cv::Mat turned_upright(const cv::Mat& img, int orientation) {
    cv::Mat out;
    switch (orientation) {
        case 2: cv::flip(img, out, 1); break;
        case 3: cv::flip(img, out, -1); break;
        case 4: cv::flip(img, out, 0); break;
        case 5: cv::transpose(img, out); break;
        case 6: cv::rotate(img, out, cv::ROTATE_90_CLOCKWISE); break;
        case 7:
            cv::transpose(img, out);
            cv::flip(out, out, -1);
            break;
        case 8: cv::rotate(img, out, cv::ROTATE_90_COUNTERCLOCKWISE); break;
        default: return img;
    }
    return out;
}

// The channel order of a PAM read as stored (IMREAD_UNCHANGED): RGB(A) in OpenCV 4.6 and 5.1, where
// every other reader returns BGR(A). Asked of OpenCV itself, once, with a 1x1 pure red file, so the
// runner stays right when OpenCV changes.
bool pam_decodes_as_rgb() {
    static const bool rgb = [] {
        static const char red[] = "P7\nWIDTH 1\nHEIGHT 1\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n\xff\x00\x00";
        cv::Mat buf(1, static_cast<int>(sizeof red - 1), CV_8UC1, const_cast<char*>(red));
        cv::Mat px = cv::imdecode(buf, cv::IMREAD_UNCHANGED);
        return px.type() == CV_8UC3 && px.at<cv::Vec3b>(0, 0)[0] == 255;
    }();
    return rgb;
}

bool animated_webp(const std::vector<uint8_t>& d) {
    return starts(d, 12, "VP8X", 4) && d.size() > 20 && (d[20] & 0x02);  // the VP8X animation flag
}

}  // namespace

cv::Mat decode(const std::vector<uint8_t>& data, const std::string& source) {
    if (data.empty()) throw Error(source + ": empty file (0 bytes)");
    if (static_cast<long long>(data.size()) > MAX_FILE_BYTES)
        throw Error(source + ": " + thousands(static_cast<long long>(data.size())) + " bytes, over the " +
                    thousands(MAX_FILE_BYTES) + " byte limit for an image");
    std::string fmt = image_format(data);
    if (fmt.empty() && starts(data, 4, "ftyp", 4) && heif_brand(data))
        throw Error(source + ": HEIC/HEIF image, which this runtime cannot decode: convert it to JPEG or PNG "
                    "(e.g. heif-convert; on an iPhone, Camera > Formats > Most Compatible)");
    if (fmt.empty()) throw Error(source + ": not a decodable image");
    auto [w, h] = header_size(data, fmt, source);
    if (w > 0 && h > 0 && w > MAX_PIXELS / h)
        throw Error(source + ": image header says " + std::to_string(w) + "x" + std::to_string(h) + ", over the " +
                    thousands(MAX_PIXELS) + " pixel limit");
    if (w <= 0 || h <= 0)
        throw Error(source + ": image header says " + std::to_string(w) + "x" + std::to_string(h) + ": no pixels");
    const long long per_pixel = bytes_per_pixel(data, fmt);
    if (w * h * per_pixel > MAX_DECODED_BYTES) {  // w * h <= MAX_PIXELS here: no overflow
        char mb[64], limit[64];
        std::snprintf(mb, sizeof mb, "%.0f", static_cast<double>(w * h * per_pixel) / 1e6);
        std::snprintf(limit, sizeof limit, "%.0f", MAX_DECODED_BYTES / 1e6);
        throw Error(source + ": image header says " + std::to_string(w) + "x" + std::to_string(h) + " at " +
                    std::to_string(per_pixel) + " bytes per pixel, " + thousands(std::atoll(mb)) +
                    " MB decoded, over the " + thousands(std::atoll(limit)) + " MB limit");
    }
    if (truncated_jpeg(data)) throw Error(source + ": truncated JPEG (no end-of-image marker)");
    cv::Mat img;
    try {
        // The wrapping Mat is read only; imdecode copies nothing back into it.
        cv::Mat buf(1, static_cast<int>(data.size()), CV_8UC1, const_cast<uint8_t*>(data.data()));
        // As in Python: these flags apply the EXIF orientation (IMREAD_UNCHANGED ignores it). A WebP's is
        // applied below, by the runner, whatever this OpenCV does with it, so it is applied exactly once.
        int flags = cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR;
        if (fmt == "WEBP") flags |= cv::IMREAD_IGNORE_ORIENTATION;
        // A PAM is read as stored (it carries no orientation) and converted below: OpenCV 4.6's own
        // conversion of a 2- or 4-channel PAM to 3 channels returns garbage pixels.
        if (fmt == "PAM") flags = cv::IMREAD_UNCHANGED;
        img = cv::imdecode(buf, flags);
    } catch (const cv::Exception& e) {  // OpenCV asserts on some malformed files instead of returning empty
        std::string msg = e.err.empty() ? "error" : e.err;
        throw Error(source + ": not a decodable image (OpenCV: " + msg + ")");
    }
    // OpenCV 4.6 (Debian 12's) has no GIF reader and reads no animated WebP; the Python side's OpenCV 5 reads both.
    if (img.empty() && (fmt == "GIF" || animated_webp(data)))
        throw Error(source + ": " + (fmt == "GIF" ? "GIF" : "animated WebP") + " images are not supported by the "
                    "C++ runner with OpenCV " + CV_VERSION + " (the Python runtime reads them); "
                    "convert to JPEG or PNG");
    if (img.empty()) throw Error(source + ": not a decodable image");
    if (fmt == "WEBP") img = turned_upright(img, webp_orientation(data));
    if (img.depth() == CV_16U) {
        cv::Mat out(img.size(), CV_MAKETYPE(CV_8U, img.channels()));
        const size_t n = img.total() * img.channels();
        cv::Mat src = img.isContinuous() ? img : img.clone();
        const uint16_t* s = src.ptr<uint16_t>();
        uint8_t* o = out.ptr<uint8_t>();
        for (size_t i = 0; i < n; ++i) o[i] = static_cast<uint8_t>(s[i] >> 8);  // the high byte, as Python's >> 8
        img = out;
    } else if (img.depth() != CV_8U) {
        if ((img.depth() == CV_32F || img.depth() == CV_64F) && !cv::checkRange(img))
            throw Error(source + ": pixels that are not finite numbers (NaN or infinity)");
        cv::Mat scaled;
        cv::normalize(img, scaled, 0, 255, cv::NORM_MINMAX, CV_64F);
        // numpy's astype(uint8) truncates; convertTo would round.
        cv::Mat out(img.size(), CV_MAKETYPE(CV_8U, img.channels()));
        const size_t n = img.total() * img.channels();
        const double* s = scaled.ptr<double>();
        uint8_t* o = out.ptr<uint8_t>();
        for (size_t i = 0; i < n; ++i) o[i] = static_cast<uint8_t>(s[i]);
        img = out;
    }
    const bool as_rgb = fmt == "PAM" && pam_decodes_as_rgb();
    cv::Mat rgb;
    switch (img.channels()) {
        case 1: cv::cvtColor(img, rgb, cv::COLOR_GRAY2RGB); break;
        case 2:  // grey + alpha: only a PAM, read as stored
            cv::extractChannel(img, rgb, 0);
            cv::cvtColor(rgb, rgb, cv::COLOR_GRAY2RGB);
            break;
        case 3:
            if (as_rgb) rgb = img;
            else cv::cvtColor(img, rgb, cv::COLOR_BGR2RGB);
            break;
        case 4: cv::cvtColor(img, rgb, as_rgb ? cv::COLOR_RGBA2RGB : cv::COLOR_BGRA2RGB); break;
        default: throw Error(source + ": unsupported channel count " + std::to_string(img.channels()));
    }
    return rgb;
}

void check_rgb(const cv::Mat& rgb, const std::string& source) {
    if (rgb.type() != CV_8UC3)
        throw Error(source + ": expected uint8 HxWx3 RGB, got OpenCV type " + std::to_string(rgb.type()));
    if (std::min(rgb.rows, rgb.cols) < MIN_SOURCE_SIDE)
        throw Error(source + ": image is " + std::to_string(rgb.cols) + "x" + std::to_string(rgb.rows) +
                    ", smaller than " + std::to_string(MIN_SOURCE_SIDE) + "px on a side");
}

cv::Mat centre_crop(const cv::Mat& rgb, int size, double crop_fraction, const std::string& source) {
    if (!(crop_fraction > 0.0 && crop_fraction <= 1.0))
        throw Error("crop_fraction must be in (0, 1], got " + std::to_string(crop_fraction));
    check_rgb(rgb, source);
    const int h = rgb.rows, w = rgb.cols;
    // Python's round() rounds half to even, as nearbyint does in the default rounding mode.
    int side = std::max(1, static_cast<int>(std::nearbyint(std::min(h, w) * crop_fraction)));
    cv::Mat crop = rgb(cv::Rect((w - side) / 2, (h - side) / 2, side, side));
    if (side == size) return crop.clone();
    cv::Mat out;
    cv::resize(crop, out, cv::Size(size, size), 0, 0, side > size ? cv::INTER_AREA : cv::INTER_LINEAR);
    return out;
}

bool is_blank(const cv::Mat& rgb) {
    std::vector<cv::Mat> planes;
    cv::split(rgb, planes);
    for (const auto& p : planes) {
        double lo, hi;
        cv::minMaxLoc(p, &lo, &hi);
        if (hi - lo > BLANK_LEVELS) return false;
    }
    return true;
}

}  // namespace fv
